"""Issue 15: hostile input on the wire — subscription floods, unbounded fields.

A raw ZMTP client (no libzmq on the hostile side, so the test process keeps no
copy of what it sends) floods real publisher processes: rtnf's publisher and
the feedback screen's acknowledgement socket.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import textwrap
import time

import pytest
import zmq

from rtnf.wire.messages import decode
from tests.helpers import ROOT, make_config


def _free_address() -> str:
    from rtnf.apps.demo import free_address

    return free_address()


# --------------------------------------------------------------------------- a raw ZMTP 3.0 SUB peer


def _frame(body: bytes, command: bool = False) -> bytes:
    flags = 0x04 if command else 0x00
    if len(body) > 255:
        return bytes([flags | 0x02]) + struct.pack(">Q", len(body)) + body
    return bytes([flags, len(body)]) + body


def _raw_sub(address: str, timeout_s: float = 5.0) -> socket.socket:
    """Connect and do the ZMTP 3.0 NULL handshake as a SUB socket."""
    host, port = address[len("tcp://"):].rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=timeout_s)
    greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
    s.sendall(greeting)
    got = b""
    while len(got) < 64:
        chunk = s.recv(64 - len(got))
        if not chunk:
            raise ConnectionError("closed during greeting")
        got += chunk
    ready = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 3) + b"SUB"
    s.sendall(_frame(ready, command=True))
    return s


def _flood(address: str, n: int = 300, size: int = 1 << 20) -> int:
    """Send ``n`` subscriptions of ``size`` bytes (one connection each, as the publisher drops them)."""
    sent = 0
    payload = b"\x01" + os.urandom(size - 1)
    for _ in range(n):
        try:
            s = _raw_sub(address)
            s.sendall(_frame(payload))
            sent += 1
        except OSError:
            pass  # the publisher hung up on us: that is the point
        finally:
            try:
                s.close()
            except Exception:
                pass
    return sent


def _many_small(address: str, n: int = 20000) -> None:
    """One connection, many short distinct subscriptions (each would be a trie branch on a plain PUB)."""
    s = _raw_sub(address)
    try:
        s.sendall(b"".join(_frame(b"\x01" + os.urandom(40)) for _ in range(n)))
    except OSError:
        pass
    finally:
        s.close()


def _rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


PUBLISHERS = {
    "rtnf": """
        from rtnf.run.publish import Publisher
        pub = Publisher(ADDRESS, "run-h")
        beat = lambda: pub.heartbeat("waiting", None, 10)
    """,
    "screen": """
        from stimulus.link import FeedbackLink
        from rtnf.apps.demo import free_address
        link = FeedbackLink(free_address(), ADDRESS)
        beat = lambda: (link.send_heartbeat("waiting"), link.poll(0))
    """,
}


@pytest.mark.parametrize("which", sorted(PUBLISHERS))
def test_subscription_flood_keeps_publisher_memory_bounded(which):
    address = _free_address()
    code = f"ADDRESS = {address!r}\n" + textwrap.dedent(PUBLISHERS[which]) + textwrap.dedent("""
        import sys, time
        print("ready", flush=True)
        end = time.time() + 120
        while time.time() < end:
            beat()
            time.sleep(0.02)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"heartbeat")
    try:
        assert proc.stdout.readline().strip() == "ready"
        sub.connect(address)
        assert sub.poll(10000), "no heartbeat before the flood"
        sub.recv_multipart()
        time.sleep(0.3)
        before = _rss_kb(proc.pid)
        assert _flood(address, 300, 1 << 20) > 0
        _many_small(address)
        time.sleep(1.0)
        after = _rss_kb(proc.pid)
        assert proc.poll() is None, "the publisher died"
        # a plain PUB grows by tens of MB per 1 MB subscription (13.4 GB for 300)
        assert after - before < 100_000, f"RSS grew from {before} kB to {after} kB"
        # it keeps publishing, to the honest subscriber already connected and to a new one
        while sub.poll(0):
            sub.recv_multipart()
        assert sub.poll(5000), "the publisher stopped publishing after the flood"
        topic, body = decode(sub.recv_multipart())
        assert topic == "heartbeat"
        late = ctx.socket(zmq.SUB)
        late.setsockopt(zmq.LINGER, 0)
        late.setsockopt(zmq.SUBSCRIBE, b"")
        late.connect(address)
        try:
            assert late.poll(5000), "a new subscriber gets nothing after the flood"
            assert decode(late.recv_multipart())[0] == "heartbeat"
        finally:
            late.close(0)
    finally:
        proc.kill()
        proc.wait(10)
        sub.close(0)
        ctx.term()


