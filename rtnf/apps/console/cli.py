"""Command line of the operator console.

``add_arguments(parser)`` and ``run(args)`` are meant for the ``rtnf console``
sub-command; :func:`command` builds the command line that starts the console
as a child process (for ``rtnf run --console``: the console then never takes
the pipeline's CPU time or GIL), and :func:`spawn` starts it. :func:`main` serves ``python -m rtnf.apps.console``.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import signal
import subprocess
import sys
import threading
import time

from rtnf.wire.messages import DEFAULT_ADDRESS, DEFAULT_SCREEN_ADDRESS

EXIT_USAGE = 2
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5006


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the console's options to ``parser``."""
    parser.add_argument("--address", default=DEFAULT_ADDRESS,
                        help=f"rtnf's publish address (default {DEFAULT_ADDRESS})")
    parser.add_argument("--ack-address", dest="screen_address", default=DEFAULT_SCREEN_ADDRESS,
                        help=f"the feedback screen's acknowledgement address (default {DEFAULT_SCREEN_ADDRESS})")
    parser.add_argument("--screen-address", dest="screen_address", help=argparse.SUPPRESS)  # the old name
    parser.add_argument("--no-screen", action="store_true",
                        help="no feedback screen is used: do not listen for it nor alert when it is silent")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address the web page is served on (default {DEFAULT_HOST}: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"HTTP port (default {DEFAULT_PORT}; 0: any free port)")
    parser.add_argument("--fd-threshold", type=float, default=0.5, metavar="MM",
                        help="framewise displacement (mm) above which the high-motion alert is raised until the run "
                             "says its own quality.fd_threshold_mm (default 0.5)")
    parser.add_argument("--screen-timeout", type=float, default=3.0, metavar="S",
                        help="seconds without a screen heartbeat before the silent-screen alert (default 3)")
    parser.add_argument("--rtnf-timeout", type=float, default=3.0, metavar="S",
                        help="seconds without a message from rtnf before the silent-rtnf alert; at least three of the "
                             "run's publish.heartbeat_s once the run says it (default 3)")
    parser.add_argument("--allow-origin", action="append", default=[], metavar="HOST:PORT",
                        help="extra host:port the page may be opened from (when served beyond loopback); repeatable")


def command(
    address: str,
    screen_address: str | None = DEFAULT_SCREEN_ADDRESS,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    fd_threshold_mm: float | None = None,
    rtnf_timeout_s: float | None = None,
) -> list[str]:
    """Command line of a console child process (``python -m rtnf.apps.console ...``).

    ``fd_threshold_mm`` and ``rtnf_timeout_s`` (None: the console's
    defaults) come from the session config, so that the console's limits are
    the run's from the start, before its run message arrives.
    """
    cmd = [sys.executable, "-m", "rtnf.apps.console", "--address", address, "--host", host, "--port", str(port)]
    cmd += ["--no-screen"] if not screen_address else ["--ack-address", screen_address]
    if fd_threshold_mm is not None:
        cmd += ["--fd-threshold", repr(float(fd_threshold_mm))]
    if rtnf_timeout_s is not None:
        cmd += ["--rtnf-timeout", repr(float(rtnf_timeout_s))]
    return cmd


def config_limits(cfg) -> dict[str, float]:
    """The console's limits from a session config (:class:`rtnf.config.Config`), as :func:`spawn` takes them."""
    return {"fd_threshold_mm": cfg.quality.fd_threshold_mm, "rtnf_timeout_s": max(3.0, 3.0 * cfg.publish.heartbeat_s)}


def spawn(
    address: str,
    screen_address: str | None = DEFAULT_SCREEN_ADDRESS,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    log_path: "str | None" = None,
    fd_threshold_mm: float | None = None,
    rtnf_timeout_s: float | None = None,
) -> subprocess.Popen:
    """Start the console as a child process (for ``rtnf run --console``).

    The caller stops it with ``proc.terminate()`` (SIGTERM: a clean exit)
    when the operator closes it, after the run: the page stays served, and
    shows the ended run, until then. Output goes to ``log_path`` when given,
    else it is inherited. The child ignores SIGINT, so Ctrl-C in the
    terminal reaches ``rtnf run`` alone, which ends the run first.
    """
    out = open(log_path, "w") if log_path else None
    try:
        cmd = command(address, screen_address, host, port, fd_threshold_mm, rtnf_timeout_s)
        return subprocess.Popen(cmd, stdout=out, preexec_fn=_ignore_sigint,
                                stderr=subprocess.STDOUT if out else None, stdin=subprocess.DEVNULL)
    finally:
        if out is not None:
            out.close()  # the child keeps its own descriptor


def linger(proc: subprocess.Popen, url: str, seconds: float | None = None) -> None:
    """Keep a console child serving after the run, until the operator closes it.

    Returns on Ctrl-C (SIGINT) or SIGTERM, after ``seconds`` (None: no
    closing time), or when the child exits by itself. The caller then stops
    the child with :func:`close`.
    """
    closing = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: closing.set())
    until = "Ctrl-C closes it" if seconds is None else f"it closes in {seconds:g} s (Ctrl-C: now)"
    print(f"operator console: the run is over; {url} shows it until you close the console: {until}", flush=True)
    deadline = None if seconds is None else time.monotonic() + max(0.0, seconds)
    try:
        while not closing.is_set() and proc.poll() is None:
            wait = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if wait <= 0:
                break
            closing.wait(wait)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def close(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """Stop a console child (SIGTERM: a clean exit; SIGKILL if it does not end within ``timeout_s``)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ignore_sigint() -> None:  # in the child, before exec: Ctrl-C is for rtnf run, which stops the console
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run(args: argparse.Namespace) -> int:
    """Serve the console until SIGINT or SIGTERM; return the exit code."""
    if importlib.util.find_spec("bokeh") is None:
        print("rtnf console: the web stack is not installed: pip install -e '.[console]'", file=sys.stderr)
        return EXIT_USAGE
    if not args.fd_threshold > 0:
        print(f"rtnf console: --fd-threshold must be a positive number of mm, got {args.fd_threshold}", file=sys.stderr)
        return EXIT_USAGE
    from .app import serve

    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            # An inherited "ignore" stays (rtnf run --console: Ctrl-C ends the run, and the console stays).
            if signal.getsignal(sig) is not signal.SIG_IGN:
                signal.signal(sig, lambda *_: stop.set())
    try:
        serve(
            args.address,
            None if args.no_screen else args.screen_address,
            host=args.host,
            port=args.port,
            fd_threshold_mm=args.fd_threshold,
            screen_timeout_s=args.screen_timeout,
            rtnf_timeout_s=args.rtnf_timeout,
            allow_websocket_origin=args.allow_origin,
            stop=stop,
            on_ready=lambda url: print(f"rtnf console: {url}", flush=True),
        )
    except OSError as exc:
        print(f"rtnf console: cannot serve on {args.host}:{args.port}: {exc}. Choose another --port.", file=sys.stderr)
        return EXIT_USAGE
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m rtnf.apps.console``."""
    parser = argparse.ArgumentParser(prog="rtnf console", description="Live operator console (read-only web page).")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(args)
