"""The operator console: its run state (pure Python) and the live page in a real headless Chromium.

The browser tests start the console as its own process (``python -m rtnf.apps.console``), feed it
either a scripted run published by the test (motion, a high-motion volume, missing / late /
censored volumes, screen acknowledgements and key presses, log warnings and errors, volume
previews, a stall) or a real session (``rtnf run`` with ``scanner-sim`` and the whole-brain
model), and read back what the page plots through ``window.rtnfConsole``.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import subprocess
import sys
import time
import types
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import zmq

from rtnf.apps.console.preview import PLANES, T_THRESHOLD, outline, prepare
from rtnf.apps.console.state import EVENTS_MAX, MOTION_PARAMETERS, RunState
from rtnf.apps.demo import Listener, Processes, wait_ready, free_address, sim_spec, write_toml
from rtnf.wire.messages import encode
from rtnf.analysis.wholebrain import preview_body, slice_indices
from tests.helpers import drain, make_config, pattern

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
ROIS = ["acc", "linsula"]
# Waits for what the page shows: generous, since they only cost time when the test fails anyway. Loaded with two busy
# processes on two cores, this machine took 7.5 s to start the console, 3.8 s to open a page, 2.5 s to build the
# run's plots and up to 0.6 s to show a volume (0.3 s idle); CI machines can be slower still.
WAIT_MS = 30_000
BLOCKS = [{"condition": c, "start": s, "stop": s + 6} for s, c in zip(range(0, 30, 6), ["rest", "regulate"] * 3)]


def requires_browser() -> pytest.MarkDecorator:
    """Skip with a reason when the web stack, Playwright or Debian's Chromium is missing."""
    if importlib.util.find_spec("bokeh") is None:
        return pytest.mark.skip(reason="Bokeh is not installed (pip install -e '.[console]')")
    if importlib.util.find_spec("playwright") is None:
        return pytest.mark.skip(reason="Playwright is not installed (pip install playwright; no browser download needed)")
    if not os.path.exists(CHROMIUM):
        return pytest.mark.skip(reason="no Chromium at /usr/bin/chromium (apt-get install chromium)")
    return pytest.mark.slow


# --------------------------------------------------------------------------- a scripted run


class ScriptedRun:
    """Publishes a realistic run as rtnf and the feedback screen would, message by message."""

    def __init__(self, tr_s: float, n_volumes: int, seed: int = 1) -> None:
        self.address, self.screen_address = free_address(), free_address()
        self.tr_s, self.n_volumes = tr_s, n_volumes
        self.run_id = "sub-01_task-nf_run-1_test"
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.screen = self.ctx.socket(zmq.PUB)
        for sock, address in ((self.pub, self.address), (self.screen, self.screen_address)):
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(address)
        self.rng = np.random.default_rng(seed)
        self.motion = np.zeros(6)
        self.published: dict[int, dict] = {}  # index -> {"volume", "feedback", "displayed"}

    def send(self, topic: str, body: dict) -> None:
        self.pub.send_multipart(encode(topic, self.run_id, body))

    def beat(self, state: str, last_index: int | None, screen: bool = True) -> None:
        self.send("heartbeat", {"source": "rtnf", "state": state, "last_index": last_index,
                                "n_volumes": self.n_volumes, "t": time.time()})
        if screen:
            self.screen.send_multipart(encode("heartbeat", self.run_id, {"source": "stimulus", "state": "running", "t": time.time()}))

    def start(self) -> dict:
        self.t0 = time.time()
        body = {"event": "start", "tr_s": self.tr_s, "n_volumes": self.n_volumes, "dummy_volumes": 2,
                "conditions": ["rest", "regulate"], "baseline": "rest", "blocks": BLOCKS, "rois": ROIS,
                "feedback": {"roi": "acc", "kind": "continuous", "scale_psc": [-1.0, 2.0]},
                "instructions": {"regulate": "Raise the bar"}, "t": self.t0, "a_future_field": {"x": 1}}
        self.send("run", body)
        return body

    def volume(self, index: int, fd: float | None = None, missing: bool = False, late: bool = False,
               censored: bool = False, display: bool = True) -> dict:
        """Publish volume ``index`` (feedback first, then the volume, then the screen's ack)."""
        now = time.time()
        regulate = next(b["condition"] for b in BLOCKS if b["start"] <= index < b["stop"]) == "regulate"
        if fd is None:
            step = self.rng.normal(0, [0.02, 0.02, 0.03, 0.0003, 0.0003, 0.0003])
            fd = float(np.sum(np.abs(step[:3])) + 50 * np.sum(np.abs(step[3:])))
        else:  # a jolt of exactly that framewise displacement along z
            step = np.array([0.0, 0.0, fd, 0.0, 0.0, 0.0])
        self.motion = self.motion + step
        drift = 2.0 * index
        rois = {}
        for k, roi in enumerate(ROIS):
            signal = (1.5 if regulate and roi == "acc" else 0.0) * 10 + self.rng.normal(0, 3)
            raw = 1000.0 + 80 * k + drift + signal
            clean = raw - drift
            psc = 100 * (clean - (1000.0 + 80 * k)) / (1000.0 + 80 * k)
            rois[roi] = {"raw": None, "clean": None, "psc": None} if missing else {"raw": raw, "clean": clean, "psc": psc}
        value = None if missing else min(1.0, max(0.0, (rois["acc"]["psc"] + 1.0) / 3.0))
        t_detected = now - 0.012
        timing = {"t_acquired": now - 0.6, "t_detected": t_detected, "t_read": t_detected + 0.0031,
                  "t_preprocessed": t_detected + 0.0094, "t_modelled": t_detected + 0.0112, "t_published": now}
        if missing:
            timing = {k: None for k in timing} | {"t_published": now}
        feedback = {"index": index, "condition": "regulate" if regulate else "rest", "value": value,
                    "reason": "missing volume" if missing else None, "kind": "continuous", "t_published": now}
        volume = {
            "index": index, "acquisition": index + 2, "n_volumes": self.n_volumes, "onset_s": index * self.tr_s,
            "condition": feedback["condition"], "block": index // 6, "rois": rois,
            "motion": None if missing else dict(zip(MOTION_PARAMETERS, map(float, self.motion))),
            "framewise_displacement": None if missing else fd,
            "flags": {"missing": missing, "censored": censored, "late": late},
            "timing": timing, "file": None if missing else f"vol_{index + 3:05d}.nii", "unknown_field": [1, 2],
        }
        self.send("feedback", feedback)
        self.send("volume", volume)
        displayed = None
        if display:
            displayed = {"source": "stimulus", "index": index, "value": value, "condition": feedback["condition"],
                         "state": "running", "t_received": now + 0.001, "t_displayed": now + 0.018}
            self.screen.send_multipart(encode("displayed", self.run_id, displayed))
        self.published[index] = {"volume": volume, "feedback": feedback, "displayed": displayed}
        return volume

    def log(self, level: str, message: str) -> dict:
        body = {"level": level, "message": message, "t": time.time()}
        self.send("log", body)
        return body

    def key(self, key: str, role: str, index: int | None = None) -> dict:
        body = {"source": "stimulus", "key": key, "role": role, "t_key": time.time(), "state": "running", "index": index}
        self.screen.send_multipart(encode("keys", self.run_id, body))
        return body

    def preview(self, index: int, whole_brain: bool = True) -> dict:
        """Publish the preview rtnf would send after volume ``index`` (made by rtnf's own preview_body)."""
        body = synthetic_preview(index, whole_brain, seed=index)
        self.send("preview", body)
        return body

    def end(self) -> None:
        self.send("run", {"event": "end", "tr_s": self.tr_s, "n_volumes": self.n_volumes, "blocks": BLOCKS,
                          "rois": ROIS, "reason": None, "t": time.time()})
        self.beat("ended", self.n_volumes - 1)

    def close(self) -> None:
        self.pub.close()
        self.screen.close()
        self.ctx.term()