def test_bounded_pub_takes_only_protocol_topics():
    from rtnf.wire.pubsocket import BoundedPub

    ctx = zmq.Context()
    pub = BoundedPub(ctx)
    address = _free_address()
    pub.bind(address)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    for topic in (b"feedback", b"nonsense", b"fee"):
        sub.setsockopt(zmq.SUBSCRIBE, topic)
    sub.connect(address)
    try:
        deadline = time.time() + 5
        while time.time() < deadline and pub.n_refused < 1:
            pub.service()
            time.sleep(0.01)
        assert pub.n_refused == 1  # "nonsense"; "fee" is a prefix of "feedback"
        pub.send_multipart([b"feedback", b"{}"])
        assert sub.poll(2000)
        assert sub.recv_multipart()[0] == b"feedback"
    finally:
        sub.close(0)
        pub.close(0)
        ctx.term()


# --------------------------------------------------------------------------- 14: exposure and output folder


def _rtnf(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rtnf", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


@pytest.mark.parametrize("out_dir", ["export", "export/derivatives/rtnf", "export/."])
def test_output_dir_inside_the_export_folder_is_refused(tmp_path, out_dir):
    from rtnf.config import ConfigError, load_config

    path = make_config(tmp_path, {"output.dir": out_dir})
    with pytest.raises(ConfigError, match="output.dir.*export_dir"):
        load_config(path)
    res = _rtnf("check", str(path))
    assert res.returncode == 2 and "output.dir" in res.stderr, res.stderr
    # beside the export folder is fine, and so is a sibling whose name starts the same
    ok = make_config(tmp_path, {"output.dir": "export-out"}, name="ok.toml")
    load_config(ok)


def test_check_warns_when_publishing_beyond_loopback_without_curve(tmp_path):
    exposed = make_config(tmp_path, {"publish.address": "tcp://192.0.2.10:5555"})
    res = _rtnf("check", str(exposed))
    assert res.returncode == 0, res.stderr
    assert "warning" in res.stderr and "192.0.2.10" in res.stderr and "unencrypted" in res.stderr, res.stderr
    local = make_config(tmp_path, {"publish.address": "tcp://127.0.0.1:5555"}, name="local.toml")
    res = _rtnf("check", str(local))
    assert res.returncode == 0 and "unencrypted" not in res.stderr, res.stderr


def test_run_warns_at_start_when_binding_beyond_loopback_without_curve(tmp_path):
    import signal

    (tmp_path / "export").mkdir()
    path = make_config(tmp_path)
    port = _free_address().rsplit(":", 1)[1]
    proc = subprocess.Popen([sys.executable, "-m", "rtnf", "run", str(path), "--create-export-dir", "--address", f"tcp://0.0.0.0:{port}"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.time() + 60
        seen = ""
        while time.time() < deadline and "unencrypted" not in seen:
            line = proc.stderr.readline()
            if not line:
                break
            seen += line
        assert "unencrypted" in seen and "0.0.0.0" in seen, seen
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def test_screen_acknowledgements_with_curve_reach_only_authorized_clients(tmp_path):
    from rtnf.wire.keys import generate_keys
    from rtnf.wire.subscription import Subscription
    from stimulus.link import FeedbackLink

    keys = tmp_path / "screen-keys"
    generate_keys(keys, ("operator",))
    ack = _free_address()
    link = FeedbackLink(_free_address(), ack, ack_curve_keys=str(keys))
    ctx = zmq.Context()
    good = Subscription(ctx, ack, ("heartbeat",), "screen", curve=(str(keys), "operator"))
    plain = Subscription(ctx, ack, ("heartbeat",), "screen")
    try:
        got_good, got_plain = [], []
        deadline = time.time() + 10
        while time.time() < deadline and not got_good:
            link.send_heartbeat("waiting")
            time.sleep(0.05)
            got_good += good.receive()
            got_plain += plain.receive()
        assert got_good and got_good[0].topic == "heartbeat"
        for _ in range(10):
            link.send_heartbeat("waiting")
            time.sleep(0.03)
            got_plain += plain.receive()
        assert got_plain == []
    finally:
        good.close()
        plain.close()
        ctx.term()
        link.close()


# --------------------------------------------------------------------------- 13: every field bounded


@pytest.mark.parametrize("data, match", [
    (b'{"schema":"rtnf.feedback/1","index":' + b"9" * 400 + b"}", "integer of 400 digits"),
    (b'{"schema":"rtnf.feedback/1","index":-' + b"9" * 30 + b"}", "integer of 30 digits"),
    (b'{"schema":"rtnf.feedback/1","value":NaN}', "finite"),
    (b'{"schema":"rtnf.feedback/1","value":Infinity}', "finite"),
    (b'{"schema":"rtnf.feedback/1","value":1e400}', "finite"),
    (b'{"schema":"rtnf.feedback/1","x":' + b"[" * 5000 + b"]" * 5000 + b"}", "nests deeper"),
    (b'{"schema":"rtnf.feedback/1","x":' + b'[{"a":' * 40 + b"1" + b"}]" * 40 + b"}", "nests deeper"),
])
def test_decoder_refuses_unbounded_numbers_and_nesting(data, match):
    from rtnf.wire.messages import MessageError

    with pytest.raises(MessageError, match=match):
        decode([b"feedback", data])


def test_decoder_keeps_real_numbers_and_text():
    from rtnf.wire.messages import encode

    body = {"index": 10**18 - 1, "v": 0.00013391237170920338, "w": -2.5e-300, "big": 1.7e308,
            "s": "[" * 100 + "1" * 40}
    assert {k: v for k, v in decode(encode("feedback", "r", body))[1].items() if k in body} == body


def _feedback(index, **extra) -> list[bytes]:
    import json

    body = {"schema": "rtnf.feedback/1", "run_id": "r1", "index": index, "condition": "regulate", "value": 0.5,
            "kind": "continuous", **extra}
    return [b"feedback", json.dumps(body).encode()]


def test_screen_refuses_hostile_fields_and_keeps_working():
    from stimulus.link import FeedbackLink

    address = _free_address()
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(address)
    link = FeedbackLink(address, _free_address())
    hostile = [
        _feedback(3, kind="intermittent", reward="x" * 900_000),  # froze the screen for 16.8 s
        [b"feedback", b'{"schema":"rtnf.feedback/1","run_id":"r1","index":' + b"9" * 400 + b"}"],
        _feedback(10**12),  # within the decoder's digits, beyond any run
        [b"feedback", b'{"schema":"rtnf.feedback/1","run_id":"r1","index":4,"value":NaN}'],
        _feedback(4, condition="c" * 10_000),
        _feedback(4, display_s=1e300, kind="intermittent"),
        [b"feedback", b'{"schema":"rtnf.feedback/1","run_id":"r1","index":4,"x":' + b"[" * 3000 + b"]" * 3000 + b"}"],
        [b"run", ('{"schema":"rtnf.run/1","run_id":"r1","event":"start","conditions":["rest"],'
                  '"instructions":{"rest":"' + "y" * 100_000 + '"}}').encode()],
    ]
    try:
        deadline = time.time() + 10
        while time.time() < deadline and link.state.feedback is None:  # the slow joiner
            pub.send_multipart(_feedback(0))
            link.receive(50)
        assert link.state.feedback is not None and link.state.feedback.index == 0
        before = link.n_malformed
        for frames in hostile:
            pub.send_multipart(frames)
        pub.send_multipart(_feedback(5, value=0.25))
        t0 = time.perf_counter()
        deadline = time.time() + 10
        while time.time() < deadline and link.state.feedback.index != 5:
            link.receive(50)
        assert time.perf_counter() - t0 < 2.0
        assert link.state.feedback.index == 5 and link.state.bar_value == 0.25  # the rest of the run is shown
        assert link.n_malformed - before == len(hostile)
        assert link.state.score is None  # the 900 kB reward never reached the screen
    finally:
        link.close()
        pub.close(0)
        ctx.term()


@pytest.mark.parametrize("key, value", [
    ("display.score.reward_text", "x" * 900_000),
    ("display.score.scale", 1e300),
    ("display.bar.null_text", "y" * 300),
    ("protocol.instructions.regulate", "z" * 300),
])
def test_check_refuses_unbounded_display_and_protocol_texts(tmp_path, key, value):
    res = _rtnf("check", str(make_config(tmp_path, {key: value})))
    assert res.returncode == 2, res.stderr[-500:]
    assert key in res.stderr and len(res.stderr) < 5000, res.stderr[:500]


def test_every_publisher_is_a_bounded_xpub():
    """rtnf's publisher and the screen's acknowledgement socket go through rtnf.wire.pubsocket.BoundedPub."""
    import re

    plain = re.compile(r"socket\(\s*zmq\.(X?PUB)\b")
    hits = [str(p.relative_to(ROOT)) for pkg in ("rtnf", "stimulus", "scanner_sim") for p in (ROOT / pkg).rglob("*.py")
            if p.name != "pubsocket.py" and plain.search(p.read_text())]
    assert not hits, hits
    for path in ("rtnf/run/publish.py", "stimulus/link.py"):
        assert "BoundedPub(" in (ROOT / path).read_text(), path
