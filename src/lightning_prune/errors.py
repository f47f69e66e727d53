"""The errors the CLI turns into one line and an exit code: bad input (2), a stop asked for by a signal (128 +
its number), a ``--max_drop`` sweep that chose nothing (3)."""


class UsageError(ValueError):
    """Bad input from the user: the message says what is wrong and what to do."""


class Terminated(Exception):
    """SIGTERM (a scheduler, ``docker stop``, ``kill``) or Ctrl-C arrived: the run stopped where it was, with the
    scoring progress of its finished batches saved, so the same command resumes it. The message is the signal's
    name."""


class NothingChosen(Exception):
    """A ``--max_drop`` sweep finished without a point within ``max_drop``: its reports are written, no model is.
    ``summary``: the run's ``metrics.json`` record."""

    def __init__(self, message: str, summary: dict) -> None:
        super().__init__(message)
        self.summary = summary
