"""A publishing socket that bounds what a subscriber can make it hold.

A plain ZeroMQ PUB keeps every subscription a peer sends in a prefix trie
(one node per byte): 300 subscriptions of 1 MB each grew a screen's
acknowledgement socket to 13.4 GB. :class:`BoundedPub` is an XPUB in manual
mode instead:

- ``MAXMSGSIZE`` is a few dozen bytes, so a peer that sends a longer
  subscription frame is disconnected by libzmq before it is buffered;
- subscriptions reach the trie only through :meth:`BoundedPub.service`,
  which accepts a topic of the wire protocol or a prefix of one (the empty
  prefix included) and ignores anything else, so the trie holds at most the
  prefixes of :data:`rtnf.wire.messages.TOPICS`;
- a send high-water mark bounds what is queued for a slow subscriber.

Subscription frames are read only inside calls the owner makes (libzmq
works in the caller's thread), at most ``rcvhwm`` per peer between two calls.
Imports only pyzmq and :mod:`rtnf.wire.messages`; use from one thread only.
"""

from __future__ import annotations

import logging
from typing import Iterable

import zmq

from .messages import TOPICS

log = logging.getLogger(__name__)

MAX_SUBSCRIPTION_BYTES = 64
"""Longest subscription frame accepted (one command byte + the topic prefix)."""
CURVE_FRAME_BYTES = 2048
"""Frame bound with CURVE, whose handshake (HELLO 200 B, INITIATE with metadata) shares the check."""


def is_loopback(address: str) -> bool:
    """True for a ZeroMQ address that other machines cannot reach (loopback tcp, ipc, inproc)."""
    if not address.startswith("tcp://"):
        return address.startswith(("ipc://", "inproc://"))
    host = address[len("tcp://"):].rsplit(":", 1)[0].strip("[]").lower()
    if ";" in host:  # "source;destination": the bound side is the source
        host = host.split(";", 1)[0]
    return host in ("localhost", "::1", "lo") or host.startswith("127.")


class BoundedPub:
    """An XPUB socket that accepts only the protocol's topics as subscriptions.

    Parameters
    ----------
    context : zmq.Context
    sndhwm : int
        Messages queued per subscriber before new ones are dropped for it.
    topics : iterable of str
        The topics a subscriber may ask for (or a prefix of one).
    rcvhwm : int
        Subscription frames taken from a peer between two :meth:`service` calls.

    Notes
    -----
    Set CURVE options on :attr:`sock` before :meth:`bind`.
    """

    def __init__(self, context: zmq.Context, sndhwm: int = 1000, topics: Iterable[str] = TOPICS,
                 rcvhwm: int = 1000) -> None:
        self.topics = tuple(topics)
        self._allowed = {t.encode("ascii")[:n] for t in self.topics for n in range(len(t) + 1)}
        self.n_refused = 0
        self.sock = context.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.XPUB_MANUAL, 1)
        self.sock.setsockopt(zmq.SNDHWM, int(sndhwm))
        self.sock.setsockopt(zmq.RCVHWM, int(rcvhwm))
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_SUBSCRIPTION_BYTES)
        self.sock.setsockopt(zmq.LINGER, 0)

    @property
    def closed(self) -> bool:
        return self.sock.closed

    def __getattr__(self, name: str):
        # getsockopt, LAST_ENDPOINT, ...: the underlying socket's (sending goes through send_multipart)
        if name == "sock":
            raise AttributeError(name)
        return getattr(self.sock, name)

    def use_curve(self, server: "object") -> None:
        """Make the socket a CURVE server (``rtnf.wire.keys.CurveServer``), before :meth:`bind`.

        CURVE's handshake commands (a few hundred bytes) pass through the same
        size check as subscriptions, so the bound is raised to
        :data:`CURVE_FRAME_BYTES`; the trie stays bounded by the topic filter.
        """
        server.apply(self.sock)  # type: ignore[attr-defined]
        self.sock.setsockopt(zmq.MAXMSGSIZE, CURVE_FRAME_BYTES)

    def bind(self, address: str) -> None:
        self.sock.bind(address)

    def service(self, max_frames: int = 10000) -> int:
        """Apply the subscription frames waiting on the socket; returns how many were read."""
        n = 0
        for n in range(1, max_frames + 1):
            try:
                frame = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return n - 1
            if not frame or frame[0] not in (0, 1):
                self.n_refused += 1  # not a subscription: XPUB peers send nothing else
                continue
            topic = frame[1:]
            if topic not in self._allowed:
                self.n_refused += 1
                if self.n_refused in (1, 10, 100, 1000) or self.n_refused % 10000 == 0:
                    log.warning("ignored %d subscription(s) to topics rtnf does not publish (latest %r)",
                                self.n_refused, topic[:20])
                continue
            self.sock.setsockopt(zmq.SUBSCRIBE if frame[0] == 1 else zmq.UNSUBSCRIBE, topic)
        return n

    def send_multipart(self, frames: list[bytes], flags: int = 0) -> None:
        """Apply waiting subscriptions, then send (``zmq.Again`` at the high-water mark with NOBLOCK)."""
        self.service()
        self.sock.send_multipart(frames, flags=flags)

    def close(self, linger: int | None = None) -> None:
        if not self.sock.closed:
            self.sock.close(linger=linger)
