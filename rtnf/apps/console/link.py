"""The console's ZeroMQ side: one thread that owns the SUB sockets.

:class:`Subscriber` connects a SUB socket to rtnf's PUB and another to the
feedback screen's PUB, decodes every message with :func:`rtnf.wire.messages.decode`
into its typed message of :mod:`rtnf.wire.topics` (the one decoder of the
screen, the console and the LSL bridge: a message that cannot be used is
logged and skipped here, an invalid optional value reads as absent) and puts
``(origin, topic, message, t_received)`` on a :class:`queue.Queue`. The
sockets are created, used and closed by that thread only; the web server
drains the queue on its own event loop, which so never spends time checking
messages (a preview carries tens of thousands of numbers). Nothing is ever
sent: the console is read-only.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import NamedTuple

import zmq

from rtnf.wire.messages import MessageError
from rtnf.wire.subscription import Subscription
from rtnf.wire.topics import WireMessage, parse_body

log = logging.getLogger(__name__)

RTNF_TOPICS: tuple[str, ...] = ("run", "volume", "feedback", "heartbeat", "preview", "log")
SCREEN_TOPICS: tuple[str, ...] = ("displayed", "heartbeat", "keys", "rating")


class Message(NamedTuple):
    """One decoded message, where it came from and when it arrived."""

    origin: str  # "rtnf" or "screen"
    topic: str
    body: WireMessage  # of the topic's class in rtnf.wire.topics
    t_received: float


class Subscriber(threading.Thread):
    """Background thread feeding ``out`` with the messages of rtnf and the screen.

    Parameters
    ----------
    rtnf_address : str
        rtnf's PUB address (``publish.address``).
    screen_address : str or None
        The feedback screen's PUB address (``displayed`` and its heartbeats);
        None to listen to rtnf only.
    out : queue.Queue
        Receives :class:`Message` tuples.
    poll_ms : int
        How often the thread checks its stop flag.

    Notes
    -----
    SUB sockets connect (and keep retrying), so the console may start before
    or after rtnf and the screen. A connection that libzmq drops for good (an
    oversized message is a protocol error) is reconnected, as the feedback
    screen does.
    """

    def __init__(
        self,
        rtnf_address: str,
        screen_address: str | None,
        out: "queue.Queue[Message]",
        poll_ms: int = 100,
    ) -> None:
        super().__init__(name="rtnf-console-sub", daemon=True)
        self.endpoints = {"rtnf": (rtnf_address, RTNF_TOPICS)}
        if screen_address:
            self.endpoints["screen"] = (screen_address, SCREEN_TOPICS)
        self.out = out
        self.poll_ms = int(poll_ms)
        self.n_malformed = 0
        self._n_unusable = 0  # decoded, but not a usable message of its topic
        self.ready = threading.Event()
        self._stop_requested = threading.Event()
        self.error: BaseException | None = None

    def stop(self, timeout_s: float = 2.0) -> None:
        """Ask the thread to close its sockets and end; wait for it."""
        self._stop_requested.set()
        if self.is_alive():
            self.join(timeout_s)

    def run(self) -> None:  # the thread: every socket lives and dies here
        ctx = zmq.Context()
        subs: dict[str, Subscription] = {}
        try:
            poller = zmq.Poller()
            for origin, (address, topics) in self.endpoints.items():
                subs[origin] = Subscription(ctx, address, topics, name=origin)
                for sock in subs[origin].sockets:
                    poller.register(sock, zmq.POLLIN)
            self.ready.set()
            while not self._stop_requested.is_set():
                ready = dict(poller.poll(self.poll_ms))
                for origin, sub in subs.items():
                    for topic, body, t_received in sub.receive(ready):
                        try:
                            message = parse_body(topic, body)
                        except MessageError as exc:
                            self._n_unusable += 1
                            log.warning("Skipped a malformed message from %s: %s", origin, exc)
                            continue
                        self.out.put(Message(origin, topic, message, t_received))
                self.n_malformed = sum(sub.n_malformed for sub in subs.values()) + self._n_unusable
        except BaseException as exc:  # reported by the server, which stops
            self.error = exc
            log.exception("console subscriber failed")
            self.ready.set()
        finally:
            for sub in subs.values():
                sub.close()
            ctx.term()
