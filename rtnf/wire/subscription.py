"""A ZeroMQ subscription to rtnf's stream that stays alive, for every client.

The feedback screen, the console, the LSL bridge and the demo all subscribe
the same way: a SUB socket with a bounded message size, decoding with
:func:`rtnf.wire.messages.decode`, malformed messages logged and skipped. libzmq
drops a connection that sent an oversized message and never reconnects it
(a protocol error), so a monitor watches for disconnections and reconnects.
Imports only pyzmq and :mod:`rtnf.wire.messages`.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable, NamedTuple

import zmq

from .messages import MAX_MESSAGE_BYTES, MessageError, decode

log = logging.getLogger(__name__)


class Received(NamedTuple):
    """One valid message and when it was taken from the socket (UNIX s)."""

    topic: str
    body: dict[str, Any]
    t_received: float


class Subscription:
    """A SUB socket connected to ``address`` for ``topics``, reconnecting after a dropped link.

    Parameters
    ----------
    context : zmq.Context
    address : str
        The publisher's address.
    topics : iterable of str
        Topics to receive (others are filtered out even if a prefix matches).
    name : str
        Who is at the other end, for log lines.
    rcvhwm : int
        Messages queued before ZeroMQ drops new ones.
    curve : (folder, client name), optional
        CURVE keys made by ``rtnf keys``.

    Notes
    -----
    Register :attr:`sockets` with a ``zmq.Poller``; after each poll, pass the
    ready sockets to :meth:`receive`. Use from one thread only.
    """

    def __init__(
        self,
        context: zmq.Context,
        address: str,
        topics: Iterable[str],
        name: str = "rtnf",
        rcvhwm: int = 10000,
        curve: tuple[str, str] | None = None,
    ) -> None:
        self.address = address
        self.topics = tuple(topics)
        self.name = name
        self.n_malformed = 0
        self.sub = context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self.sub.setsockopt(zmq.RCVHWM, int(rcvhwm))
        for topic in self.topics:
            self.sub.setsockopt(zmq.SUBSCRIBE, topic.encode("ascii"))
        if curve is not None:
            from .keys import secure_client

            secure_client(self.sub, *curve)
        self.monitor = self.sub.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.sub.connect(address)

    @property
    def sockets(self) -> tuple[zmq.Socket, zmq.Socket]:
        """The sockets to register with a poller."""
        return self.sub, self.monitor

    def receive(self, ready: dict[Any, Any] | None = None, max_batch: int = 1000) -> list[Received]:
        """Valid messages waiting on the socket; reconnects if the monitor reported a dropped link.

        ``ready`` is the poller's result (None: drain without asking).
        """
        dropped = ready is not None and self.monitor in ready
        out = self._drain(max_batch) if ready is None or self.sub in ready or dropped else []
        if dropped:
            # Take what arrived before the link dropped (a run's end message, typically)
            # before the endpoint is torn down and connected again.
            out += self._drain(max_batch)
            self._reconnect()
        return out

    def _drain(self, max_batch: int) -> list[Received]:
        out: list[Received] = []
        for _ in range(max_batch):
            try:
                frames = self.sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            t_received = time.time()
            try:
                topic, body = decode(frames)
            except MessageError as exc:
                self.n_malformed += 1
                log.warning("Skipped a malformed message from %s at %s: %s", self.name, self.address, exc)
                continue
            if topic in self.topics:  # prefix subscriptions can let others in
                out.append(Received(topic, body, t_received))
        return out

    def _reconnect(self) -> None:
        while self.monitor.poll(0):
            self.monitor.recv_multipart()
        log.debug("connection to %s at %s dropped (it stopped, or sent an oversized or invalid message); "
                    "reconnecting", self.name, self.address)
        try:
            self.sub.disconnect(self.address)
        except zmq.ZMQError:
            pass  # libzmq already forgot the endpoint
        self.sub.connect(self.address)

    def close(self) -> None:
        """Close both sockets (idempotent)."""
        if not self.sub.closed:
            self.sub.disable_monitor()
            self.monitor.close(0)
            self.sub.close(0)
