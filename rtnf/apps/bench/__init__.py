"""``rtnf bench``: latency benchmarks of the pipeline's stages.

Each stage lives in its own module exposing::

    NAME: str                       # sub-command name, e.g. "motion"
    HELP: str                       # one line for --help
    def add_arguments(parser) -> None
    def run(args) -> dict           # JSON-serialisable results

and is listed in :data:`STAGES`. Results print as plain text tables by
default and as JSON with ``--json``. Speed is measured here, never asserted
in tests.
"""

from __future__ import annotations

STAGES: tuple[str, ...] = ("read", "motion", "glm", "pipeline", "soak", "e2e")
"""Module names under ``rtnf.apps.bench`` that provide a stage (filled as stages are added)."""

from pathlib import Path  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
"""The real series of ``../shared/data`` beside the checkout (a source checkout; absent elsewhere)."""
