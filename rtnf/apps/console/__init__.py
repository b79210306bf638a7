"""The operator console: a live, read-only web page of the run.

A client of the wire protocol like the feedback screen: it subscribes to
rtnf's PUB socket and to the screen's acknowledgements and serves a page on
loopback (``http://127.0.0.1:5006/`` by default). Importing this package is
cheap; the web stack (Bokeh, the ``console`` extra) is imported only by
:func:`serve` and the command line.

- :func:`serve` (:mod:`rtnf.apps.console.app`): run the console until stopped.
- :mod:`rtnf.apps.console.cli`: ``add_arguments(parser)`` and ``run(args)`` for the
  ``rtnf console`` sub-command; ``python -m rtnf.apps.console`` runs it alone.
- :class:`rtnf.apps.console.state.RunState`: the run as the console sees it (pure
  Python, tested without a browser).
"""

from __future__ import annotations

from typing import Any

__all__ = ["serve"]


def serve(*args: Any, **kwargs: Any) -> None:
    """Serve the console; see :func:`rtnf.apps.console.app.serve` (imports the web stack)."""
    from .app import serve as _serve

    _serve(*args, **kwargs)
