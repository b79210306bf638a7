"""The operator's products (whole-brain model, t-map, preview) never hold up the feedback (issue 21, point 1)."""

from __future__ import annotations

import threading
import time

from rtnf.run.operator import MAX_PENDING, OperatorJob, OperatorWorker


def _job(index, added, made, gate=None, fail=False):
    def add():
        if gate is not None:
            gate.wait(10)
        if fail:
            raise RuntimeError("boom")
        added.append(index)

    def products(latest):
        made.append(latest)
        return {"index": latest}

    return OperatorJob(index, add, products)


def test_a_slow_worker_never_blocks_a_live_run_and_drops_only_model_updates_beyond_the_bound():
    added, made, woken = [], [], []
    gate = threading.Event()
    worker = OperatorWorker(wake=lambda: woken.append(1))
    t0 = time.perf_counter()
    for i in range(MAX_PENDING + 6):  # the first job holds the worker; the queue then fills
        worker.submit(_job(i, added, made, gate))
    elapsed = time.perf_counter() - t0
    # a submit that waited for room would take 0.5 s for each of the 5-6 dropped jobs (3 s); 22 puts that do
    # not wait take well under a millisecond, unless a loaded machine descheduled this thread
    assert elapsed < 2.0, f"submit waited {elapsed:.2f} s for the operator's worker"
    assert worker.n_dropped >= 5
    gate.set()
    worker.close()
    kept = MAX_PENDING + 6 - worker.n_dropped
    assert added == sorted(added) and len(added) == kept  # every kept volume entered the model, in order
    # Previews: the first (newest when it ran) and the last before the stop; the queued ones were skipped.
    assert made[-1] == added[-1]
    assert worker.n_skipped == kept - len(made)
    assert [p["index"] for p in worker.take_previews()] == made
    assert len(woken) == len(made)


def test_a_replay_waits_for_the_worker_and_loses_no_volume():
    added, made = [], []
    gate = threading.Event()
    worker = OperatorWorker(wake=lambda: None, wait_when_behind=True)
    threading.Timer(0.3, gate.set).start()
    for i in range(MAX_PENDING + 6):
        worker.submit(_job(i, added, made, gate))
    worker.close()
    assert added == list(range(MAX_PENDING + 6)) and worker.n_dropped == 0
    previews = worker.take_previews()
    assert previews[-1]["index"] == MAX_PENDING + 5 and all(isinstance(p["t_ready"], float) for p in previews)


def test_a_failing_volume_costs_its_own_products_only_and_a_replay_never_deadlocks():
    """Before: the first failure stopped the worker; a replay then waited forever on a full queue."""
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # the worker logs from its own thread; other tests may stop propagation
    logger = logging.getLogger("rtnf.run.operator")
    disabled, level = logger.disabled, logger.level
    logger.disabled, logger.level = False, logging.INFO  # an earlier test's logging setup may have disabled it
    logger.addHandler(handler)
    added, made = [], []
    worker = OperatorWorker(wake=lambda: None, wait_when_behind=True)
    worker.submit(_job(0, added, made, fail=True))
    for i in range(1, MAX_PENDING + 8):  # more than the queue holds: submit must not block for good
        worker.submit(_job(i, added, made))
    worker.close(timeout_s=10)
    assert not worker.busy
    assert isinstance(worker.error, RuntimeError) and worker.n_failed == 1
    assert added == list(range(1, MAX_PENDING + 8))
    logger.removeHandler(handler)
    logger.disabled, logger.level = disabled, level
    assert sum("operator's products failed" in r.getMessage() for r in records) == 1
