"""`pgmq-worker run --processes N`: N worker processes on one machine, kept running.

The supervisor starts N copies of `pgmq-worker run` (without `--processes`), restarts one that
exits when it should not have (with a growing delay if it keeps dying), and passes SIGTERM and
SIGINT through: the first signal stops every worker warm, a second one cold. Each worker is an
ordinary worker: leases, acks and shutdown do not depend on the supervisor, so a killed
supervisor leaves nothing that the visibility timeout does not recover.

The supervisor sleeps until a signal arrives (a worker exiting sends SIGCHLD), so it reaps and
restarts a worker, or ends a burst run, as soon as the worker exits instead of at its next poll.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType

from db.backoff import Backoff
from db.logs import get_logger

log = get_logger()
# A worker that keeps dying: the second quick death waits 1 s, then 2, 4 ... up to 30 s.
RESTART_BACKOFF = Backoff(base=1.0, factor=2.0, cap=30.0, jitter=0)
STABLE_AFTER_S = 30.0  # a worker that ran this long before dying restarts at once


@dataclass
class Slot:
    """One worker process and its restart history."""

    index: int
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float = 0.0
    done: bool = False  # burst mode: exited 0 after emptying its queues
    pids: list[int] = field(default_factory=list)


class Supervisor:
    """Runs `argv` N times, restarts the ones that die, and forwards stop signals."""

    def __init__(
        self, argv: Sequence[str], processes: int, *, env: Mapping[str, str], burst: bool, poll_s: float = 0.2
    ) -> None:
        self.argv = list(argv)
        self.env = dict(env)
        self.burst = burst
        self.poll_s = poll_s
        self.slots = [Slot(i) for i in range(processes)]
        self.signals = 0
        self.failed = False

    def run(self) -> int:
        """Until stopped (or, with --burst, until every worker is done); the exit status."""
        wake, woken = socket.socketpair()
        for end in (wake, woken):
            end.setblocking(False)
        # Any signal handled in Python writes a byte to `wake`: a wait below returns at once.
        previous_fd = signal.set_wakeup_fd(wake.fileno(), warn_on_full_buffer=False)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, _ignore)  # ignored, yet it wakes
        try:
            for slot in self.slots:
                self._start(slot)
            log.info("supervisor.started", processes=len(self.slots), pids=[s.pids[-1] for s in self.slots])
            while True:
                self._reap_and_restart()
                if self._finished():
                    break
                _wait_for_signal(woken, self.poll_s)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(previous_fd)
            wake.close()
            woken.close()
        log.info("supervisor.stopped", failed=self.failed)
        return 1 if self.failed else 0

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signals += 1
        mode = "warm" if self.signals == 1 else "cold"
        log.info("supervisor.stopping", signal=signal.Signals(signum).name, mode=mode)
        for slot in self.slots:
            if slot.process is not None and slot.process.poll() is None:
                slot.process.send_signal(signal.SIGTERM if self.signals == 1 else signal.SIGINT)

    def _start(self, slot: Slot) -> None:
        env = {**self.env, "PGMQ_WORKER_PROCESS_INDEX": str(slot.index)}
        slot.process = subprocess.Popen(self.argv, env=env)  # noqa: S603  our own interpreter and CLI
        slot.started_at = time.monotonic()
        slot.pids.append(slot.process.pid)

    def _finished(self) -> bool:
        if self.signals:
            return all(s.process is None or s.process.poll() is not None for s in self.slots)
        return self.burst and all(s.done for s in self.slots)

    def _reap_and_restart(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.done or slot.process is None:
                continue
            code = slot.process.poll()
            if code is None:
                continue
            if self.signals:
                # Killed by the signal we passed on means it was still starting: not a failure.
                if code not in (0, -signal.SIGTERM, -signal.SIGINT):
                    self.failed = True
                    log.error("supervisor.worker_failed", index=slot.index, pid=slot.process.pid, status=code)
                slot.process = None
                continue
            if self.burst and code == 0:
                slot.done = True
                continue
            if slot.restart_at == 0.0:
                ran = now - slot.started_at
                slot.failures = 0 if ran >= STABLE_AFTER_S else slot.failures + 1
                # The first quick death restarts at once: one crash is not yet a crash loop.
                delay = 0.0 if slot.failures <= 1 else RESTART_BACKOFF.delay(slot.failures - 1)
                slot.restart_at = now + delay
                log.warning(
                    "supervisor.worker_exited",
                    index=slot.index,
                    pid=slot.process.pid,
                    status=code,
                    restart_in_s=round(delay, 2),
                )
            if now >= slot.restart_at:
                slot.restart_at = 0.0
                self._start(slot)
                log.info("supervisor.worker_restarted", index=slot.index, pid=slot.pids[-1])


def _ignore(_signum: int, _frame: FrameType | None) -> None:
    """SIGCHLD's handler: the wake-up byte is the point; the reaping happens in the loop."""


def _wait_for_signal(woken: socket.socket, timeout_s: float) -> None:
    """Until a signal's wake-up byte arrives (or timeout_s, for restart delays); then drain them."""
    select.select([woken], [], [], timeout_s)
    try:
        while woken.recv(512):
            pass
    except BlockingIOError:
        pass


def child_argv(args: Sequence[str]) -> list[str]:
    """The command line of one worker: this CLI's `run` with the same options."""
    return [sys.executable, "-m", "worker.cli", "run", *args]


def child_env(database_url: str) -> dict[str, str]:
    """The environment of the workers: ours, with the database the supervisor resolved."""
    return {**os.environ, "DATABASE_URL": database_url}
