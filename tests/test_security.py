"""Security (issue 8, item 7): loopback by default, bounded messages, no pickle, nothing read outside
the export folder (symlinks included), optional ZeroMQ CURVE."""

from __future__ import annotations

import inspect
import logging
import queue
import re
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import zmq

from rtnf.wire import messages
from rtnf.config import load_config
from rtnf.wire.messages import MAX_MESSAGE_BYTES, MessageError, decode, encode
from tests.helpers import CONFIG_DIR, ROOT, make_config, wait_until

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
PACKAGES = ("rtnf", "stimulus", "scanner_sim")


def _host(address: str) -> str:
    """Host of a ZeroMQ tcp:// address (ipc:// and inproc:// never leave the machine)."""
    if not address.startswith("tcp://"):
        assert address.startswith(("ipc://", "inproc://")), address
        return "127.0.0.1"
    return urlparse("zmq://" + address[len("tcp://"):]).hostname or "*"


def _free_address() -> str:
    from rtnf.apps.demo import free_address

    return free_address()


# --------------------------------------------------------------------------- loopback by default


def test_default_addresses_are_loopback(tmp_path):
    assert _host(messages.DEFAULT_ADDRESS) in LOOPBACK
    assert _host(messages.DEFAULT_SCREEN_ADDRESS) in LOOPBACK
    # a session config that says nothing about publishing binds rtnf's PUB to loopback
    cfg = load_config(make_config(tmp_path))
    assert _host(cfg.publish.address) in LOOPBACK, cfg.publish.address


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.toml")), ids=lambda p: p.name)
def test_example_configs_publish_on_loopback(path):
    assert _host(load_config(path).publish.address) in LOOPBACK


def test_screen_and_console_defaults_are_loopback():
    from rtnf.apps.console import app as console_app
    from rtnf.apps.console import cli as console_cli
    from stimulus import cli as stimulus_cli
    from stimulus.link import FeedbackLink

    parser = stimulus_cli.build_parser()
    assert _host(parser.get_default("address")) in LOOPBACK
    assert _host(parser.get_default("ack_address")) in LOOPBACK  # the screen's own PUB binds here
    link = inspect.signature(FeedbackLink.__init__).parameters
    assert _host(link["address"].default) in LOOPBACK and _host(link["ack_address"].default) in LOOPBACK

    import argparse

    p = argparse.ArgumentParser()
    console_cli.add_arguments(p)
    assert p.get_default("host") in LOOPBACK  # the console's web server
    assert _host(p.get_default("address")) in LOOPBACK and _host(p.get_default("screen_address")) in LOOPBACK
    assert inspect.signature(console_app.serve).parameters["host"].default in LOOPBACK
    assert inspect.signature(console_cli.command).parameters["host"].default in LOOPBACK


def test_no_wildcard_bind_in_the_sources():
    """No source binds every interface by itself: only a configured address can do that."""
    wildcard = re.compile(r"""tcp://(\*|0\.0\.0\.0)|host\s*[:=]\s*(str\s*=\s*)?["'](0\.0\.0\.0|::)["']""")
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if wildcard.search(line)]
    assert not hits, hits


def test_publisher_binds_where_configured_and_only_there():
    from rtnf.run.publish import Publisher

    address = _free_address()
    pub = Publisher(address, "run")
    try:
        endpoint = pub._sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        assert _host(endpoint) in LOOPBACK, endpoint
    finally:
        pub.close()


# --------------------------------------------------------------------------- bounded message size


def test_encoder_and_decoder_refuse_oversized_messages():
    with pytest.raises(MessageError, match="MAX_MESSAGE_BYTES"):
        encode("log", "run", {"message": "x" * MAX_MESSAGE_BYTES})
    with pytest.raises(MessageError, match="exceeds"):
        decode([b"log", b"{" + b" " * MAX_MESSAGE_BYTES + b"}"])


