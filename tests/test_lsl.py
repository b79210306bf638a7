"""The Lab Streaming Layer outlet: an LSL inlet receives every feedback value and one marker per volume.

LSL discovery is confined to this machine for the whole test session (``tests/conftest.py``
gives liblsl a loopback-only ``lsl_api.cfg`` through ``LSLAPICFG``): no packet leaves the
loopback interface.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import zmq

from rtnf.apps import lsl as rtnf_lsl
from rtnf.wire.messages import encode
from tests.helpers import pattern, run_processes

RUN_ID = "sub-01_ses-01_task-lsl_run-1"


@pytest.fixture(scope="module")
def pylsl():
    """pylsl, its discovery confined to this machine by tests/conftest.py (skips with the reason when unavailable)."""
    assert os.environ.get("LSLAPICFG"), "tests/conftest.py sets LSLAPICFG for the whole test session"
    try:
        lib = rtnf_lsl.load_pylsl()
    except rtnf_lsl.LslUnavailableError as exc:
        pytest.skip(str(exc))
    lib.local_clock()
    return lib


def _inlets(pylsl, bridge):
    """Resolve the bridge's two streams by source id, open them, return (feedback, markers) inlets."""
    inlets = []
    for suffix, name in (("feedback", "rtnf-feedback"), ("markers", "rtnf-markers")):
        found = pylsl.resolve_byprop("source_id", f"{bridge.source_id}-{suffix}", timeout=10)
        assert len(found) == 1, f"stream {name} not found"
        assert found[0].name() == name
        inlet = pylsl.StreamInlet(found[0], max_buflen=60)
        inlet.open_stream(timeout=10)
        inlets.append(inlet)
    info = inlets[0].info(timeout=5)
    assert info.type() == "Feedback" and info.channel_count() == 1 and info.nominal_srate() == pylsl.IRREGULAR_RATE
    assert info.desc().child("channels").child("channel").child_value("label") == "feedback"
    assert inlets[1].info(timeout=5).type() == "Markers"
    return inlets


def _pull(inlet, n: int, deadline_s: float = 10.0) -> tuple[list, list[float]]:
    samples, stamps = [], []
    deadline = time.monotonic() + deadline_s
    while len(samples) < n and time.monotonic() < deadline:
        sample, ts = inlet.pull_sample(timeout=0.2)
        if sample is not None:
            samples.append(sample[0])
            stamps.append(ts)
    return samples, stamps


def _run_body(event: str, **extra) -> dict:
    return {
        "event": event, "tr_s": 2.0, "n_volumes": 8, "dummy_volumes": 2, "conditions": ["rest", "regulate"],
        "baseline": "rest", "blocks": [{"condition": "rest", "start": 0, "stop": 4}, {"condition": "regulate", "start": 4, "stop": 8}],
        "rois": ["acc"], "feedback": {"roi": ["acc"], "kind": "continuous"}, "instructions": {}, "t": time.time(), **extra,
    }


def _volume_and_feedback(index: int, value: float | None, t_published: float) -> tuple[dict, dict]:
    condition = "rest" if index < 4 else "regulate"
    missing = index == 5
    t0 = t_published - 0.05
    timing = {"t_acquired": t0 - 1.0, "t_detected": t0, "t_read": t0 + 0.01, "t_preprocessed": t0 + 0.03,
              "t_modelled": t0 + 0.04, "t_published": t_published}
    volume = {
        "index": index, "acquisition": index + 2, "n_volumes": 8, "onset_s": 2.0 * index, "condition": condition,
        "block": index // 4, "rois": {"acc": {"raw": 1000.0 + index, "clean": 0.1 * index, "psc": 0.2 * index}},
        "motion": [0.01 * index, 0.0, 0.0, 0.0, 0.0, 0.001], "framewise_displacement": 0.05,
        "flags": {"missing": missing, "censored": index == 6, "late": False, "out_of_order": False},
        "timing": timing, "file": f"{index + 3:03d}.dcm", "future_field": "ignored",
    }
    feedback = {"index": index, "condition": condition, "value": value,
                "reason": "missing volume" if value is None else None, "kind": "continuous",
                "signal": None if value is None else value * 2 - 1, "display_s": None, "t_published": t_published}
    return volume, feedback