PREVIEW_SHAPE = (20, 24, 16)  # i, j, k: every plane has a different shape, so a transposition would show


def synthetic_preview(index: int, whole_brain: bool = True, seed: int = 0) -> dict:
    """A ``preview`` body built by rtnf.analysis.wholebrain.preview_body from a synthetic head, t-map and two ROIs."""
    rng = np.random.default_rng(seed)
    x, y, z = np.indices(PREVIEW_SHAPE)
    head = 1000 * np.exp(-(((x - 10) / 8) ** 2 + ((y - 12) / 10) ** 2 + ((z - 8) / 7) ** 2)) + rng.normal(0, 20, PREVIEW_SHAPE)
    blob = np.exp(-(((x - 10) / 3) ** 2 + ((y - 15) / 3) ** 2 + ((z - 8) / 3) ** 2))
    dip = np.exp(-(((x - 5) / 2) ** 2 + ((y - 8) / 2) ** 2))
    tmap = np.where(head > 300, 7 * blob - 4 * dip + rng.normal(0, 1, PREVIEW_SHAPE),
                    np.nan).astype(np.float32)
    masks = {"acc": (x - 10) ** 2 + (y - 15) ** 2 + (z - 8) ** 2 <= 9,
             "linsula": (x - 4) ** 2 + (y - 12) ** 2 + (z - 7) ** 2 <= 4}
    planes = slice_indices(types.SimpleNamespace(shape=PREVIEW_SHAPE), (10, 15, 8))
    image = {name: head.reshape(-1)[idx] for name, idx in planes.items()}
    return preview_body(index, planes, image, tmap if whole_brain else None, masks, 1000.0)


def expected_preview(body: dict) -> dict:
    """What the page must draw for a published preview: each plane transposed, |t| <= 3 not overlaid."""
    out = {}
    for name, plane in body["planes"].items():
        image = np.array(plane["image"]).T.tolist()
        if plane.get("tmap") is None:
            tmap = [[None] * len(image[0]) for _ in image]
        else:
            tmap = [[v if v is not None and abs(v) > T_THRESHOLD else None for v in row]
                    for row in map(list, zip(*plane["tmap"]))]
        out[name] = {"image": image, "tmap": tmap, "masks": {roi: np.array(m).T for roi, m in plane["rois"].items()}}
    return out


def assert_preview_drawn(drawn: dict, body: dict) -> None:
    """The page's preview arrays equal the published ones (transposed), and every outline segment
    separates an ROI pixel from a pixel outside it."""
    assert drawn is not None and drawn["index"] == body["index"]
    expected = expected_preview(body)
    assert sorted(drawn["planes"]) == sorted(PLANES)
    for name, want in expected.items():
        got = drawn["planes"][name]
        assert got["image"] == want["image"], name
        assert len(got["tmap"]) == len(want["tmap"]) and all(
            all((a is None and b is None) or (a is not None and b is not None and abs(a - b) < 1e-5) for a, b in zip(ra, rb))
            for ra, rb in zip(got["tmap"], want["tmap"])), name
        assert sorted(got["outlines"]) == sorted(want["masks"])
        from rtnf.apps.console.preview import PLANE_AXES

        a0, a1 = PLANE_AXES[name]
        voxel = body.get("voxel_mm") or [1.0, 1.0, 1.0]  # outlines are drawn in mm when the voxel size is known
        for roi, mask in want["masks"].items():
            xs = [None if x is None else round(x / voxel[a0], 6) for x in got["outlines"][roi]["xs"]]
            ys = [None if y is None else round(y / voxel[a1], 6) for y in got["outlines"][roi]["ys"]]
            segments = [(xs[i], ys[i], xs[i + 1], ys[i + 1]) for i in range(0, len(xs), 3)]
            assert len(segments) > 0 if mask.any() else len(segments) == 0
            padded = np.pad(mask, 1)
            for x0, y0, x1, y1 in segments:
                if x0 == x1:  # vertical edge at x0: pixels (row y0, columns x0 - 1 and x0)
                    a, b = padded[int(y0) + 1, int(x0)], padded[int(y0) + 1, int(x0) + 1]
                else:  # horizontal edge at y0: pixels (rows y0 - 1 and y0, column x0)
                    a, b = padded[int(y0), int(x0) + 1], padded[int(y0) + 1, int(x0) + 1]
                assert a != b, (name, roi, x0, y0, x1, y1)
            # Every boundary pixel edge is drawn: count them independently.
            assert len(segments) == int((padded[:, 1:] != padded[:, :-1]).sum() + (padded[1:, :] != padded[:-1, :]).sum())


def expected_columns(published: dict[int, dict]) -> dict[str, list]:
    """What the page must plot for the published messages (None where nothing is plotted)."""

    def num(v):
        return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)

    def ms(a, b):
        return None if a is None or b is None else (a - b) * 1000.0

    out: dict[str, list] = {}

    def put(key, value):
        out.setdefault(key, []).append(value)

    for index in sorted(published):
        v, f, d = published[index]["volume"], published[index]["feedback"], published[index]["displayed"]
        t = v["timing"]
        put("index", index)
        put("condition", v["condition"])
        put("feedback", num(f["value"]))
        for roi in ROIS:
            for kind in ("raw", "clean", "psc"):
                put(f"{kind}_{roi}", num(v["rois"][roi][kind]))
        for p in MOTION_PARAMETERS:
            put(p, num((v["motion"] or {}).get(p)))
        put("fd", num(v["framewise_displacement"]))
        for flag in ("missing", "censored", "late"):
            put(flag, v["flags"][flag])
        put("lat_read_ms", ms(t["t_read"], t["t_detected"]))
        put("lat_preprocess_ms", ms(t["t_preprocessed"], t["t_read"]))
        put("lat_model_ms", ms(t["t_modelled"], t["t_preprocessed"]))
        put("lat_publish_ms", ms(t["t_published"], t["t_modelled"]))
        put("processing_ms", ms(t["t_published"], t["t_detected"]))
        put("e2e_ms", ms(d["t_displayed"], t["t_detected"]) if d else None)
    return out


# --------------------------------------------------------------------------- RunState without a browser


def test_state_collects_volumes_feedback_and_acknowledgements():
    run = ScriptedRun(tr_s=1.0, n_volumes=30)
    try:
        state = RunState(t_start=time.time())
        now = time.time()
        state.handle("rtnf", "run", {"run_id": run.run_id, **run.start()}, now)
        for i in range(6):
            v = run.volume(i, missing=(i == 3), fd=0.9 if i == 4 else None)
            p = run.published[i]
            state.handle("rtnf", "feedback", {"run_id": run.run_id, **p["feedback"]}, now)
            state.handle("rtnf", "volume", {"run_id": run.run_id, **v}, now)
        # Acknowledgements arrive after their volumes: the rows are patched, and logged as changed.
        for i in range(6):
            state.handle("screen", "displayed", {"run_id": run.run_id, **run.published[i]["displayed"]}, now)
        assert state.changes == list(range(6))
        data = state.column_data()
        expected = expected_columns(run.published)
        for key, values in expected.items():
            got = [None if isinstance(x, float) and math.isnan(x) else x for x in data[key]]
            assert got == values, key
        assert data["high_motion"] == [False, False, False, False, True, False]
        assert data["mark_missing"][3] == 4.0 and math.isnan(data["mark_missing"][2])
        assert state.phase == "running" and state.n_volumes == 30 and state.rois == ROIS
        assert [a.key for a in state.alerts(now)] == ["motion"]
        assert "0.90 mm at volume 5 of 30 (acq 6)," in state.alerts(now)[0].text  # people count from 1
        # No volume for more than two TRs while running: stalled. Silent screen and rtnf too.
        keys = [a.key for a in state.alerts(now + 3.5)]
        assert keys == ["motion", "stall", "screen", "rtnf"]
        state.handle("screen", "heartbeat", {"source": "stimulus", "state": "running"}, now + 3.5)
        assert "screen" not in [a.key for a in state.alerts(now + 3.6)]
    finally:
        run.close()