def _oversized_then_valid(pub: zmq.Socket, receive, timeout_s: float = 15.0) -> list:
    """Send an oversized message, then valid heartbeats until ``receive()`` returns some."""
    pub.send_multipart([b"heartbeat", b'{"schema":"rtnf.heartbeat/1","pad":"' + b"x" * (MAX_MESSAGE_BYTES + 100) + b'"}'])
    deadline = time.time() + timeout_s
    got: list = []
    while time.time() < deadline and not got:
        pub.send_multipart(encode("heartbeat", "", {"source": "rtnf", "state": "waiting", "last_index": None,
                                                    "n_volumes": 10, "t": time.time()}))
        got = receive()
    return got


@pytest.fixture
def raw_pub():
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    address = _free_address()
    sock.bind(address)
    yield sock, address
    sock.close(0)
    ctx.term()


def test_feedback_screen_link_survives_an_oversized_message(raw_pub):
    """MAXMSGSIZE makes libzmq drop the connection on an oversized message; the screen reconnects."""
    from stimulus.link import FeedbackLink

    pub, address = raw_pub
    link = FeedbackLink(address, _free_address())
    try:
        assert link._sub.sub.getsockopt(zmq.MAXMSGSIZE) == MAX_MESSAGE_BYTES
        # connected first: a heartbeat gets through
        assert _oversized_then_valid(pub, lambda: link.poll(100))
        got = _oversized_then_valid(pub, lambda: [m for m in link.poll(100) if m.topic == "heartbeat"])
        assert got, "the screen received nothing after an oversized message"
        assert all(len(str(m.body)) < MAX_MESSAGE_BYTES for m in got)
    finally:
        link.close()


def test_console_subscriber_survives_an_oversized_message(raw_pub):
    from rtnf.apps.console.link import Subscriber

    pub, address = raw_pub
    out: queue.Queue = queue.Queue()
    sub = Subscriber(address, None, out, poll_ms=20)
    sub.start()
    try:
        assert sub.ready.wait(5)

        def receive():
            time.sleep(0.1)
            items = []
            while not out.empty():
                items.append(out.get_nowait())
            return items

        assert _oversized_then_valid(pub, receive)
        assert _oversized_then_valid(pub, receive), "the console received nothing after an oversized message"
        assert sub.error is None
    finally:
        sub.stop()


# --------------------------------------------------------------------------- no pickle


