"""Command line of the operator console.

``add_arguments(parser)`` and ``run(args)`` are meant for the ``rtnf console``
sub-command; :func:`command` builds the command line that starts the console
as a child process (for ``rtnf run --console``: the console then never takes
the pipeline's CPU time or GIL), and :func:`spawn` starts it. :func:`main` serves ``python -m rtnf.console``.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import signal
import subprocess
import sys
import threading

from rtnf.messages import DEFAULT_ADDRESS, DEFAULT_SCREEN_ADDRESS

EXIT_USAGE = 2
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5006


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the console's options to ``parser``."""
    parser.add_argument("--address", default=DEFAULT_ADDRESS,
                        help=f"rtnf's publish address (default {DEFAULT_ADDRESS})")
    parser.add_argument("--screen-address", "--ack-address", dest="screen_address", default=DEFAULT_SCREEN_ADDRESS,
                        help=f"the feedback screen's acknowledgement address (default {DEFAULT_SCREEN_ADDRESS})")
    parser.add_argument("--no-screen", action="store_true",
                        help="no feedback screen is used: do not listen for it nor alert when it is silent")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address the web page is served on (default {DEFAULT_HOST}: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"HTTP port (default {DEFAULT_PORT}; 0: any free port)")
    parser.add_argument("--fd-threshold", type=float, default=0.5, metavar="MM",
                        help="framewise displacement (mm) above which the high-motion alert is raised (default 0.5)")
    parser.add_argument("--screen-timeout", type=float, default=3.0, metavar="S",
                        help="seconds without a screen heartbeat before the silent-screen alert (default 3)")
    parser.add_argument("--allow-origin", action="append", default=[], metavar="HOST:PORT",
                        help="extra host:port the page may be opened from (when served beyond loopback); repeatable")


def command(
    address: str,
    screen_address: str | None = DEFAULT_SCREEN_ADDRESS,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
) -> list[str]:
    """Command line of a console child process (``python -m rtnf.console ...``)."""
    cmd = [sys.executable, "-m", "rtnf.console", "--address", address, "--host", host, "--port", str(port)]
    cmd += ["--no-screen"] if not screen_address else ["--screen-address", screen_address]
    return cmd


def spawn(
    address: str,
    screen_address: str | None = DEFAULT_SCREEN_ADDRESS,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    log_path: "str | None" = None,
) -> subprocess.Popen:
    """Start the console as a child process (for ``rtnf run --console``).

    The caller stops it with ``proc.terminate()`` (SIGTERM: a clean exit)
    after the run. Output goes to ``log_path`` when given, else it is
    inherited.
    """
    out = open(log_path, "w") if log_path else None
    try:
        return subprocess.Popen(command(address, screen_address, host, port), stdout=out,
                                stderr=subprocess.STDOUT if out else None, stdin=subprocess.DEVNULL)
    finally:
        if out is not None:
            out.close()  # the child keeps its own descriptor


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
            signal.signal(sig, lambda *_: stop.set())
    try:
        serve(
            args.address,
            None if args.no_screen else args.screen_address,
            host=args.host,
            port=args.port,
            fd_threshold_mm=args.fd_threshold,
            screen_timeout_s=args.screen_timeout,
            allow_websocket_origin=args.allow_origin,
            stop=stop,
            on_ready=lambda url: print(f"rtnf console: {url}", flush=True),
        )
    except OSError as exc:
        print(f"rtnf console: cannot serve on {args.host}:{args.port}: {exc}. Choose another --port.", file=sys.stderr)
        return EXIT_USAGE
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m rtnf.console``."""
    parser = argparse.ArgumentParser(prog="rtnf console", description="Live operator console (read-only web page).")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(args)