def test_state_ignores_bad_and_unknown_input_and_resets_for_a_new_run():
    state = RunState(t_start=0.0, expect_screen=False)
    assert state.handle("rtnf", "volume", {"run_id": "a", "index": "seven"}, 1.0) is False
    assert state.handle("rtnf", "volume", {"run_id": "a", "index": 0, "rois": {"acc": {"raw": "x"}},
                                           "timing": "bad", "flags": None, "motion": [1, 2]}, 1.0) is True
    assert math.isnan(state.rows[0]["raw_acc"]) and state.rows[0]["missing"] is False
    assert state.handle("rtnf", "something_new", {"run_id": "a"}, 1.0) is False
    assert state.handle("rtnf", "preview", {"run_id": "a", **synthetic_preview(0)}, 1.0) is True
    assert state.preview.index == 0
    # A malformed preview is ignored: the previous one stays.
    assert state.handle("rtnf", "preview", {"run_id": "a", "index": 1, "slices": []}, 1.0) is False
    ragged = {"run_id": "a", "index": 1, "planes": {"axial": {"shape": [2, 2], "image": [[1, 2], [3]]}}}
    assert state.handle("rtnf", "preview", ragged, 1.0) is False
    assert state.preview.index == 0 and state.n_previews == 1
    assert state.handle("rtnf", "log", {"run_id": "a", "level": "WARNING"}, 1.0) is False  # no message
    # Acknowledgements of another run are not this run's.
    assert state.handle("screen", "displayed", {"run_id": "b", "index": 0, "t_displayed": 2.0}, 2.0) is False
    generation = state.generation
    state.handle("rtnf", "heartbeat", {"run_id": "b", "source": "rtnf", "state": "waiting"}, 3.0)
    assert state.generation > generation and state.rows == [] and state.run_id == "b"
    assert state.phase == "waiting"
    with pytest.raises(ValueError, match="fd_threshold_mm"):
        RunState(fd_threshold_mm=0)


def test_state_keeps_log_events_alerts_and_key_presses():
    state = RunState(t_start=0.0, expect_screen=False)
    now = time.time()
    state.handle("rtnf", "heartbeat", {"run_id": "r", "source": "rtnf", "state": "running"}, now)
    state.handle("rtnf", "log", {"run_id": "r", "level": "WARNING", "message": "skipped x.dcm: another series",
                                 "t": now - 1}, now)
    assert [(e.level, e.message, e.t) for e in state.events] == [("WARNING", "skipped x.dcm: another series", now - 1)]
    assert state.alerts(now) == []  # a warning is listed, not raised
    state.handle("rtnf", "log", {"run_id": "r", "level": "ERROR", "t": now,
                                 "message": "RECORDING FAILED: cannot write /out/x.tsv (No space left on device)."}, now)
    assert [a.key for a in state.alerts(now)] == ["recording"]
    assert "No space left" in state.alerts(now)[0].text
    assert [a.key for a in state.alerts(now + 3600)] == ["recording", "rtnf"]  # until rtnf says it works again
    state.handle("rtnf", "log", {"run_id": "r", "level": "ERROR", "message": "volume 3 could not be processed"}, now + 1)
    assert [a.key for a in state.alerts(now + 1)] == ["recording", "error"]
    state.handle("rtnf", "log", {"run_id": "r", "level": "WARNING", "t": now + 2,
                                 "message": "recording works again: 4 buffered rows written to x.tsv"}, now + 2)
    assert [a.key for a in state.alerts(now + 2)] == ["error"]
    # A generic error leaves the alert bar after a minute (rtnf has been silent since) ...
    assert [a.key for a in state.alerts(now + 62)] == ["rtnf"]
    assert [e.level for e in state.events] == ["WARNING", "ERROR", "ERROR", "WARNING"]  # ... and stays in the list
    for i in range(EVENTS_MAX + 5):  # bounded
        state.handle("rtnf", "log", {"run_id": "r", "level": "nonsense", "message": f"m{i}"}, now + 3)
    assert len(state.events) == EVENTS_MAX and state.n_events == EVENTS_MAX + 9
    assert state.events[-1].message == f"m{EVENTS_MAX + 4}" and state.events[-1].level == "INFO"
    # Key presses from the screen: triggers counted, the last response kept; other runs' presses ignored.
    for _ in range(3):
        state.handle("screen", "keys", {"run_id": "r", "key": "5", "role": "trigger", "t_key": now}, now)
    state.handle("screen", "keys", {"run_id": "r", "key": "1", "role": "response", "t_key": now + 0.5}, now)
    state.handle("screen", "keys", {"run_id": "r", "key": "2", "role": "response", "t_key": now + 0.7}, now)
    assert state.handle("screen", "keys", {"run_id": "other", "key": "3", "role": "response"}, now) is False
    assert state.handle("screen", "keys", {"run_id": "r", "key": "3", "role": "quit"}, now) is False
    assert state.keys == {"n_triggers": 3, "t_last_trigger": now, "n_responses": 2, "last_response": "2",
                          "t_last_response": now + 0.7}
    # A new run starts with none of it.
    state.handle("rtnf", "heartbeat", {"run_id": "r2", "source": "rtnf", "state": "waiting"}, now + 4)
    assert len(state.events) == 0 and state.recording_failure is None and state.keys["n_triggers"] == 0


def test_preview_orientation_threshold_and_outlines():
    body = synthetic_preview(4)
    preview = prepare(body)
    assert preview.index == 4 and preview.has_tmap and preview.rois == ("acc", "linsula") and not preview.oriented
    for name, (a0, a1) in (("sagittal", (1, 2)), ("coronal", (0, 2)), ("axial", (0, 1))):
        plane = preview.planes[name]
        published = np.array(body["planes"][name]["image"])
        assert published.shape == (PREVIEW_SHAPE[a0], PREVIEW_SHAPE[a1])
        # Drawn transposed with row 0 at the bottom: x runs along the first voxel axis, y along the second.
        assert plane.image.dtype == np.uint8 and np.array_equal(plane.image, published.T)
        assert (plane.width, plane.height) == (PREVIEW_SHAPE[a0], PREVIEW_SHAPE[a1])
        t = np.array(body["planes"][name]["tmap"], dtype=float).T
        shown = np.abs(np.nan_to_num(t)) > T_THRESHOLD
        assert np.array_equal(np.isfinite(plane.tmap), shown) and np.allclose(plane.tmap[shown], t[shown])
    axial = preview.planes["axial"]
    assert np.isfinite(axial.tmap).any() and (axial.tmap[np.isfinite(axial.tmap)] < 0).any()  # both signs
    # The ROI outline of a single pixel is its four edges.
    xs, ys = outline(np.array([[0, 0, 0], [0, 1, 0]], bool))
    edges = {(xs[i], ys[i], xs[i + 1], ys[i + 1]) for i in range(0, len(xs), 3)}
    assert edges == {(1, 1, 1, 2), (2, 1, 2, 2), (1, 1, 2, 1), (1, 2, 2, 2)}
    # Without the whole-brain model: no overlay. With axcodes, L/P/I axes are flipped first; voxel_mm sets the aspect.
    assert not prepare(synthetic_preview(0, whole_brain=False)).has_tmap
    flipped = prepare({**body, "axcodes": ["L", "P", "S"], "voxel_mm": [3.0, 3.0, 4.0]})
    published = np.array(body["planes"]["axial"]["image"])
    assert flipped.oriented and np.array_equal(flipped.planes["axial"].image, published[::-1, ::-1].T)
    assert (flipped.planes["sagittal"].width, flipped.planes["sagittal"].height) == (3.0 * 24, 4.0 * 16)
    # A plane whose arrays do not match its shape is left out; nothing usable: None.
    broken = {**body, "planes": {**body["planes"], "coronal": {**body["planes"]["coronal"], "shape": [3, 3]}}}
    assert sorted(prepare(broken).planes) == ["axial", "sagittal"]
    assert prepare({"index": 1, "planes": {"axial": {"shape": [2, 2], "image": "x"}}}) is None


