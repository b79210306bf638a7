"""A resumed run whose earlier provenance file cannot be read (cut short by a crash or a full disk, not JSON,
not an object, a ``resumed`` that is no list of objects) goes on: one warning names the file, the file is kept
aside (``<name>.unreadable``, byte for byte), and the fresh provenance says the earlier one was unreadable.
The participant's shaping history skips such a file with a warning naming it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from rtnf.config import load_config
from rtnf.run import outputs
from rtnf.run.record import RunRecorder, write_json_atomic
from tests.helpers import make_config
from tests.longitudinal_data import read_rows, record_run

_FULL = json.dumps({"run_id": "r1", "started": 1.0, "finished": 2.0, "status": "ended", "n_rows": 3})

BAD_PROVENANCE = {
    "truncated": _FULL[: len(_FULL) // 2].encode(),  # a crash or a full disk mid-write
    "empty": b"",
    "not-utf8": b"\xff\xfe\x00garbage",
    "not-json": b"<html>not json</html>",
    "json-list": b"[1, 2, 3]",
    "resumed-int": json.dumps({"run_id": "r1", "started": 1.0, "resumed": 5}).encode(),
    "resumed-of-strings": json.dumps({"run_id": "r1", "started": 1.0, "resumed": ["a", "b"]}).encode(),
    "nested": b"[" * 100_000 + b"]" * 100_000,  # beyond the JSON parser's recursion limit
}


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _recorder(tmp_path: Path, resume: bool) -> RunRecorder:
    """A run's recorder on real files in ``tmp_path / "out"`` (what ``rtnf run [--resume]`` builds)."""
    cfg_path = make_config(tmp_path, {"output.dir": str(tmp_path / "out"), "output.save_volumes": False})
    cfg = load_config(cfg_path)
    protocol = cfg.make_protocol()
    return RunRecorder(cfg, cfg_path.read_text(encoding="utf-8"), protocol, list(cfg.rois), "run-x", resume=resume)


@pytest.mark.parametrize("bad", list(BAD_PROVENANCE.values()), ids=list(BAD_PROVENANCE))
def test_an_unreadable_earlier_provenance_is_kept_aside_and_the_resume_goes_on(tmp_path, caplog, bad):
    first = _recorder(tmp_path, resume=False)
    first.write_row({"index": 0})
    first.close("aborted")
    provenance = first.dir / f"{first.prefix}_{outputs.PROVENANCE}"
    provenance.write_bytes(bad)

    with caplog.at_level(logging.WARNING, logger="rtnf"):
        resumed = _recorder(tmp_path, resume=True)
    resumed.close("ended")

    aside = provenance.with_name(provenance.name + ".unreadable")
    assert aside.read_bytes() == bad, "the unreadable file is kept, byte for byte"
    warnings = _warnings(caplog)
    assert len(warnings) == 1, warnings
    assert provenance.name in warnings[0] and "could not be read" in warnings[0] and aside.name in warnings[0]
    fresh = json.loads(provenance.read_text(encoding="utf-8"))
    assert fresh["status"] == "ended" and fresh["run_id"] == "run-x"
    assert fresh["resumed"] == [{"provenance_unreadable": aside.name}]
    assert [r["index"] for r in read_rows(resumed.timeseries_path)] == ["0"], "the recorded row is kept"
    event_log = read_rows(first.dir / f"{first.prefix}_{outputs.LOG}")
    assert [r["message"] for r in event_log if r["level"] == "WARNING"] == warnings, "the run's event log has it"


def test_a_second_unreadable_provenance_does_not_replace_the_first_one_kept_aside(tmp_path, caplog):
    first = _recorder(tmp_path, resume=False)
    first.close("aborted")
    provenance = first.dir / f"{first.prefix}_{outputs.PROVENANCE}"
    provenance.write_bytes(b"{cut")
    _recorder(tmp_path, resume=True).close("aborted")
    provenance.write_bytes(b"{cut again")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rtnf"):
        _recorder(tmp_path, resume=True).close("ended")
    kept = [provenance.name + ".unreadable", provenance.name + ".2.unreadable"]
    assert [(provenance.parent / name).read_bytes() for name in kept] == [b"{cut", b"{cut again"]
    assert kept[1] in _warnings(caplog)[0]
    assert json.loads(provenance.read_text(encoding="utf-8"))["resumed"] == [{"provenance_unreadable": kept[1]}]