def test_lsl_inlet_receives_every_feedback_value_and_one_marker_per_volume(pylsl):
    """A scripted run published on a real ZeroMQ PUB; the bridge in a thread; LSL inlets in the test."""
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind("tcp://127.0.0.1:*")
    address = pub.getsockopt_string(zmq.LAST_ENDPOINT)
    bridge = rtnf_lsl.LslBridge(address, source_id=f"rtnf-test-{uuid.uuid4().hex[:8]}", poll_ms=20)
    bridge.start()
    inlets = []
    try:
        assert bridge.ready.wait(10) and bridge.error is None
        fb_inlet, mk_inlet = inlets = _inlets(pylsl, bridge)
        # ZeroMQ's slow joiner: send the run start until the bridge has it (one marker per run)
        start = _run_body("start")
        deadline = time.monotonic() + 10
        while bridge.n_markers == 0 and time.monotonic() < deadline:
            pub.send_multipart(encode("run", RUN_ID, start))
            time.sleep(0.05)
        assert bridge.n_markers == 1, "the bridge never received the run start"
        pub.send_multipart(encode("run", RUN_ID, {**start, "repeat": True}))  # rtnf's repeat: no second marker

        values = [0.5, 0.0, None, 1.0, 0.123456789012345, None, 0.75, 1 / 3]
        published = []
        for index, value in enumerate(values):
            t_published = time.time()
            volume, feedback = _volume_and_feedback(index, value, t_published)
            published.append((volume, feedback))
            pub.send_multipart(encode("feedback", RUN_ID, feedback))  # rtnf's order: feedback, then volume
            pub.send_multipart(encode("volume", RUN_ID, volume))
            if index == 3:  # a hostile message costs nothing
                pub.send_multipart([b"feedback", b"{not json"])
                pub.send_multipart([b"volume", json.dumps({"schema": "rtnf.volume/1", "timing": 5}).encode()])
            time.sleep(0.02)
        pub.send_multipart(encode("run", RUN_ID, {**start, "event": "end", "reason": None, "t": time.time()}))

        got_values, fb_stamps = _pull(fb_inlet, len(values))
        got_markers, mk_stamps = _pull(mk_inlet, len(values) + 2)  # start, volumes, end
    finally:
        for inlet in inlets:
            inlet.close_stream()
        bridge.stop()
        pub.close(0)
        ctx.term()
    assert bridge.error is None and not bridge.is_alive()

    # every feedback value, exactly (double channel), NaN for null, in order
    assert len(got_values) == len(values), got_values
    for got, want in zip(got_values, values):
        assert (math.isnan(got) if want is None else got == want), (got, want)

    markers = [json.loads(m) for m in got_markers]
    assert markers[0]["event"] == "run_start" and markers[0]["run_id"] == RUN_ID and markers[0]["tr_s"] == 2.0
    assert "late" not in markers[0]
    assert markers[-1] == {**markers[-1], "event": "run_end", "run_id": RUN_ID, "reason": None}
    volume_markers = [m for m in markers if m["event"] == "volume"]
    assert [m["index"] for m in volume_markers] == list(range(len(values)))
    for marker, (volume, _) in zip(volume_markers, published):
        assert marker == {"event": "volume", "run_id": RUN_ID, "index": volume["index"],
                          "condition": volume["condition"], "block": volume["block"], "flags": volume["flags"]}
    assert volume_markers[5]["flags"]["missing"] is True and volume_markers[6]["flags"]["censored"] is True
    assert len(markers) == len(values) + 2
    assert bridge.n_malformed == 2 and bridge.n_feedback == len(values)  # the two hostile messages

    # timestamps: t_published on the LSL clock; a volume's marker and its feedback share the stamp
    offset = rtnf_lsl.clock_offset(pylsl.local_clock)
    for ts, (volume, feedback) in zip(fb_stamps, published):
        assert ts == pytest.approx(feedback["t_published"] + offset, abs=0.005)
    volume_stamps = [ts for ts, m in zip(mk_stamps, markers) if m["event"] == "volume"]
    assert volume_stamps == pytest.approx(fb_stamps, abs=1e-5)
    assert all(b > a for a, b in zip(fb_stamps, fb_stamps[1:]))
    assert mk_stamps[0] == pytest.approx(start["t"] + offset, abs=0.005)