def test_state_learns_the_protocol_after_joining_mid_run():
    state = RunState(t_start=0.0)
    state.handle("rtnf", "volume", {"run_id": "r", "index": 7, "n_volumes": 30,
                                    "rois": {"acc": {"raw": 1.0, "clean": 0.5, "psc": 0.1}}}, 1.0)
    generation = state.generation
    assert state.rois == ["acc"] and state.blocks == []
    state.handle("rtnf", "run", {"run_id": "r", "event": "start", "repeat": True, "tr_s": 2.0, "n_volumes": 30,
                                 "blocks": BLOCKS, "rois": ["acc", "ins"], "t": 0.0}, 2.0)
    assert state.generation == generation + 1 and len(state.blocks) == 5
    assert state.rois == ["acc", "ins"] and math.isnan(state.rows[0]["raw_ins"]) and state.rows[0]["raw_acc"] == 1.0
    assert state.current_block()["condition"] == "regulate"


def _feed(state: RunState, index: int, condition: str, value: float | None, feedback_first: bool = True) -> None:
    """One volume of run "r" and its feedback message (in either order), as rtnf publishes them."""
    volume = {"run_id": "r", "index": index, "condition": condition, "n_volumes": 60, "rois": {"acc": {"raw": 1.0}}}
    feedback = {"run_id": "r", "index": index, "condition": condition, "value": value, "kind": "continuous"}
    messages = [("feedback", feedback), ("volume", volume)]
    for topic, body in messages if feedback_first else messages[::-1]:
        assert state.handle("rtnf", topic, body, 1.0)


def test_state_counts_feedback_at_the_bars_ends_and_alerts_above_a_fifth():
    from rtnf.apps.fidelity import SATURATION_EPS

    state = RunState(t_start=0.0, expect_screen=False)
    state.handle("rtnf", "run", {"run_id": "r", "event": "start", "tr_s": 1.0, "n_volumes": 60, "baseline": "rest",
                                 "conditions": ["rest", "regulate"], "rois": ["acc"], "t": 0.0}, 1.0)
    for i in range(10):  # the baseline's empty bar and a missing volume's null value are not regulation volumes
        _feed(state, i, "rest", 0.0)
    _feed(state, 10, "regulate", None)
    assert state.saturation() == {"regulation": 0, "top": 0, "bottom": 0, "at_end": 0, "fraction": None}
    # 9 regulation volumes, all at an end: too few to judge yet.
    for i, v in enumerate([1.0] * 4 + [1 - SATURATION_EPS / 2, 0.0, SATURATION_EPS, 1.0, 1.0], start=11):
        _feed(state, i, "regulate", v, feedback_first=i % 2 == 0)  # feedback before or after its volume
    assert state.saturation() == {"regulation": 9, "top": 7, "bottom": 2, "at_end": 9, "fraction": 1.0}
    assert state.alerts(1.0) == []
    # From 10 regulation volumes on, more than 20 % at an end raises the alert.
    for i in range(20, 41):
        _feed(state, i, "regulate", 0.5 if i != 25 else 0.998, feedback_first=i % 2 == 0)  # 0.998: inside the bar
    sat = state.saturation()
    assert (sat["at_end"], sat["regulation"]) == (9, 30) and sat["fraction"] == pytest.approx(0.3)
    alerts = state.alerts(1.0)
    assert [(a.key, a.level) for a in alerts] == [("saturation", "warning")]
    assert alerts[0].text.startswith("feedback at the bar's end for 9 of 30 regulation volumes")
    assert alerts[0].text.endswith("check feedback.scale_range / scaling")
    # 9 of 45 (20 %) is not more than a fifth: the alert is gone.
    for i in range(41, 56):
        _feed(state, i, "regulate", 0.5)
    assert (state.saturation()["at_end"], state.saturation()["regulation"]) == (9, 45)
    assert state.alerts(1.0) == []
    # A feedback value that comes late and fills the bar counts again: 10 of 46.
    _feed(state, 56, "regulate", 1.0, feedback_first=False)
    assert state.saturation()["fraction"] == pytest.approx(10 / 46)
    assert [a.key for a in state.alerts(1.0)] == ["saturation"]


def test_state_counts_no_regulation_volume_without_the_baseline():
    state = RunState(t_start=0.0, expect_screen=False)
    for i in range(12):  # volumes without the run message: the baseline is unknown
        _feed(state, i, "regulate", 1.0)
    assert state.saturation()["fraction"] is None and state.alerts(1.0) == []


