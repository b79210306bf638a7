"""ZeroMQ publisher of the wire protocol (see :mod:`rtnf.wire.messages`).

The socket is created, used and closed by one thread: the pipeline's.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import zmq

from rtnf.wire.messages import encode
from rtnf.wire.pubsocket import BoundedPub

log = logging.getLogger(__name__)


class Publisher:
    """PUB socket bound at ``address`` that sends ``[topic, json]`` messages.

    Parameters
    ----------
    address : str
        ZeroMQ address to bind, loopback by default (``tcp://127.0.0.1:5555``).
    run_id : str
        Added to every message.
    hwm : int
        Messages queued per subscriber before ZeroMQ drops new ones for
        that subscriber: a stuck client never slows the pipeline.
    curve_keys : Path, optional
        A folder made by ``rtnf keys``: encrypt and authenticate with
        ZeroMQ CURVE (for a screen or console on another machine).
    """

    def __init__(self, address: str, run_id: str, hwm: int = 1000, curve_keys: Path | None = None) -> None:
        self.address = address
        self.run_id = run_id
        self._ctx = zmq.Context()
        # An XPUB that takes only the protocol's topics as subscriptions, disconnects a peer that
        # sends a long one, and queues at most ``hwm`` messages per subscriber (issue 15).
        self._pub = BoundedPub(self._ctx, sndhwm=hwm)
        self._sock = self._pub.sock
        self._curve = None
        if curve_keys is not None:
            from rtnf.wire.keys import CurveServer

            # Only subscribers whose public keys are in <curve_keys>/authorized receive anything.
            self._curve = CurveServer(self._ctx, curve_keys)
            self._pub.use_curve(self._curve)
        self._sock.setsockopt(zmq.LINGER, 2000)  # let the final messages leave at close
        try:
            self._sock.bind(address)
        except zmq.ZMQError as exc:
            self._sock.close(linger=0)
            self._ctx.term()
            raise OSError(
                f"cannot bind the publisher to publish.address = {address!r}: {exc}. "
                "Is another rtnf run using it? Choose a free port."
            ) from None

    def send(self, topic: str, body: dict[str, Any]) -> None:
        """Encode and send one message (never blocks)."""
        try:
            self._pub.send_multipart(encode(topic, self.run_id, body), flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # every subscriber is at its high-water mark (an XPUB says so; a PUB dropped silently)

    def heartbeat(self, state: str, last_index: int | None, n_volumes: int) -> None:
        """Send a heartbeat with the run state and the last processed index."""
        self.send(
            "heartbeat",
            {"source": "rtnf", "state": state, "last_index": last_index, "n_volumes": n_volumes, "t": time.time()},
        )

    def close(self) -> None:
        """Flush (up to the linger time) and close."""
        self._sock.close()
        if self._curve is not None:
            self._curve.stop()
        self._ctx.term()
