"""Stopping: a warm stop lets running handlers finish, a cold one gives back what the worker holds.

The first SIGTERM or SIGINT is warm: fetch nothing more, let handlers finish within the shutdown
grace. The second is cold: cancel the handlers now and release their deliveries. The worker
stops itself the cold way for an error it cannot run on with (`stop_for`), which run() raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator

from db.logs import get_logger
from worker.errors import WorkerError

log = get_logger()
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stop:
    """The worker's two stop events, and why it stopped itself."""

    def __init__(self) -> None:
        self.stopping = asyncio.Event()  # warm: fetch nothing more, let handlers finish
        self.cold = asyncio.Event()  # cancel handlers now, release their deliveries
        self.fatal: WorkerError | None = None  # why the worker stopped itself: run() raises it

    def stop(self, *, cold: bool = False) -> None:
        """Ask the worker to stop (as a signal would); cold cancels running handlers."""
        self.stopping.set()
        if cold:
            self.cold.set()

    def stop_for(self, error: WorkerError) -> None:
        """Stop now, releasing what we hold (as a second signal would); run() raises `error`."""
        if self.fatal is None:
            self.fatal = error
        self.stop(cold=True)

    @contextlib.contextmanager
    def on_signals(self, in_flight: Callable[[], int]) -> Iterator[None]:
        """Within the block, SIGTERM/SIGINT stop the worker: warm the first time, cold the next."""
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig, in_flight)
        try:
            yield
        finally:
            for sig in SIGNALS:
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals, in_flight: Callable[[], int]) -> None:
        if not self.stopping.is_set():
            log.info("worker.stopping", signal=sig.name, mode="warm", in_flight=in_flight())
            self.stopping.set()
        else:
            log.warning("worker.stopping", signal=sig.name, mode="cold", in_flight=in_flight())
            self.cold.set()