def test_console_command_line():
    import argparse

    from rtnf.apps.console import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.host, args.port, args.fd_threshold) == ("127.0.0.1", 5006, 0.5)
    assert parser.parse_args(["--ack-address", "tcp://127.0.0.1:7001"]).screen_address == "tcp://127.0.0.1:7001"
    cmd = cli.command("tcp://127.0.0.1:6000", None, port=7000)
    assert cmd[1:3] == ["-m", "rtnf.apps.console"] and "--no-screen" in cmd and "7000" in cmd

    # The package and its command line import no web stack: `rtnf` stays light.
    code = "import sys, rtnf.apps.console, rtnf.apps.console.cli; sys.exit('bokeh' in sys.modules or 'tornado' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --------------------------------------------------------------------------- the page in Chromium


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class ConsoleProcess:
    """``python -m rtnf.apps.console`` as a child process, stopped at the end."""

    def __init__(self, address: str, screen_address: str | None, log_dir: Path) -> None:
        from rtnf.apps.console.app import free_port
        from rtnf.apps.console.cli import command

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = log_dir / f"console-{self.port}.log"
        with open(self.log, "w") as handle:
            self.proc = subprocess.Popen(command(address, screen_address, port=self.port), stdout=handle,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.time() + 2 * WAIT_MS / 1000
        while True:
            try:
                urllib.request.urlopen(self.url, timeout=2).read()
                return
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise AssertionError(f"the console did not start:\n{self.log.read_text()}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        assert self.proc.returncode in (0, -15), self.log.read_text()


class Page:
    """A browser tab on the console that records console errors and every request."""

    def __init__(self, browser, url: str) -> None:
        self.page = browser.new_page(viewport={"width": 1500, "height": 1250})
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.url = url
        self.open()

    def open(self) -> None:
        self.page.goto(self.url)
        self.page.wait_for_function("() => window.rtnfConsole && window.rtnfConsole.data() !== null", timeout=WAIT_MS)

    def reload(self) -> None:
        self.page.reload()
        self.page.wait_for_function("() => window.rtnfConsole && window.rtnfConsole.data() !== null", timeout=WAIT_MS)

    def wait_rows(self, n: int, timeout_s: float) -> None:
        self.page.wait_for_function(f"() => (window.rtnfConsole.data() || {{index: []}}).index.length >= {n}",
                                    timeout=timeout_s * 1000)

    def data(self) -> dict[str, list]:
        return self.page.evaluate("() => window.rtnfConsole.data()")

    def status(self) -> dict:
        return self.page.evaluate("() => window.rtnfConsole.status()")

    def alert(self, key: str):
        # Playwright's CSS selectors pierce the shadow roots Bokeh renders its Divs in.
        return self.page.locator(f'[data-alert="{key}"]')


def assert_plotted(data: dict[str, list], expected: dict[str, list]) -> None:
    for key, values in expected.items():
        assert data[key] == values, f"column {key}: page {data[key]} != published {values}"


@requires_browser()
def test_console_page_follows_a_scripted_run(browser, tmp_path):
    tr_s, n_volumes = 1.0, 30  # one TR is the bound the page must meet; 1 s keeps it honest on a loaded 2-core CI
    run = ScriptedRun(tr_s, n_volumes)
    console = ConsoleProcess(run.address, run.screen_address, tmp_path)
    try:
        page = Page(browser, console.url)
        run.beat("waiting", None)
        page.page.wait_for_function("() => window.rtnfConsole.status().phase === 'waiting'", timeout=WAIT_MS)
        time.sleep(0.3)
        run.start()  # the page builds its plots for the run's ROIs and blocks
        page.page.wait_for_function("() => (window.rtnfConsole.status() || {}).n_volumes === 30", timeout=WAIT_MS)
        time.sleep(2 * tr_s)  # rtnf discards two dummy volumes

        def publish(index: int, **kwargs) -> None:
            run.volume(index, **kwargs)
            run.beat("running", index)
            t0 = time.time()
            # Shown live, before the next volume is published (at most a TR later, as a scanner would). Not within
            # one TR: that was a speed bound, and a loaded CI took 0.6 s of it; a page that does not follow the run
            # never shows the row.
            page.wait_rows(index + 1, timeout_s=WAIT_MS / 1000)
            time.sleep(max(0.0, tr_s - (time.time() - t0)))

        for i in range(12):
            publish(i, fd=0.9 if i == 8 else None, missing=(i == 5))
            if i == 7:
                assert page.alert("motion").count() == 0
        # The injected high-motion volume raises the alert in the DOM.
        page.alert("motion").wait_for(timeout=WAIT_MS)
        assert "0.90 mm at volume 9 of 30 (acq 10)," in page.alert("motion").inner_text()
        assert "motion" in page.status()["alerts"]

        # rtnf's log topic: a warning is listed (newest first); RECORDING FAILED is raised as an alert.
        run.log("WARNING", "skipped MR.0007.0001.dcm: series 7, not the run's series 5")
        page.page.locator('[data-level="WARNING"]', has_text="series 7").wait_for(timeout=WAIT_MS)
        assert page.alert("recording").count() == 0 and page.alert("error").count() == 0
        failed = ("RECORDING FAILED: cannot write /data/out/sub-01_desc-rtnf_timeseries.tsv (No space left on device). "
                  "The feedback goes on; rows are kept in memory and written as soon as the output folder works again.")
        run.log("ERROR", failed)
        page.alert("recording").wait_for(timeout=WAIT_MS)
        assert "No space left on device" in page.alert("recording").inner_text()
        assert page.alert("error").count() == 0  # the recording alarm is not also a generic error
        events = page.page.locator(".rtnf-event")
        assert events.count() == 2 and "RECORDING FAILED" in events.nth(0).inner_text()
        assert "level-error" in events.nth(0).get_attribute("class") and "series 7" in events.nth(1).inner_text()
        # The screen's key presses, and the latest volume's preview with its t-map and ROI outlines.
        for _ in range(3):
            run.key("5", "trigger")
        run.key("1", "response", index=11)
        run.preview(10)
        preview = run.preview(11)  # only the latest is drawn
        page.page.wait_for_function("() => (window.rtnfConsole.preview() || {}).index === 11", timeout=WAIT_MS)
        assert_preview_drawn(page.page.evaluate("() => window.rtnfConsole.preview()"), preview)
        page.page.wait_for_function("() => window.rtnfConsole.status().keys.n_triggers === 3", timeout=WAIT_MS)
        assert page.status()["keys"]["last_response"] == "1"
        assert page.page.locator('[data-keys="triggers"]').inner_text() == "3"

        # Reloading mid-run shows every earlier volume, the events, the recording alert and the preview.
        page.reload()
        page.wait_rows(12, timeout_s=WAIT_MS / 1000)
        data = page.data()
        assert data["index"] == list(range(12))
        assert_plotted(data, expected_columns(run.published))
        assert page.status()["phase"] == "running" and page.status()["last_index"] == 11
        assert [e["level"] for e in page.page.evaluate("() => window.rtnfConsole.events()")] == ["ERROR", "WARNING"]
        page.page.locator('[data-level="WARNING"]', has_text="series 7").wait_for(timeout=WAIT_MS)
        page.alert("recording").wait_for(timeout=WAIT_MS)
        assert_preview_drawn(page.page.evaluate("() => window.rtnfConsole.preview()"), preview)
        assert page.status()["keys"]["n_triggers"] == 3
        assert "last response 1" in page.page.locator(".rtnf-status").inner_text()

        # The output folder works again: the recording alert clears; another error gets the generic alert.
        run.log("WARNING", "recording works again: 13 buffered rows written to sub-01_desc-rtnf_timeseries.tsv")
        page.alert("recording").wait_for(state="detached", timeout=WAIT_MS)
        run.log("ERROR", "MR.0005.0013.dcm could not be sorted into the run; skipped")
        page.alert("error").wait_for(timeout=WAIT_MS)
        assert "could not be sorted" in page.alert("error").inner_text()

        for i in range(12, 18):
            publish(i, late=(i == 14), censored=(i == 16))
        # The scanner stalls and the screen falls silent: both alerts come (after two TRs without a volume).
        page.alert("stall").wait_for(timeout=WAIT_MS)
        page.alert("screen").wait_for(timeout=WAIT_MS)
        assert "no volume" in page.alert("stall").inner_text()
        # Volumes and the screen's heartbeats come again: both alerts clear. Looked at while they still come, a TR
        # after each: once they stop, each alert is right again 2 TRs (stall) or 3 s (screen) after the last one,
        # so a check after the loop only passed when the page caught up within that window.
        cleared = []
        for i in range(18, n_volumes):
            publish(i)
            cleared.append(page.alert("stall").count() == 0 and page.alert("screen").count() == 0)
        assert any(cleared), cleared
        run.end()
        page.page.wait_for_function("() => window.rtnfConsole.status().phase === 'ended'", timeout=WAIT_MS)

        data = page.data()
        assert data["index"] == list(range(n_volumes))
        assert_plotted(data, expected_columns(run.published))
        assert [i for i, m in enumerate(data["missing"]) if m] == [5]
        assert [i for i, m in enumerate(data["late"]) if m] == [14]
        assert [i for i, m in enumerate(data["censored"]) if m] == [16]
        assert [i for i, y in enumerate(data["mark_motion"]) if y is not None] == [8]
        assert page.status()["counts"] == {"volumes": 30, "missing": 1, "late": 1, "censored": 1, "high_motion": 1}
        assert "ENDED" in page.page.locator(".rtnf-status").inner_text()
        assert_preview_drawn(page.page.evaluate("() => window.rtnfConsole.preview()"), preview)
        assert page.page.locator(".rtnf-event").count() == 4

        page.page.screenshot(path=str(tmp_path / "console.png"), full_page=True)  # the test's artifact
        assert not page.errors, page.errors
        assert all(u.startswith(console.url) or u.startswith(f"ws://127.0.0.1:{console.port}/") for u in page.requests), [
            u for u in page.requests if "127.0.0.1" not in u
        ]
    finally:
        console.stop()
        run.close()


SESSION_CONFIG = {"session.subject": "console", "session.task": "nf", "scanner.tr_s": 1.0, "scanner.n_volumes": 26,
                  "scanner.missing_timeout_s": 1.0, "protocol.pattern": pattern(rest=6, regulate=6),
                  "rois.linsula": {"center_mm": [-37.0, 1.0, -1.0], "radius_mm": 6.0}, "model.whole_brain": True,
                  "output.dir": "outputs"}


@requires_browser()
def test_console_page_plots_a_real_session(browser, tmp_path):
    """rtnf run + scanner-sim: the page holds exactly what rtnf published, opened mid-run."""
    from rtnf.config import load_config

    address = free_address()
    cfg_path = make_config(tmp_path, SESSION_CONFIG)
    cfg = load_config(cfg_path, {"publish.address": address})
    spec_path = tmp_path / "spec.toml"
    write_toml(sim_spec(cfg, amplitude_pct=1.5, noise_pct=1.0, seed=3), spec_path)
    logs = tmp_path / "logs"
    logs.mkdir()
    update_docs = bool(os.environ.get("RTNF_UPDATE_DOCS_SCREENSHOTS"))  # slower, so the screenshot shows a live run
    listener = Listener([address])
    procs = Processes()
    console = ConsoleProcess(address, None, logs)
    try:
        procs.start("rtnf", [sys.executable, "-m", "rtnf", "run", str(cfg_path), "--create-export-dir", "--publish-address", address], logs)
        wait_ready(listener, procs, no_screen=True)
        procs.start("scanner_sim", [sys.executable, "-m", "scanner_sim", "synth", str(spec_path), "--export-dir",
                                    str(cfg.scanner.export_dir), "--truth-dir", str(tmp_path / "truth"),
                                    "--speed", "2" if update_docs else "4", "--mode", "reopen"], logs)
        listener.wait_for(lambda t, b: t == "volume" and b["index"] >= 4, 60, "volume 4")
        page = Page(browser, console.url)  # opened mid-run
        # Waited for, not read at once: the console's own subscription may trail the test's listener on a loaded
        # machine. That this page holds the volumes from before it opened is checked below (all n_kept rows).
        page.wait_rows(4, timeout_s=WAIT_MS / 1000)
        if update_docs:  # the docs show this live run, t-map and all
            listener.wait_for(lambda t, b: t == "preview" and b["index"] >= 15, 30, "preview 15")
            page.page.wait_for_function("() => (window.rtnfConsole.preview() || {index: 0}).index >= 15", timeout=3000)
            page.page.screenshot(path=str(ROOT / "docs" / "console.png"), full_page=True)
        rtnf = procs.procs["rtnf"]
        while rtnf.poll() is None:
            listener.poll(0.2)
        assert rtnf.returncode == 0, (logs / "rtnf.log").read_text()
        drain(listener)
        n_kept = cfg.n_kept_volumes
        page.wait_rows(n_kept, timeout_s=WAIT_MS / 1000)
        page.page.wait_for_function("() => window.rtnfConsole.status().phase === 'ended'", timeout=WAIT_MS)
        volumes = {v["index"]: v for v in listener.of("volume")}
        feedback = {f["index"]: f for f in listener.of("feedback")}
        published = {i: {"volume": volumes[i], "feedback": feedback[i], "displayed": None} for i in volumes}
        assert sorted(published) == list(range(n_kept))
        page.reload()  # after the end, a new page still shows the whole run
        page.wait_rows(n_kept, timeout_s=WAIT_MS / 1000)
        data = page.data()
        expected = expected_columns(published)
        for key in ("index", "condition", "feedback", "raw_acc", "clean_acc", "psc_acc", "raw_linsula", "psc_linsula",
                    "missing", "late", "lat_read_ms", "processing_ms"):
            assert data[key] == expected[key], key
        assert sum(v is not None for v in data["feedback"]) >= n_kept - 8
        assert page.page.locator('[data-alert="none"]').count() == 1  # no motion yet, no screen expected
        # The page draws rtnf's last preview: the realigned volume, the whole-brain t-map, the ROIs.
        previews = listener.of("preview")
        assert previews and previews[-1]["index"] == n_kept - 1
        assert all(p["planes"]["axial"]["tmap"] is not None for p in previews)
        assert_preview_drawn(page.page.evaluate("() => window.rtnfConsole.preview()"), previews[-1])
        page.page.screenshot(path=str(tmp_path / "console_real_session.png"), full_page=True)
        assert not page.errors, page.errors
    finally:
        console.stop()
        listener.close()
        procs.stop_all()


# --------------------------------------------------------------------------- issue 16: true and calm at the scanner


def _start(state: RunState, t: float, **fields) -> None:
    body = {"run_id": "r", "event": "start", "tr_s": 1.0, "n_volumes": 30, "baseline": "rest",
            "conditions": ["rest", "regulate"], "blocks": BLOCKS, "rois": ["acc"], "t": t, **fields}
    assert state.handle("rtnf", "run", body, t)


def _volume(state: RunState, index: int, t: float, value: float | None, reason: str | None = None, **fields) -> None:
    condition = next(b["condition"] for b in BLOCKS if b["start"] <= index < b["stop"])
    assert state.handle("rtnf", "feedback", {"run_id": "r", "index": index, "condition": condition, "value": value,
                                             "reason": reason, "kind": "continuous"}, t)
    assert state.handle("rtnf", "volume", {"run_id": "r", "index": index, "acquisition": index + 3, "n_volumes": 30,
                                           "condition": condition, "block": index // 6,
                                           "rois": {"acc": {"raw": 1.0, "clean": 1.0, "psc": 0.1}}, **fields}, t)


def test_state_no_screen_or_rtnf_alert_once_the_run_or_the_screen_has_ended():
    """After a normal end the screen quits and rtnf exits: their silence is expected, not an alert."""
    state = RunState(t_start=0.0)
    _start(state, 1.0)
    state.handle("screen", "heartbeat", {"run_id": "r", "source": "stimulus", "state": "running"}, 1.0)
    for i in range(30):
        _volume(state, i, 1.0 + i, 0.5)
        state.handle("screen", "heartbeat", {"run_id": "r", "source": "stimulus", "state": "running"}, 1.0 + i)
    assert [a.key for a in state.alerts(40.0)] == ["screen", "rtnf"]  # both silent while the run is not over: true
    state.handle("rtnf", "run", {"run_id": "r", "event": "end", "t": 31.0}, 31.0)
    assert state.phase == "ended"
    assert state.alerts(31.5) == [] and state.alerts(3600.0) == []  # minutes later: still calm
    # The screen says it ended (its own end screen) before rtnf's end message arrives: no screen alert either.
    state = RunState(t_start=0.0)
    _start(state, 1.0)
    _volume(state, 0, 1.0, 0.5)
    state.handle("screen", "heartbeat", {"run_id": "r", "source": "stimulus", "state": "ended"}, 1.0)
    assert "screen" not in [a.key for a in state.alerts(30.0)]


def test_state_takes_its_limits_and_folders_from_the_run_message():
    state = RunState(fd_threshold_mm=0.5, rtnf_timeout_s=3.0, t_start=0.0, expect_screen=False)
    state.handle("rtnf", "heartbeat", {"run_id": "r", "source": "rtnf", "state": "waiting"}, 0.5)
    assert state.export_dir is None and state.phase == "waiting"
    _start(state, 1.0, fd_threshold_mm=0.3, heartbeat_s=5.0, export_dir="/scanner/export", output_dir="/data/out")
    assert (state.export_dir, state.output_dir) == ("/scanner/export", "/data/out")
    assert state.fd_threshold_mm == 0.3 and state.rtnf_timeout_s == 15.0
    # A heartbeat every 5 s is not silence: no "rtnf silent" after 3 s, but after three heartbeats missed.
    assert state.alerts(10.0) == []
    assert [a.key for a in state.alerts(16.5)] == ["rtnf"]
    _volume(state, 0, 17.0, 0.5, framewise_displacement=0.4)
    assert state.rows[0]["high_motion"] is True  # 0.4 mm is over the run's 0.3 mm


def test_state_alerts_when_a_regulation_block_shows_no_feedback():
    state = RunState(t_start=0.0, expect_screen=False)
    _start(state, 0.0)
    for i in range(6):  # rest
        _volume(state, i, 0.5, 0.2)
    reasons = ["waiting for baseline"] * 2 + ["censored: FD 0.9 mm > 0.5 mm", "censored: DVARS z 6.1 > 5"] * 2
    for i, reason in zip(range(6, 12), reasons):  # regulation block 1 (volumes 7-12 for people): nothing shown
        _volume(state, i, 0.5, None, reason)
        if i < 11:  # the block is not over: no alarm yet
            assert state.alerts(0.5) == []
    alerts = state.alerts(0.5)
    assert [(a.key, a.level) for a in alerts] == [("no_feedback", "error")]
    assert alerts[0].text == ("No feedback shown in regulation block 1 (volumes 7–12) (censored: 4, waiting for "
                              "baseline: 2); feedback shown for 0 of 6 regulation volumes so far.")
    reg = state.regulation_feedback()
    assert reg["silent"] == [1] and reg["blocks"][0]["reasons"] == {"censored": 4, "waiting for baseline": 2}
    for i in range(12, 24):  # rest, then regulation block 2 with feedback: the alarm about block 1 stays
        _volume(state, i, 0.5, 0.6)
    assert [a.key for a in state.alerts(0.5)] == ["no_feedback"]
    assert "feedback shown for 6 of 12 regulation volumes" in state.alerts(0.5)[0].text

    # A run without feedback by design (feedback.enabled = false), or a block that shows one value: no alarm.
    for feedback, values in (({"enabled": False}, [None] * 6), ({}, [None] * 5 + [0.4])):
        state = RunState(t_start=0.0, expect_screen=False)
        _start(state, 0.0, feedback=feedback)
        for i in range(13):
            value = values[i - 6] if 6 <= i < 12 else 0.3
            _volume(state, i, 0.5, value, None if value is not None else "no feedback in this run"
                    if feedback else "waiting for baseline")
        assert state.alerts(0.5) == [], feedback

    # Intermittent feedback: block 1's score comes a hemodynamic lag (3 volumes) after the block, at index 14.
    for score in (0.7, None):
        state = RunState(t_start=0.0, expect_screen=False)
        _start(state, 0.0, feedback={"kind": "intermittent", "hemodynamic_lag_s": 3.0})
        for i in range(14):
            _volume(state, i, 0.5, None, "intermittent: between scores")
            assert state.alerts(0.5) == [], i  # the score may still come
        _volume(state, 14, 0.5, score, None if score else "intermittent: no value in the block")
        assert [a.key for a in state.alerts(0.5)] == ([] if score else ["no_feedback"])
        state.handle("rtnf", "run", {"run_id": "r", "event": "end", "t": 1.0}, 1.0)  # block 2 never started
        assert [b["number"] for b in state.regulation_feedback()["blocks"]] == [1]


def test_console_page_numbers_volumes_from_one_and_plots_motion_in_mm_and_degrees():
    """The page, built in-process (no browser): 1-based volume numbers, rotations in degrees, fixed minimum ranges."""
    pytest.importorskip("bokeh")
    from bokeh.document import Document
    from bokeh.models import BasicTickFormatter, DataRange1d, Plot, Span

    from rtnf.apps.console.app import MOTION_MIN_RANGE, ConsolePage

    state = RunState(t_start=0.0, expect_screen=False)
    _start(state, 0.0, fd_threshold_mm=1.5, export_dir="/scanner/export", output_dir="/data/out")
    page = ConsolePage(Document(), state, clock=lambda: 1.0)
    # WAITING: the watched export folder and the output folder are on the page.
    assert 'data-phase="waiting"' in page.status.text and 'data-waiting="1"' in page.status.text
    assert '<code data-folder="export">/scanner/export</code>' in page.status.text
    assert '<code data-folder="output">/data/out</code>' in page.status.text
    motion = {"trans_x": 0.01, "trans_y": -0.02, "trans_z": 0.005, "rot_x": 0.002, "rot_y": 0.0, "rot_z": -0.001}
    for i in range(8):
        _volume(state, i, 1.0, 0.5, motion=motion, framewise_displacement=0.03)
    state.handle("rtnf", "preview", {"run_id": "r", **synthetic_preview(7)}, 1.0)
    page.tick()
    # "volume N of M": N = index + 1, with the acquisition number; the block's volumes counted the same way.
    assert 'volume <b data-volume="8">8</b> of <b>30</b>' in page.status.text and "(acq 10)" in page.status.text
    assert "block 2 of 5 (volumes 7–12)" in page.status.text
    assert "<b>Volume 8 of 30</b>" in page.preview.text
    assert state.rows[0]["volume"] == 1 and state.rows[0]["rot_x_deg"] == pytest.approx(math.degrees(0.002))
    plots = {p.title.text: p for p in page.doc.select({"type": Plot}) if p.title is not None}
    trans, rots = plots["Head motion: translations (mm)"], plots["Head motion: rotations (degrees)"]
    fd = plots["Framewise displacement (threshold 1.5 mm)"]
    assert rots.yaxis[0].axis_label == "degrees"
    assert {r.glyph.y for r in rots.renderers if r.name != "extent"} == {"rot_x_deg", "rot_y_deg", "rot_z_deg"}
    for fig, (low, high) in ((trans, MOTION_MIN_RANGE["trans"]), (rots, MOTION_MIN_RANGE["rots"]),
                             (fd, (0.0, 1.15 * 1.5))):
        assert isinstance(fig.y_range, DataRange1d) and math.isnan(fig.y_range.start)  # auto: follows larger motion
        extent = [r for r in fig.renderers if r.name == "extent"]
        assert len(extent) == 1 and list(extent[0].data_source.data["y"]) == pytest.approx([low, high])
        formatter = fig.yaxis[0].formatter
        assert isinstance(formatter, BasicTickFormatter) and formatter.use_scientific is False
        assert all(r.glyph.x == "volume" for r in fig.renderers if r.name != "extent")
    assert [s.location for s in fd.center if isinstance(s, Span)] == [1.5]
    assert MOTION_MIN_RANGE == {"trans": (-1.0, 1.0), "rots": (-1.0, 1.0), "fd": (0.0, 1.0)}


def test_rtnf_run_passes_the_screen_address_and_the_configs_limits_and_keeps_the_console(tmp_path, monkeypatch):
    """`rtnf run --console`: the console gets the screen's address and the config's limits, and outlives the run."""
    import signal

    import rtnf.run.session
    from rtnf import cli
    from rtnf.apps.console import cli as console_cli
    from rtnf.run.session import RunResult

    cfg_path = make_config(tmp_path, {**SESSION_CONFIG, "quality.fd_threshold_mm": 0.7, "publish.heartbeat_s": 2.0})
    calls: list = []

    class FakeConsole:
        def poll(self):
            return None

    monkeypatch.setattr(console_cli, "spawn", lambda *a, **k: calls.append(("spawn", a, k)) or FakeConsole())
    monkeypatch.setattr(console_cli, "linger", lambda proc, url, seconds: calls.append(("linger", url, seconds)))
    monkeypatch.setattr(console_cli, "close", lambda proc, *a: calls.append(("close",)))
    monkeypatch.setattr(rtnf.run.session, "run_session", lambda *a, **k: calls.append(("run",)) or RunResult(
        "ended", "r", 24, 0, tmp_path / "x.tsv"))
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = cli.main(["run", str(cfg_path), "--create-export-dir", "--console", "--console-port", "7123",
                         "--ack-address", "tcp://10.0.0.5:6000", "--console-linger-s", "30"])
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert code == 0
    assert [c[0] for c in calls] == ["spawn", "run", "linger", "close"]  # closed only after lingering
    _, args, kwargs = calls[0]
    assert args[1] == "tcp://10.0.0.5:6000" and kwargs["port"] == 7123
    assert kwargs["fd_threshold_mm"] == 0.7 and kwargs["rtnf_timeout_s"] == 6.0
    assert calls[2][1:] == ("http://127.0.0.1:7123/", 30.0)
    # The child's command line carries them.
    cmd = console_cli.command("tcp://127.0.0.1:6000", "tcp://10.0.0.5:6000", port=7123, fd_threshold_mm=0.7,
                              rtnf_timeout_s=6.0)
    assert cmd[cmd.index("--ack-address") + 1] == "tcp://10.0.0.5:6000"
    assert cmd[cmd.index("--fd-threshold") + 1] == "0.7" and cmd[cmd.index("--rtnf-timeout") + 1] == "6.0"


def test_console_linger_waits_for_the_closing_time_or_the_child():
    from rtnf.apps.console import cli as console_cli

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        t0 = time.monotonic()
        console_cli.linger(proc, "http://127.0.0.1:1/", 0.6)
        assert 0.5 < time.monotonic() - t0 < 5 and proc.poll() is None  # still serving until closed
        console_cli.close(proc)
        assert proc.returncode == -15
    finally:
        if proc.poll() is None:
            proc.kill()
    short = subprocess.Popen([sys.executable, "-c", "pass"])
    t0 = time.monotonic()
    console_cli.linger(short, "http://127.0.0.1:1/", None)  # returns when the child is gone
    assert time.monotonic() - t0 < 10


LINGER_CONFIG = {"session.subject": "linger", "session.task": "nf", "scanner.tr_s": 1.0, "scanner.n_volumes": 16,
                 "scanner.missing_timeout_s": 1.0, "protocol.pattern": pattern(rest=8, regulate=6, repeat=1),
                 "quality.fd_threshold_mm": 0.7, "output.dir": "outputs"}


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@requires_browser()
def test_console_outlives_rtnf_run_and_shows_the_ended_run(browser, tmp_path):
    """`rtnf run --console`: folders while waiting, the config's limits, and after the run the page stays,
    ENDED, calm (no silent-screen or silent-rtnf alert), until the operator closes it (here SIGINT)."""
    import signal

    from rtnf.config import load_config
    from rtnf.apps.console.app import free_port

    address, screen_address, port = free_address(), free_address(), free_port()
    url = f"http://127.0.0.1:{port}/"
    cfg_path = make_config(tmp_path, LINGER_CONFIG)
    cfg = load_config(cfg_path, {"publish.address": address})
    write_toml(sim_spec(cfg, amplitude_pct=1.5, noise_pct=1.0, seed=5), tmp_path / "spec.toml")
    logs = tmp_path / "logs"
    logs.mkdir()
    listener = Listener([address])
    procs = Processes()
    console_pids: list[int] = []
    try:
        # A screen address where no screen listens: "screen silent" is true during the run, not after it.
        rtnf = procs.start("rtnf", [sys.executable, "-m", "rtnf", "run", str(cfg_path), "--create-export-dir", "--publish-address", address,
                                    "--console", "--console-port", str(port), "--console-screen-address",
                                    screen_address, "--console-linger-s", "120"], logs)
        wait_ready(listener, procs, no_screen=True)
        deadline = time.time() + 2 * WAIT_MS / 1000
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                assert time.time() < deadline, (logs / "rtnf.log").read_text()
                time.sleep(0.2)
        console_pids = _children(rtnf.pid)
        page = Page(browser, url)
        # WAITING: the watched export folder and the output folder; the threshold is the config's.
        page.page.wait_for_function("() => (window.rtnfConsole.status() || {}).export_dir != null", timeout=WAIT_MS)
        status = page.status()
        assert status["phase"] == "waiting" and status["fd_threshold_mm"] == 0.7
        assert (status["export_dir"], status["output_dir"]) == (str(cfg.scanner.export_dir), str(cfg.output.dir))
        assert page.page.locator('[data-folder="export"]').inner_text() == str(cfg.scanner.export_dir)
        # rtnf repeats its run message every RUN_REPEAT_S while waiting: wait for one, never race it.
        runs, deadline = [], time.time() + 15
        while not runs and time.time() < deadline:
            runs = [b for t, b in listener.poll(0.5) if t == "run"] + listener.of("run")
        run = runs[0]
        assert run["export_dir"] == str(cfg.scanner.export_dir) and run["fd_threshold_mm"] == 0.7

        procs.start("scanner_sim", [sys.executable, "-m", "scanner_sim", "synth", str(tmp_path / "spec.toml"),
                                    "--export-dir", str(cfg.scanner.export_dir), "--truth-dir", str(tmp_path / "truth"),
                                    "--speed", "4", "--mode", "reopen"], logs)
        listener.wait_for(lambda t, b: t == "run" and b.get("event") == "end", 90, "the run's end")
        n_kept = cfg.n_kept_volumes
        page.page.wait_for_function("() => window.rtnfConsole.status().phase === 'ended'", timeout=WAIT_MS)
        time.sleep(max(1.5, cfg.publish.heartbeat_s * 3 + 0.5))  # rtnf is silent now, and the screen always was
        assert rtnf.poll() is None, (logs / "rtnf.log").read_text()  # lingering: the console is still served
        # The page opened during the run is still connected and shows the end; a new page loads the whole run.
        assert page.status()["phase"] == "ended"
        later = Page(browser, url)
        later.wait_rows(n_kept, timeout_s=WAIT_MS / 1000)
        status = later.status()
        assert status["phase"] == "ended" and status["n_received"] == n_kept
        assert "ENDED" in later.page.locator(".rtnf-status").inner_text()
        assert not {"screen", "rtnf"} & set(status["alerts"]), status["alerts"]
        assert later.data()["volume"] == list(range(1, n_kept + 1))
        # Motion axes: at least +-1 mm and +-1 degree, FD up to 1 mm, whatever the (tiny) simulated motion.
        ranges = later.page.evaluate("""() => Object.fromEntries(["trans", "rots", "fd"].map((n) => {
            const r = window.rtnfConsole.model("motion_range_" + n); return [n, [r.start, r.end]]; }))""")
        assert ranges["trans"][0] <= -1 and ranges["trans"][1] >= 1 and ranges["rots"][0] <= -1 and ranges["rots"][1] >= 1
        assert ranges["fd"][0] <= 0 and ranges["fd"][1] >= 1
        later.page.screenshot(path=str(tmp_path / "console_after_the_run.png"), full_page=True)
        assert not page.errors and not later.errors, page.errors + later.errors
        assert "shows it until you close the console" in (logs / "rtnf.log").read_text()
        # The operator closes it: Ctrl-C.
        rtnf.send_signal(signal.SIGINT)
        assert rtnf.wait(20) == 0, (logs / "rtnf.log").read_text()
        with pytest.raises(OSError):
            urllib.request.urlopen(url, timeout=2).read()
    finally:
        for _ in range(2):  # a failed test: end the run, then the lingering console
            if procs.procs.get("rtnf") is not None and procs.procs["rtnf"].poll() is None:
                procs.procs["rtnf"].send_signal(signal.SIGINT)
                try:
                    procs.procs["rtnf"].wait(15)
                except subprocess.TimeoutExpired:
                    pass
        listener.close()
        procs.stop_all()
        for pid in console_pids:
            try:
                os.kill(pid, 15)
            except OSError:
                pass
