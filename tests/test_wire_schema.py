"""One typed wire contract (issue 14): the classes of rtnf.wire.topics, their JSON Schemas in docs/wire.

The shipped schemas are the generated ones; every message a real run publishes
(rtnf's and the feedback screen's) follows them, decodes into its typed
message without a dropped value and comes back byte for byte from
``to_body``; a mutated message does not follow them.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rtnf.wire.messages import TOPICS, MessageError, decode, encode
from rtnf.wire.schema import topic_schema
from rtnf.wire.topics import MESSAGE_TYPES, FeedbackMessage, VolumeMessage, decode_message

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed (pip install -e '.[dev]')")

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "wire"
RTNF_TOPICS = {"run", "volume", "feedback", "heartbeat", "log", "preview"}


def _validators() -> dict[str, "jsonschema.Draft202012Validator"]:
    out = {}
    for topic in TOPICS:
        schema = json.loads((DOCS / f"{topic}.schema.json").read_text(encoding="utf-8"))
        jsonschema.Draft202012Validator.check_schema(schema)
        out[topic] = jsonschema.Draft202012Validator(schema)
    return out


def _errors(validators, topic: str, body: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validators[topic].iter_errors(body)]


# --------------------------------------------------------------------------- the contract itself


def test_one_class_per_topic_with_its_schema_id():
    assert tuple(MESSAGE_TYPES) == TOPICS
    for topic, cls in MESSAGE_TYPES.items():
        assert cls.TOPIC == topic
        schema = topic_schema(topic)
        assert schema["$id"] == f"rtnf.{topic}/1" and schema["properties"]["schema"] == {
            "const": f"rtnf.{topic}/1", "description": schema["properties"]["schema"]["description"]}
        assert schema["required"][:2] == ["schema", "run_id"] and schema["additionalProperties"] is True
        assert set(schema["required"][2:]) == set(cls.REQUIRED)


def test_shipped_schemas_are_the_generated_ones(tmp_path):
    res = subprocess.run([sys.executable, "-m", "rtnf.wire.schema", str(tmp_path / "out")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    generated = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert generated == sorted(f"{t}.schema.json" for t in TOPICS)
    assert sorted(p.name for p in DOCS.glob("*.schema.json")) == generated
    for name in generated:
        assert (DOCS / name).read_text(encoding="utf-8") == (tmp_path / "out" / name).read_text(encoding="utf-8"), (
            f"docs/wire/{name} is out of date: run python -m rtnf.wire.schema docs/wire")
    assert (DOCS / "README.md").is_file()


# --------------------------------------------------------------------------- a real run


def _have_display() -> bool:
    if importlib.util.find_spec("psychopy") is None:
        return False
    return bool(os.environ.get("DISPLAY")) or shutil.which("xvfb-run") is not None


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A short simulated run with real processes (and the screen when a display or Xvfb is there).

    Whole-brain model on (the preview's t-map), one volume dropped (a ``log`` warning).
    Returns (messages as (topic, body) with the envelope, with_screen).
    """
    from tests.helpers import pattern, run_processes

    tmp_path = tmp_path_factory.mktemp("wire")
    with_screen = _have_display()
    config = {"session.subject": "wire", "session.task": "nf", "scanner.n_volumes": 18, "scanner.dummy_volumes": 2,
              "scanner.missing_timeout_s": 1.0, "protocol.pattern": pattern(rest=4, regulate=4, repeat=2),
              "protocol.instructions.regulate": "Raise the bar", "model.whole_brain": True, "output.dir": "outputs"}
    _, listener = run_processes(tmp_path, config, with_screen=with_screen, speed=4.0, sim_args=["--drop", "8"])
    return listener.messages, with_screen


def test_every_message_of_a_real_run_follows_its_schema(real_run):
    messages, with_screen = real_run
    validators = _validators()
    seen = {topic for topic, _ in messages}
    assert RTNF_TOPICS <= seen, seen
    if with_screen:
        assert {"displayed"} <= seen and any(b.get("source") == "stimulus" for t, b in messages if t == "heartbeat")
    events = {b["event"] for t, b in messages if t == "run"}
    assert {"start", "end"} <= events
    assert any(b["flags"]["missing"] for t, b in messages if t == "volume")  # the dropped volume
    assert any(b["planes"]["axial"].get("tmap") for t, b in messages if t == "preview")
    bad = {}
    for topic, body in messages:
        errors = _errors(validators, topic, body)
        if errors:
            bad.setdefault(topic, errors[:3])
    assert bad == {}


