"""Command line: ``python -m fusedrnn <command>``."""

import argparse
import sys

from fusedrnn import charlm, check, trace

COMMANDS = {
    "charlm": (charlm, "train a character-level language model on fusedrnn.LSTM"),
    "check": (check, "compare fusedrnn.LSTM with torch.nn.LSTM, tensor by tensor"),
    "trace": (trace, "print every gate, c and h at every step of a small LSTM"),
}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fusedrnn")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (module, summary) in COMMANDS.items():
        module.add_arguments(
            commands.add_parser(
                name,
                help=summary,
                description=module.__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
        )
    args = parser.parse_args(argv)
    return COMMANDS[args.command][0].main(args)


if __name__ == "__main__":
    sys.exit(main())