def test_lsl_timestamp_falls_back_to_receipt_time_when_the_publication_time_is_unusable():
    now, offset = 1_700_000_000.0, -1_699_990_000.0
    assert rtnf_lsl.lsl_timestamp(now - 0.004, now, offset) == (now - 0.004 + offset, False)
    for bad in (None, "soon", float("nan"), True, now + 5.0, now - 3600.0):
        assert rtnf_lsl.lsl_timestamp(bad, now, offset) == (now + offset, True)
    assert math.isnan(rtnf_lsl.feedback_sample(None)) and math.isnan(rtnf_lsl.feedback_sample("0.5"))
    assert rtnf_lsl.feedback_sample(1) == 1.0


def test_rtnf_lsl_command_forwards_a_real_run(pylsl, tmp_path, monkeypatch):
    """`python -m rtnf.apps.lsl` beside a real `rtnf run` + scanner-sim: every published feedback value arrives."""
    from rtnf.apps import demo

    address = demo.free_address()
    addresses = iter([address])
    real_free_address = demo.free_address
    monkeypatch.setattr(demo, "free_address", lambda: next(addresses, None) or real_free_address())
    source_id = f"rtnf-test-{uuid.uuid4().hex[:8]}"
    log_path = tmp_path / "lsl.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rtnf.apps.lsl", "--address", address, "--source-id", source_id],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=os.environ.copy(),
        )
    inlets = []
    try:
        class Bridge:  # what _inlets needs to find the child's streams
            pass

        Bridge.source_id = source_id
        fb_inlet, mk_inlet = inlets = _inlets(pylsl, Bridge)
        cfg, listener = run_processes(tmp_path, REAL_RUN_CONFIG, speed=8.0)
        feedback = listener.of("feedback")
        volumes = listener.of("volume")
        assert len(feedback) == len(volumes) == REAL_RUN_N - 2
        got_values, fb_stamps = _pull(fb_inlet, len(feedback))
        got_markers, _ = _pull(mk_inlet, len(volumes) + 2)
    finally:
        for inlet in inlets:
            inlet.close_stream()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log_path.read_text()

    assert len(got_values) == len(feedback)
    for got, message in zip(got_values, feedback):
        want = message["value"]
        assert (math.isnan(got) if want is None else got == want), (message["index"], got, want)
    assert any(m["value"] is None for m in feedback) and any(m["value"] is not None for m in feedback)
    offset = rtnf_lsl.clock_offset(pylsl.local_clock)
    assert fb_stamps == pytest.approx([m["t_published"] + offset for m in feedback], abs=0.005)

    markers = [json.loads(m) for m in got_markers]
    assert [m["event"] for m in markers] == ["run_start"] + ["volume"] * len(volumes) + ["run_end"]
    assert [m["index"] for m in markers[1:-1]] == [v["index"] for v in volumes] == list(range(len(volumes)))
    assert all(m["condition"] == v["condition"] and m["block"] == v["block"] and m["flags"] == v["flags"]
               for m, v in zip(markers[1:-1], volumes))
    assert "sent" in log_path.read_text()


REAL_RUN_N = 18
REAL_RUN_CONFIG = {"session.task": "lsl", "scanner.n_volumes": REAL_RUN_N, "protocol.pattern": pattern(rest=4, regulate=4)}