def test_every_message_of_a_real_run_decodes_whole_and_round_trips(real_run):
    """from_body drops nothing, and to_body gives back exactly the body that was sent (keys in order)."""
    messages, _ = real_run
    for topic, body in messages:
        msg = MESSAGE_TYPES[topic].from_body(body)
        assert msg.invalid == {}, (topic, msg.invalid)
        sent = {k: v for k, v in body.items() if k not in ("schema", "run_id")}
        again = msg.to_body()
        assert again == sent and list(again) == list(sent), topic
        frames = encode(topic, body["run_id"], again)
        assert decode_message(frames)[1] == msg


def test_a_mutated_message_fails_its_schema_and_the_decoder(real_run):
    messages, _ = real_run
    validators = _validators()
    feedback = next(b for t, b in messages if t == "feedback")
    assert _errors(validators, "feedback", feedback) == []
    wrong = {**feedback, "index": str(feedback["index"])}  # a required field of the wrong type
    assert _errors(validators, "feedback", wrong)
    with pytest.raises(MessageError, match="'index'"):
        FeedbackMessage.from_body(wrong)
    for missing in ("index", "schema", "run_id"):
        assert _errors(validators, "feedback", {k: v for k, v in feedback.items() if k != missing}), missing
    out_of_range = {**feedback, "value": 1.5}
    assert _errors(validators, "feedback", out_of_range)
    volume = copy.deepcopy(next(b for t, b in messages if t == "volume" and not b["flags"]["missing"]))
    volume["timing"]["t_detected"] = "soon"  # an optional value: refused by the schema, dropped by the decoder
    assert _errors(validators, "volume", volume)
    msg = VolumeMessage.from_body(volume)
    assert msg.timing.t_detected is None and list(msg.invalid) == ["timing.t_detected"]
    assert msg.timing.t_read == volume["timing"]["t_read"]  # the rest of the volume is kept
    heartbeat = next(b for t, b in messages if t == "heartbeat")
    assert _errors(validators, "heartbeat", {**heartbeat, "state": "sleeping"})


# --------------------------------------------------------------------------- the screen's own builders


def test_the_screens_messages_follow_their_schemas():
    """displayed, keys and heartbeat as stimulus.link builds them (no window needed)."""
    from rtnf.apps.demo import free_address
    from stimulus.link import FeedbackLink

    validators = _validators()
    sent: list[list[bytes]] = []
    with FeedbackLink(free_address(), free_address()) as link:
        link._pub.send_multipart = lambda frames, flags=0: sent.append(frames)
        link.state.handle("run", {"schema": "rtnf.run/1", "run_id": "r1", "event": "start"}, 1.0)
        link.send_heartbeat("running", last_index=3, connection_lost=False, n_malformed=0, view="bar",
                            n_triggers=2, t_last_trigger=12.0, n_responses=1,
                            last_response={"key": "1", "t_key": 12.5})
        link.send_displayed(index=3, value=0.5, condition="regulate", state="running", t_received=10.0,
                            t_displayed=10.02, kind="continuous", view="bar", bar_value=0.5, bar_shown=0.45,
                            t_settled=10.3)
        link.send_displayed(index=None, value=None, condition=None, state="waiting", t_received=None,
                            t_displayed=11.0)
        assert link.send_key(key="5", role="trigger", t_key=12.0, state="running", index=3)
    decoded = [decode(frames) for frames in sent]
    assert [t for t, _ in decoded] == ["heartbeat", "displayed", "displayed", "keys"]
    for topic, body in decoded:
        assert body["run_id"] == "r1" and body["source"] == "stimulus"
        assert _errors(validators, topic, body) == [], (topic, body)
        assert MESSAGE_TYPES[topic].from_body(body).invalid == {}
    heartbeat = decoded[0][1]
    assert heartbeat["last_response"] == {"key": "1", "t_key": 12.5} and heartbeat["pid"] == os.getpid()
    assert decoded[3][1]["key"] == "5" and decoded[3][1]["index"] == 3