def test_no_pickle_or_eval_anywhere():
    """Nothing on the wire (or anywhere) is pickled, marshalled or evaluated."""
    banned = re.compile(
        r"\bimport\s+(c?pickle|marshal|dill|cloudpickle|shelve)\b|\bfrom\s+(c?pickle|marshal|dill|cloudpickle|shelve)\b"
        r"|\bpickle\.|\bmarshal\.|\b(send|recv)_(pyobj|serialized)\b|(?<![\w.])eval\(|(?<![\w.])exec\("
        r"|allow_pickle\s*=\s*True|yaml\.load\(|\.loads?\((?!.*allow_pickle\s*=\s*False).*(?:pickle|marshal)"
    )
    hits = []
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            for i, line in enumerate(p.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if banned.search(code):
                    hits.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not hits, hits


def test_every_socket_receive_goes_through_the_json_decoder():
    """Every place that reads a ZeroMQ message decodes it as JSON (rtnf.wire.messages.decode), never anything else."""
    receive = re.compile(r"\.recv(_multipart|_json|_string)?\(")
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            text = p.read_text()
            for m in receive.finditer(text):
                assert m.group(1) in ("_multipart", None), f"{p.relative_to(ROOT)} uses recv{m.group(1)}"
            if ".recv_multipart(" in text and "monitor" not in text:
                assert "decode(" in text or "json.loads(" in text, f"{p.relative_to(ROOT)} receives messages, not as JSON"


# --------------------------------------------------------------------------- nothing read outside the export folder


def _nifti_bytes() -> bytes:
    from scanner_sim.writer import to_nifti_bytes

    return to_nifti_bytes(np.full((4, 4, 3), 100.0), np.eye(4), 2.0, 1.7e9)


def _watch(folder: Path, seconds: float = 0.8):
    from rtnf.scanner.watcher import VolumeWatcher

    checked: list[Path] = []
    handed: list[Path] = []

    def check(path: Path):
        checked.append(path)
        from rtnf.scanner.nifti import is_complete

        return is_complete(path) or None

    watcher = VolumeWatcher(folder, lambda p: p.name.endswith(".nii"), check, lambda p, t, probe: handed.append(p),
                            mode="polling", poll_interval_s=0.05, stale_after_s=0.5)
    return watcher, checked, handed


def test_symlink_out_of_the_export_folder_is_never_read(tmp_path, caplog):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret_0001.nii"
    secret.write_bytes(_nifti_bytes())
    export = tmp_path / "export"
    export.mkdir()
    (export / "vol_0001.nii").symlink_to(secret)  # there before the run starts
    (export / "vol_0002.nii").write_bytes(_nifti_bytes())
    (export / "vol_0003.nii").symlink_to(export / "vol_0002.nii")  # a link inside the folder is fine
    (export / "vol_0004.nii").symlink_to(tmp_path / "export" / ".." / "outside" / "secret_0001.nii")
    (export / "loop_0005.nii").symlink_to(export / "loop_0005.nii")
    watcher, checked, handed = _watch(export)
    with caplog.at_level(logging.WARNING, logger="rtnf.scanner.watcher"):
        watcher.start()
        try:
            (export / "vol_0006.nii").symlink_to(secret)  # appears during the run
            # until the watcher has refused it (a fixed second was 20 polls, unless the machine is loaded)
            wait_until(lambda: any(r.getMessage().startswith("vol_0006.nii") for r in caplog.records), 30)
        finally:
            watcher.stop()
    names = {p.name for p in handed}
    assert names == {"vol_0002.nii", "vol_0003.nii"}, names
    refused = {"vol_0001.nii", "vol_0004.nii", "vol_0006.nii", "loop_0005.nii"}
    assert not refused & {p.name for p in checked}, "a file outside the export folder was opened"
    warnings = [r.getMessage() for r in caplog.records if "outside the export folder" in r.getMessage()]
    assert sorted(w.split()[0] for w in warnings) == sorted(refused), warnings  # one line per refused file


def test_par_with_rec_symlinked_outside_is_refused(tmp_path, caplog):
    from rtnf.scanner.export import ExportReader

    cfg = load_config(make_config(tmp_path))
    reader = ExportReader(cfg.scanner, t_start=time.time())
    (tmp_path / "elsewhere").mkdir()
    outside = tmp_path / "elsewhere" / "Dump-0000.rec"
    outside.write_bytes(b"\x00" * 1000)
    par = tmp_path / "Dump-0000.par"
    par.write_text("# not read\n")
    par.with_suffix(".rec").symlink_to(outside)
    with caplog.at_level(logging.WARNING, logger="rtnf.scanner.export"):
        assert reader.check(par) is None
        assert reader.check(par) is None
    assert len([r for r in caplog.records if "resolves outside" in r.getMessage()]) == 1


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "dicom-zoo" / "philips_parrec").is_dir(),
                    reason="real PAR/REC dump not found in ../shared/data")
def test_par_with_rec_beside_still_reads(tmp_path):
    from rtnf.scanner.export import ExportReader

    src = ROOT.parent / "shared" / "data" / "dicom-zoo" / "philips_parrec"
    for name in ("Dump-0000.par", "Dump-0000.rec"):
        (tmp_path / name).symlink_to(src / name)  # both halves resolve into the same folder
    cfg = load_config(make_config(tmp_path))
    probe = ExportReader(cfg.scanner, t_start=time.time()).check(tmp_path / "Dump-0000.par")
    assert probe is not None and probe.format == "parrec"


# --------------------------------------------------------------------------- optional CURVE


curve = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE (libsodium)")


