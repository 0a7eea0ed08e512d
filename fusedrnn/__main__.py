"""Command line: ``python -m fusedrnn <command>``."""

import argparse
import sys

from fusedrnn import charlm, check, trace
from fusedrnn._usage import UsageError

COMMANDS = {
    "charlm": (charlm, "train a character-level language model on fusedrnn.LSTM"),
    "check": (check, "compare fusedrnn.LSTM (or RNN) with torch.nn.LSTM (or RNN), tensor by tensor"),
    "trace": (trace, "print every gate, c and h at every step of a small LSTM (or an RNN's pre-activation and h)"),
}


def plain(docstring):
    """A module docstring as --help shows it: without reStructuredText's literal markup."""
    return docstring.replace("``", "")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fusedrnn")
    commands = parser.add_subparsers(dest="command", required=True)
    parsers = {}
    for name, (module, summary) in COMMANDS.items():
        parsers[name] = commands.add_parser(
            name, help=summary, description=plain(module.__doc__), formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(parsers[name])
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command][0].main(args)
    except UsageError as error:
        parsers[args.command].error(str(error))  # usage, the message, exit status 2


if __name__ == "__main__":
    sys.exit(main())
