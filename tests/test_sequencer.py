"""Ordering of volumes and detection of missing ones."""

from __future__ import annotations

from rtnf.scanner.sequencer import Sequencer


def test_releases_in_order_when_files_arrive_out_of_order():
    seq: Sequencer[str] = Sequencer(first=2, stop=6, missing_timeout_s=1.0)
    assert seq.push(3, "b", 0.0) is None
    assert seq.release(0.1) == []  # 2 not here yet
    assert seq.push(2, "a", 0.2) is None
    assert [(r.index, r.item) for r in seq.release(0.2)] == [(2, "a"), (3, "b")]


def test_missing_volume_declared_after_timeout():
    seq: Sequencer[str] = Sequencer(first=0, stop=4, missing_timeout_s=1.0)
    seq.push(0, "a", 0.0)
    assert [r.index for r in seq.release(0.0)] == [0]
    seq.push(2, "c", 1.0)
    assert seq.release(1.5) == []
    assert seq.time_to_deadline(1.5) == 0.5
    assert [(r.index, r.item) for r in seq.release(2.0)] == [(1, None), (2, "c")]


def test_duplicates_late_and_out_of_run_are_refused():
    seq: Sequencer[str] = Sequencer(first=0, stop=3, missing_timeout_s=1.0)
    seq.push(0, "a", 0.0)
    seq.release(0.0)
    assert "after the run moved past it" in seq.push(0, "a2", 0.1)
    seq.push(1, "b", 0.1)
    assert "twice" in seq.push(1, "b2", 0.2)
    assert "beyond" in seq.push(3, "d", 0.2)
    assert [r.index for r in seq.release(0.3)] == [1]
    assert not seq.done
    seq.push(2, "c", 0.4)
    seq.release(0.4)
    assert seq.done
