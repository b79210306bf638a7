"""The operator's products of each volume, made after its feedback has left.

The participant needs only the feedback value. The whole-brain model and its
t-map, and the console's preview, are for the operator: the run loop hands
each volume's :class:`OperatorJob` to an :class:`OperatorWorker` right after
it has published the feedback and the volume, and a worker thread does the
work (NumPy releases the GIL: it runs on the second core). Previews come back
through :meth:`OperatorWorker.take_previews`, because the run loop owns the
socket.

Bounded: at most :data:`MAX_PENDING` volumes wait. When the worker falls that
far behind during a live run, a volume's whole-brain update is dropped (one
warning; the t-map then misses it) rather than making the next feedback wait;
a replay, with no participant, waits instead so its t-map is complete. When
several volumes wait, only the newest gets a t-map refresh and a preview.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger(__name__)

MAX_PENDING = 16
"""Volumes that may wait for the operator's products (at a 0.5 s TR: 8 s behind)."""


@dataclass
class OperatorJob:
    """One volume's work for the operator.

    Attributes
    ----------
    index : int
        Kept-volume index.
    add : callable or None
        Adds the volume to the whole-brain model; run for every volume, in
        order (None: nothing to add, e.g. a censored volume).
    products : callable
        ``products(index)`` refreshes the t-map and returns the ``preview``
        body (or None); run for the newest waiting volume only.
    stage_s : dict of str to float
        Where the seconds spent (``wholebrain``, ``preview``) are written: the
        volume's :attr:`~rtnf.run.pipeline.VolumeResult.stage_s`.
    """

    index: int
    add: Callable[[], None] | None
    products: Callable[[int], dict[str, Any] | None]
    stage_s: dict[str, float] = field(default_factory=dict)


_STOP = object()


class OperatorWorker:
    """A thread that makes the operator's products, never holding up the feedback.

    Parameters
    ----------
    wake : callable
        Called (from the worker thread) when a preview is ready, so that the
        run loop sends it without waiting for its next beat.
    wait_when_behind : bool
        True for replays: :meth:`submit` waits for room instead of dropping a
        volume's whole-brain update.
    """

    def __init__(self, wake: Callable[[], None], wait_when_behind: bool = False) -> None:
        self._jobs: queue.Queue[Any] = queue.Queue(maxsize=MAX_PENDING)
        self._previews: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._wake = wake
        self._wait = wait_when_behind
        self._thread = threading.Thread(target=self._loop, name="rtnf-operator", daemon=True)
        self.n_dropped = 0  # volumes whose whole-brain update was dropped (live runs only)
        self.n_skipped = 0  # volumes that got no preview because a newer one was waiting
        self.error: BaseException | None = None  # the first failure (each failure costs one volume's products)
        self.n_failed = 0
        self._thread.start()

    def submit(self, job: OperatorJob) -> None:
        """Queue one volume's products; never blocks a live run (a replay waits while the worker is alive)."""
        while True:
            try:
                self._jobs.put(job, block=self._wait and self._thread.is_alive(), timeout=0.5)
                return
            except queue.Full:
                if self._wait and self._thread.is_alive():
                    continue  # a replay: wait for room, but never for a worker that is gone
                break
        self.n_dropped += 1
        if self.n_dropped == 1:
            log.warning("volume %d: the operator's products (whole-brain t-map, preview) are %d volumes behind; "
                        "dropping volumes from the whole-brain model so the feedback never waits",
                        job.index + 1, MAX_PENDING)

    def take_previews(self) -> list[dict[str, Any]]:
        """The preview bodies made since the last call, oldest first."""
        out = []
        while True:
            try:
                out.append(self._previews.get_nowait())
            except queue.Empty:
                return out

    @property
    def busy(self) -> bool:
        """Whether the worker thread is still running (after :meth:`close`: it did not finish in time)."""
        return self._thread.is_alive()

    def close(self, timeout_s: float = 30.0) -> None:
        """Finish the waiting volumes (the final t-map includes them) and stop the thread."""
        deadline = time.monotonic() + timeout_s
        while self._thread.is_alive():
            try:
                self._jobs.put(_STOP, timeout=0.2)
                break
            except queue.Full:
                if time.monotonic() > deadline:
                    break
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            log.error("the operator's products did not finish within %.0f s; the saved t-map may miss volumes",
                      timeout_s)
        if self.n_dropped:
            log.warning("%d volumes were dropped from the whole-brain model: the operator's products fell behind",
                        self.n_dropped)

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            with self._jobs.mutex:  # peek: the newest waiting volume is the one before the stop, or the last
                waiting = self._jobs.queue
                newest = not waiting or waiting[0] is _STOP
            try:
                self._do(job, newest)
            except Exception as exc:  # noqa: BLE001 - the operator's products never stop the run
                self.n_failed += 1
                if self.error is None:  # one alarm; each failure costs that volume's products only
                    self.error = exc
                    log.error("volume %d: the operator's products failed (%s: %s); that volume is missing from "
                              "the whole-brain model and its preview", job.index + 1, type(exc).__name__, exc,
                              exc_info=exc)

    def _do(self, job: OperatorJob, newest: bool) -> None:
        t0 = time.perf_counter()
        if job.add is not None:
            job.add()
        t1 = time.perf_counter()
        job.stage_s["wholebrain"] = t1 - t0
        if not newest:
            self.n_skipped += 1
            return
        body = job.products(job.index)
        job.stage_s["preview"] = time.perf_counter() - t1
        if body is not None:
            body["t_ready"] = time.time()
            self._previews.put(body)
            self._wake()
