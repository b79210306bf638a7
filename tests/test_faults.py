"""Scanner faults injected by scanner-sim reach the operator as flags and are recorded; the run goes on."""

from __future__ import annotations

from rtnf.apps.demo import read_tsv
from rtnf.run.record import bids_prefix, func_dir
from tests.helpers import pattern, run_processes

N = 40
CONFIG = {"session.subject": "faults", "session.task": "nf", "scanner.n_volumes": N, "scanner.dummy_volumes": 0,
          "scanner.filename_template": "rtsim_{series:03d}_{volume:05d}.nii", "scanner.series_number": 1,
          "scanner.missing_timeout_s": 1.0, "scanner.watch": "polling", "scanner.poll_interval_s": 0.05,
          "protocol.pattern": pattern(rest=6, regulate=6, repeat=3), "output.dir": "outputs"}


def test_each_fault_is_flagged_recorded_and_survived(tmp_path):
    # TR 2 s played at speed 4: a volume every 0.5 s; fault delays are in scanner seconds.
    faults = ["--drop", "5", "--late", "9:3.0", "--duplicate", "14", "--out-of-order", "20",
              "--second-series", "24:99:4", "--vanish", "30:8.0"]
    cfg, listener = run_processes(tmp_path, CONFIG, speed=4.0, sim_args=faults, mode="chunked")
    injected = read_tsv(tmp_path / "truth" / "faults.tsv")
    assert {r["fault"] for r in injected} >= {"drop", "late", "duplicate", "out_of_order", "second_series", "vanish"}

    rows = read_tsv(func_dir(cfg) / f"{bids_prefix(cfg)}_desc-rtnf_timeseries.tsv")
    volumes = listener.of("volume")
    # every volume exactly once, in order, in the table and on the wire
    assert [int(r["index"]) for r in rows] == list(range(N))
    assert [v["index"] for v in volumes] == list(range(N))
    by_index = {int(r["index"]): r for r in rows}
    # dropped: missing, no value, and the run went on
    assert by_index[5]["missing"] == "1" and by_index[5]["feedback_reason"] == "missing volume"
    assert volumes[5]["flags"]["missing"] is True
    # late past the next volume: processed in order, flagged late and out of order
    assert by_index[9]["missing"] == "0" and by_index[9]["late"] == "1" and by_index[9]["out_of_order"] == "1"
    assert volumes[9]["flags"]["late"] and volumes[9]["flags"]["out_of_order"]
    # written after its successor: flagged, processed in order
    assert by_index[20]["out_of_order"] == "1" and by_index[20]["missing"] == "0"
    # the duplicate and the other series left no row but reached the operator
    logs = [m["message"] for m in listener.of("log")]
    assert any("rtsim_001_00015.nii" in m for m in logs), logs
    assert any("series 99" in m for m in logs), logs
    # the export folder vanished for 2 s: reported, and every volume written meanwhile processed
    assert any("vanished" in m for m in logs), logs
    assert all(by_index[i]["missing"] == "0" for i in range(30, N))
    assert any(by_index[i]["late"] == "1" for i in range(30, 34))
    # no other volume is missing, and the feedback continued to the end
    assert [i for i, r in by_index.items() if r["missing"] == "1"] == [5]
    assert by_index[N - 1]["feedback_value"] != "n/a"
    # the event log of the run holds the same warnings
    events = read_tsv(func_dir(cfg) / f"{bids_prefix(cfg)}_desc-rtnf_log.tsv")
    assert any("series 99" in e["message"] for e in events)
