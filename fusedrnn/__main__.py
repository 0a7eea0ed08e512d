"""Command line: ``python -m fusedrnn <command>``."""

import argparse
import sys

from fusedrnn import check


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fusedrnn")
    commands = parser.add_subparsers(dest="command", required=True)
    check.add_arguments(
        commands.add_parser("check", help="compare fusedrnn.LSTM with torch.nn.LSTM, tensor by tensor")
    )
    args = parser.parse_args(argv)
    return {"check": check.main}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
