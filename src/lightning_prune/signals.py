"""Stopping on SIGTERM (``docker stop``, a scheduler, ``kill``) and Ctrl-C within moments, resumably.

Inside ``stopping_on_signals`` both signals raise ``Terminated`` wherever the run is, between two Python steps: in
the middle of a scoring batch's forward pass, not after the batch (one attribution batch of a decoder LM takes a
minute; container runtimes kill after ten seconds). The batch in flight is dropped; the scoring progress saved is
that of the batches before it (``modules.StopOnSignal``), so the same command resumes with the same scores, and
every output is written atomically, so nothing half-written remains.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator

from lightning_prune.errors import Terminated

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _stopper(owner: int) -> Callable[[int, object], None]:
    """The handler: ``Terminated`` in process ``owner``. A forked child (a DataLoader worker, which Ctrl-C reaches
    too) inherits it, and ends as it would without it: a KeyboardInterrupt that PyTorch's worker loop swallows, or
    the signal's default action; not a traceback per worker."""

    def stop(signum: int, _frame: object) -> None:
        if os.getpid() == owner:
            raise Terminated(signal.Signals(signum).name)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    return stop


@contextlib.contextmanager
def stopping_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise ``Terminated`` inside the block (main thread only); the handlers before it are put
    back after it. Lightning adds its own SIGTERM handler during a run and calls this one after it."""
    if threading.current_thread() is not threading.main_thread():  # signal.signal would raise ValueError there
        yield
        return
    previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    stop = _stopper(os.getpid())
    for number in STOP_SIGNALS:
        signal.signal(number, stop)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
