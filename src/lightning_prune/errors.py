"""The errors the CLI turns into one line: bad input (exit code 2), and a stop asked for by a signal."""


class UsageError(ValueError):
    """Bad input from the user: the message says what is wrong and what to do."""


class Terminated(Exception):
    """SIGTERM arrived (a scheduler, ``docker stop``, ``kill``): the run stopped after the batch it was on,
    with its scoring progress saved, so the same command resumes it."""
