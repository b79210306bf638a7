"""The study journal survives a crash in the middle of a line (issue 18 point 4)."""

from __future__ import annotations

from rtnf.study.state import StudyState


def test_an_event_appended_after_a_torn_line_is_kept(tmp_path):
    """Before: the next event was glued onto the torn line and both were skipped: a lost 'start' left its 'end'
    without a run, and the study could not say what comes next."""
    state = StudyState(tmp_path / "state")
    state.folder.mkdir()
    state.append("start", subject="P01", run=1)
    with open(state.journal_path, "a") as f:
        f.write('{"event": "end", "subj')  # the machine died while writing this line
    state.append("start", subject="P01", run=1, resume=True)
    state.append("end", subject="P01", run=1, status="ended")
    assert [(e["event"], e.get("resume", False)) for e in state.events()] == [
        ("start", False), ("start", True), ("end", False)]
