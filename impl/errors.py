"""The error types every room may raise or catch; the bottom room, it imports nothing of the project.

`UsageError` is a problem with the command line or its inputs that the user can fix; the CLI prints it as one line
and exits with status 2 (`impl.cli` re-exports it).
"""


class UsageError(Exception):
    """A problem with the command line or its inputs: printed as one line, exit status 2."""
