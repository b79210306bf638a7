"""Issue 15, point 4: what the participant saw and did reaches the run's BIDS outputs by default."""

from __future__ import annotations

import csv
import json

from rtnf.run.record import bids_prefix, func_dir
from tests.helpers import pattern, requires_display, run_processes, wait_until

N = 12
CONFIG = {"session.subject": "scr", "session.task": "nf", "scanner.n_volumes": N, "scanner.dummy_volumes": 0,
          "protocol.pattern": pattern(rest=3, regulate=3), "feedback.min_baseline_volumes": 2,
          "publish.preview": False, "output.dir": "outputs"}


@requires_display()
def test_screen_events_are_recorded_with_the_run(tmp_path):
    cfg, listener = run_processes(tmp_path, CONFIG, with_screen=True)
    feedback = listener.of("feedback")
    run_id = feedback[0]["run_id"]
    assert [f["index"] for f in feedback] == list(range(N))
    base = func_dir(cfg) / f"{bids_prefix(cfg)}_desc-screen_events"
    with open(base.with_suffix(".tsv"), newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    sidecar = json.loads(base.with_suffix(".json").read_text())
    assert sidecar["RunId"] == run_id and "onset" in sidecar and "trial_type" in sidecar
    displayed = [r for r in rows if r["trial_type"] == "displayed" and r["volume_index"] != "n/a"]
    # one displayed row per feedback volume, with the value the screen showed and its flip time
    assert sorted(int(r["volume_index"]) for r in displayed) == list(range(N)), rows
    acks = {d["index"]: d for d in listener.of("displayed") if d.get("run_id") == run_id and d.get("index") is not None}
    for r in displayed:
        ack = acks[int(r["volume_index"])]
        assert float(r["t_flip"]) == ack["t_displayed"]
        assert (r["value"] == "n/a") == (ack["value"] is None)
        if ack["value"] is not None:
            assert abs(float(r["value"]) - ack["value"]) < 1e-9
        assert abs(float(r["onset"]) - (ack["t_displayed"] - sidecar["StartTime"])) < 1e-3
        assert float(r["onset"]) > 0


def test_screen_record_writes_keys_triggers_and_only_this_runs_events(tmp_path):
    """The listener thread receives; the run loop's drain writes; other runs' messages are left out."""
    import time

    import zmq

    from rtnf.apps.demo import free_address
    from rtnf.wire.messages import encode
    from rtnf.wire.pubsocket import BoundedPub
    from rtnf.run.screen_record import ScreenRecord

    address = free_address()
    ctx = zmq.Context()
    screen = BoundedPub(ctx)
    screen.bind(address)
    record = ScreenRecord(tmp_path, "sub-x_task-y_run-1", "run-a", address)
    try:
        t0 = time.time()
        deadline = t0 + 10
        while time.time() < deadline and record.n_rows == 0:  # until the subscription is through
            screen.send_multipart(encode("keys", "run-a", {"source": "stimulus", "key": "5", "role": "trigger",
                                                           "t_key": time.time(), "state": "running", "index": None}))
            time.sleep(0.05)
            record.drain()
        screen.send_multipart(encode("keys", "run-b", {"key": "1", "role": "response", "t_key": time.time()}))
        screen.send_multipart(encode("keys", "run-a", {"key": "1\t\n" + "x" * 500, "role": "response",
                                                       "t_key": time.time(), "state": "running", "index": 2}))
        screen.send_multipart(encode("displayed", "run-a", {"index": 2, "value": 0.5, "condition": "regulate",
                                                            "state": "running", "t_received": time.time(),
                                                            "t_displayed": time.time()}))

        def displayed_written() -> bool:  # messages arrive in the order sent: the key before it is written too
            record.drain()
            return record.n_displayed >= 1

        assert wait_until(displayed_written, 10)
        record.finish(last_index=2)
    finally:
        screen.close(0)
        ctx.term()
    with open(record.path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    kinds = [r["trial_type"] for r in rows]
    assert set(kinds) == {"trigger", "key", "displayed"} and kinds.count("key") == 1 and kinds.count("displayed") == 1
    key = next(r for r in rows if r["trial_type"] == "key")
    assert key["key"].startswith("1 ") and len(key["key"]) <= 64 and key["volume_index"] == "2"
    shown = next(r for r in rows if r["trial_type"] == "displayed")
    assert shown["value"] == "0.5" and shown["condition"] == "regulate" and float(shown["onset"]) > 0
    assert not record.listener.is_alive()