@curve
def test_curve_pub_sub_only_authorized_clients_receive(tmp_path):
    from rtnf.wire.keys import CurveServer, generate_keys, secure_client

    keys = generate_keys(tmp_path / "keys", ["screen"])
    other = generate_keys(tmp_path / "other", ["screen"])  # a client the server does not know
    assert (keys.server_secret.stat().st_mode & 0o077) == 0
    ctx = zmq.Context()
    server = CurveServer(ctx, keys.folder)
    pub = ctx.socket(zmq.PUB)
    server.apply(pub)
    address = _free_address()
    pub.bind(address)
    subs = {}
    for name in ("authorized", "plain", "unknown_key"):
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        if name == "authorized":
            secure_client(sub, keys.folder, "screen")
        elif name == "unknown_key":
            sub.curve_serverkey = server.public  # knows the server but is not authorized
            sub.curve_secretkey = zmq.auth.load_certificate(str(other.client_secret("screen")))[1]
            sub.curve_publickey = zmq.auth.load_certificate(str(other.client_secret("screen")))[0]
        sub.connect(address)
        subs[name] = sub
    received = {name: [] for name in subs}
    try:
        deadline = time.time() + 3.0
        while time.time() < deadline:
            pub.send_multipart(encode("heartbeat", "r", {"source": "rtnf", "state": "waiting"}))
            for name, sub in subs.items():
                while sub.poll(0):
                    received[name].append(decode(sub.recv_multipart()))
            if received["authorized"] and time.time() > deadline - 2.0:
                break
            time.sleep(0.05)
        assert received["authorized"], "the authorized CURVE client received nothing"
        assert received["authorized"][0][0] == "heartbeat"
        assert not received["plain"], "an unauthenticated subscriber received messages"
        assert not received["unknown_key"], "a subscriber with an unknown key received messages"
    finally:
        for sock in (pub, *subs.values()):
            sock.close(0)
        server.stop()
        ctx.term()


@curve
def test_keys_command(tmp_path, capsys):
    from rtnf.wire.keys import main

    assert main([str(tmp_path / "k"), "--client", "screen"]) == 0
    assert (tmp_path / "k" / "rtnf.key_secret").is_file() and (tmp_path / "k" / "authorized" / "screen.key").is_file()
    assert main([str(tmp_path / "k")]) == 1  # refuses to replace keys that clients may hold
    assert "exists" in capsys.readouterr().err


def test_curve_publisher_and_screen_link(tmp_path):
    """rtnf's Publisher with publish.curve_keys, the screen's link with its key: received; without: nothing."""
    import time

    from rtnf.apps.demo import free_address
    from rtnf.wire.keys import generate_keys
    from rtnf.run.publish import Publisher
    from stimulus.link import FeedbackLink

    keys = tmp_path / "keys"
    generate_keys(keys, ("screen",))
    address = free_address()
    pub = Publisher(address, "run-x", curve_keys=keys)
    good = FeedbackLink(address, free_address(), curve_keys=str(keys), curve_client="screen")
    plain = FeedbackLink(address, free_address())
    try:
        got_good, got_plain = [], []
        deadline = time.time() + 10
        while time.time() < deadline and not got_good:
            pub.heartbeat("waiting", None, 10)
            got_good += good.poll(100)
            got_plain += plain.poll(0)
        assert got_good and got_good[0].topic == "heartbeat"
        for _ in range(10):
            pub.heartbeat("waiting", None, 10)
            got_plain += plain.poll(50)
        assert got_plain == []
    finally:
        good.close()
        plain.close()
        pub.close()


def test_every_client_subscribes_through_the_one_size_bounded_subscription():
    """The screen, the console, the LSL bridge and the demo listener share rtnf.wire.subscription."""
    root = Path(__file__).resolve().parent.parent
    for path in ("stimulus/link.py", "rtnf/apps/console/link.py", "rtnf/apps/lsl.py", "rtnf/apps/demo.py"):
        text = (root / path).read_text()
        assert "Subscription(" in text and "zmq.SUB" not in text, path
