"""The physiological log reader keeps its memory bounded, however long the log it catches up with.

A log that holds hours before the run (a lab's logger that records all day) used to be read in one
``read()`` and split at once: about 11 bytes of memory per byte of log (a 51 MB log took 571 MB), enough to
end a live run on a console PC. Ground truth: the samples written, and the reader's own allocations
(``tracemalloc``, which counts every thread's).
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np

from rtnf.scanner.physio_sources import LogTail, SampleBuffer

COLUMNS = ("time_s", "cardiac", "respiratory")


def _write_log(path: Path, n: int, hz: float = 500.0) -> np.ndarray:
    t = np.arange(n) / hz
    samples = np.column_stack([t, np.sin(7 * t), np.cos(t)])
    with open(path, "w") as fh:
        fh.write("\t".join(COLUMNS) + "\n")
        np.savetxt(fh, samples, fmt="%.3f\t%.5f\t%.5f")
    return samples


def test_catching_up_with_a_long_log_uses_bounded_memory(tmp_path):
    n = 400_000  # 13 minutes at 500 Hz, 10 MB: the old reader's peak was about 110 MB
    samples = _write_log(tmp_path / "physio.log", n)
    buffer = SampleBuffer(n)  # allocated before the measure: only the reader's own memory counts
    reader = LogTail(tmp_path / "physio.log", buffer, COLUMNS, "\t", 1, None, 1.0)
    tracemalloc.start()
    try:
        reader.start()
        assert reader.ready.wait(120)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        reader.stop()
        tracemalloc.stop()
    # every sample arrived, in order
    assert buffer.latest == samples[-1, 0] and buffer.window(0.0).shape == (n, 3)
    np.testing.assert_allclose(buffer.window(0.0)[:, 1], samples[:, 1], atol=1e-5)
    assert peak < 40e6, f"the reader held {peak / 1e6:.0f} MB at once for a {n}-line log"


def test_a_file_without_newlines_is_not_kept_whole(tmp_path):
    """A binary file named as the log (no newline for megabytes) is no sample, and is not accumulated."""
    path = tmp_path / "physio.log"
    path.write_bytes(b"time_s\tcardiac\trespiratory\n" + b"x" * 8_000_000)
    buffer = SampleBuffer(1000)
    reader = LogTail(path, buffer, COLUMNS, "\t", 1, None, 1.0)
    tracemalloc.start()
    try:
        reader.start()
        assert reader.ready.wait(60)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        reader.stop()
        tracemalloc.stop()
    assert buffer.latest is None
    assert peak < 6e6, f"the reader held {peak / 1e6:.0f} MB of a file without newlines"


def test_one_damaged_time_does_not_hold_back_every_later_sample():
    """Before: an inf or absurd time (1e12) became the latest time, and every later sample, not later than it,
    was dropped: physiological regressors were gone for the rest of the run."""
    from rtnf.scanner.physio_sources import SampleBuffer

    buffer = SampleBuffer(capacity=100)
    buffer.append(np.array([[0.0, 1, 1], [0.1, 1, 1], [np.inf, 1, 1], [1e12, 1, 1], [np.nan, 1, 1], [0.2, 1, 1]]))
    buffer.append(np.array([[0.3, 1, 1]]))
    assert buffer.n_out_of_order == 3
    np.testing.assert_allclose(buffer.window(-1.0, 10.0)[:, 0], [0.0, 0.1, 0.2, 0.3])
    assert buffer.latest == 0.3
