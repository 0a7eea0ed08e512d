"""The command line's error for bad input (``python -m fusedrnn``)."""


class UsageError(Exception):
    """Bad command-line input: ``python -m fusedrnn`` prints the command's usage and this
    message, as argparse does for its own errors, and exits 2, with no traceback."""