def test_a_readable_earlier_provenance_is_carried_over_as_before(tmp_path, caplog):
    first = _recorder(tmp_path, resume=False)
    first.close("aborted")
    provenance = first.dir / f"{first.prefix}_{outputs.PROVENANCE}"
    earlier = json.loads(provenance.read_text(encoding="utf-8"))
    with caplog.at_level(logging.WARNING, logger="rtnf"):
        _recorder(tmp_path, resume=True).close("ended")
    assert _warnings(caplog) == [] and not list(provenance.parent.glob("*.unreadable"))
    resumed = json.loads(provenance.read_text(encoding="utf-8"))["resumed"]
    assert resumed == [{k: earlier[k] for k in ("run_id", "started", "finished", "status", "n_rows")}]


def test_a_crashed_run_with_a_truncated_provenance_resumes_to_every_row(tmp_path, caplog):
    """End to end (``run_session``, as ``rtnf run --resume``): the crash cut the table and the provenance short."""
    whole = record_run(tmp_path, "01", "01", 1, seed=5)
    rows = read_rows(whole.timeseries)
    lines = whole.timeseries.read_text(encoding="utf-8").splitlines(keepends=True)
    whole.timeseries.write_text("".join(lines[:15]) + lines[15][:20], encoding="utf-8")
    provenance = outputs.sibling(whole.timeseries, outputs.PROVENANCE)
    text = provenance.read_bytes()
    provenance.write_bytes(text[: len(text) // 3])

    with caplog.at_level(logging.WARNING, logger="rtnf"):
        resumed = record_run(tmp_path, "01", "01", 1, seed=5, resume=True)

    assert [r["index"] for r in read_rows(resumed.timeseries)] == [r["index"] for r in rows]
    unreadable = [m for m in _warnings(caplog) if "could not be read" in m]
    assert len(unreadable) == 1 and provenance.name in unreadable[0], _warnings(caplog)
    assert provenance.with_name(provenance.name + ".unreadable").read_bytes() == text[: len(text) // 3]
    fresh = json.loads(provenance.read_text(encoding="utf-8"))
    assert fresh["status"] == "ended"
    assert fresh["resumed"] == [{"provenance_unreadable": provenance.name + ".unreadable"}]


@pytest.mark.parametrize("bad", [BAD_PROVENANCE[k] for k in ("truncated", "not-utf8", "json-list")],
                         ids=["truncated", "not-utf8", "json-list"])
def test_the_shaping_history_skips_an_unreadable_provenance_with_a_warning(tmp_path, caplog, bad):
    from rtnf.run.shaping_history import history_runs

    func = tmp_path / "sub-01" / "ses-1" / "func"
    func.mkdir(parents=True)
    for run, value in ((1, "0.25"), (2, "0.5")):
        (func / f"sub-01_ses-1_task-nf_run-{run}_{outputs.TIMESERIES}").write_text(
            f"index\tblock_value\n0\t{value}\n", encoding="utf-8")
    (func / f"sub-01_ses-1_task-nf_run-1_{outputs.PROVENANCE}").write_text(json.dumps({"started": 1.0}))
    bad_path = func / f"sub-01_ses-1_task-nf_run-2_{outputs.PROVENANCE}"
    bad_path.write_bytes(bad)
    with caplog.at_level(logging.WARNING, logger="rtnf"):
        runs = history_runs(tmp_path, "01", None, before=1e12)
    assert [v for run in runs for v in run.values] == [0.25]
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and bad_path.name in warnings[0] and "could not be read" in warnings[0], warnings


def test_the_provenance_is_written_whole_or_not_at_all(tmp_path):
    """Regression (review): the provenance was written with write_text, which truncates first: a full disk or a
    crash mid-write left the unreadable file a resume then had to set aside. Now a temporary file and a rename:
    with writes failing past 100 bytes (RLIMIT_FSIZE, as a full disk), the earlier file stays whole."""
    import subprocess
    import sys
    import textwrap

    path = tmp_path / "sub-01_task-x_desc-rtnf_provenance.json"
    path.write_text(json.dumps({"run_id": "a", "status": "running"}))
    before = path.read_text()
    script = textwrap.dedent(f"""
        import resource, signal
        from pathlib import Path
        from rtnf.run.record import write_json_atomic
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))
        try:
            write_json_atomic(Path({str(path)!r}), {{"run_id": "b", "notes": "x" * 5000}})
        except OSError as exc:
            print("failed", exc.errno)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("failed"), (out.stdout, out.stderr)
    assert path.read_text() == before  # whole: the earlier provenance, readable
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left behind
    write_json_atomic(path, {"run_id": "c"})
    assert json.loads(path.read_text()) == {"run_id": "c"}
