"""Loading pylsl, the Lab Streaming Layer library, with a clear message when it is missing.

Shared by what reads LSL (the physiological stream of
:class:`rtnf.scanner.physio_sources.LslInlet`, checked by
:class:`rtnf.analysis.confounds.physio.PhysioRegressors`) and what writes it
(the bridge of :mod:`rtnf.apps.lsl`); pylsl is an optional dependency (the
``lsl`` extra), so it is imported only when a stream is opened.
"""

from __future__ import annotations

from typing import Any

INSTALL_HINT = "pip install -e '.[lsl]' (or: pip install 'pylsl>=1.16')"


class LslUnavailableError(RuntimeError):
    """pylsl or its binary library (liblsl) cannot be loaded."""


def load_pylsl() -> Any:
    """Import pylsl, or raise :class:`LslUnavailableError` with what to do.

    Recent pylsl wheels ship liblsl; otherwise pylsl looks for it in the
    ``PYLSL_LIB`` environment variable and on the system library path.
    """
    try:
        import pylsl
    except ImportError as exc:
        raise LslUnavailableError(f"pylsl is not installed ({exc}); install it with: {INSTALL_HINT}") from exc
    except (RuntimeError, OSError) as exc:  # pylsl raises RuntimeError when liblsl cannot be found or loaded
        raise LslUnavailableError(
            f"pylsl is installed but its binary library liblsl cannot be loaded: {str(exc).strip()}. "
            "Install a pylsl wheel that bundles liblsl, or install liblsl and point PYLSL_LIB at liblsl.so."
        ) from exc
    return pylsl
