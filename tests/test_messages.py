"""Wire protocol encoding and the checks on received messages."""

from __future__ import annotations

import json

import pytest
import zmq

from rtnf.wire.messages import MAX_MESSAGE_BYTES, MessageError, decode, encode


def test_round_trip_adds_schema_and_run_id():
    frames = encode("feedback", "run-1", {"index": 3, "value": 0.25, "reason": None})
    topic, body = decode(frames)
    assert topic == "feedback"
    assert body == {"schema": "rtnf.feedback/1", "run_id": "run-1", "index": 3, "value": 0.25, "reason": None}


def test_non_finite_floats_become_null():
    _, body = decode(encode("volume", "r", {"rois": {"acc": {"psc": float("nan"), "raw": float("inf")}}}))
    assert body["rois"]["acc"] == {"psc": None, "raw": None}


def test_floats_round_trip_exactly():
    value = 0.1 + 0.2
    _, body = decode(encode("feedback", "r", {"value": value}))
    assert body["value"] == value


@pytest.mark.parametrize(
    "frames, match",
    [
        ([b"feedback"], "expected 2 frames"),
        ([b"feedback", b"{}", b"x"], "expected 2 frames"),
        ([b"nope", b"{}"], "unknown topic"),
        ([b"\xff", b"{}"], "not ASCII"),
        ([b"feedback", b"{not json"], "not UTF-8 JSON"),
        ([b"feedback", b"\xff\xfe"], "not UTF-8 JSON"),
        ([b"feedback", b"[1, 2]"], "not a JSON object"),
        ([b"feedback", json.dumps({"schema": "rtnf.volume/1"}).encode()], "schema"),
        ([b"feedback", b"{}"], "schema"),
        ([b"feedback", b" " * (MAX_MESSAGE_BYTES + 1)], "exceeds"),
        ([b"feedback", b"[" * 100000 + b"]" * 100000], "not"),
    ],
)
def test_malformed_messages_raise_message_error(frames, match):
    with pytest.raises(MessageError, match=match):
        decode(frames)


def test_unknown_topic_cannot_be_sent():
    with pytest.raises(MessageError, match="Allowed values"):
        encode("volumes", "r", {})


def test_unknown_fields_are_kept_for_receivers_to_ignore():
    _, body = decode([b"heartbeat", json.dumps({"schema": "rtnf.heartbeat/2", "run_id": "r", "new": 1}).encode()])
    assert body["new"] == 1


def test_over_real_zeromq_sockets():
    ctx = zmq.Context()
    pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub.connect(f"tcp://127.0.0.1:{port}")
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    try:
        for _ in range(100):  # PUB drops until the subscription has propagated
            pub.send_multipart(encode("heartbeat", "r", {"state": "waiting"}))
            if sub.poll(50):
                break
        topic, body = decode(sub.recv_multipart())
        assert topic == "heartbeat" and body["state"] == "waiting"
    finally:
        pub.close(0)
        sub.close(0)
        ctx.term()
