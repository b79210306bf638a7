"""What a feedback run shows in each arm, injected into the run without changing its config or outputs.

The arm of a blinded run must not show in anything the run writes or sends:
its recorded config and provenance, table columns and sidecar, log lines and
messages are the study's feedback run's, whatever the arm. So the arm does
not go through config overrides (which the outputs record); it replaces the
run's feedback computer inside the processor the run builds
(:class:`rtnf.run.session.RunParts`):

- ``real``: the run as configured;
- ``sham``: :class:`rtnf.study.sham.YokedFeedback`, another participant's shown values;
- ``control``: the same feedback computed from the control ROI (``arms.control_roi``);
- ``none``: computed and recorded, never shown (as a transfer run).

ROI values are computed and recorded for every ROI of the config in every
arm; the time a step takes stays in the ``feedback`` stage of ``stage_s``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rtnf.analysis.feedback import FeedbackComputer
from rtnf.config import Config
from rtnf.run.pipeline import VolumeProcessor
from rtnf.run.session import RunParts

from .sham import YokedFeedback, read_yoked


class ArmProcessor(VolumeProcessor):
    """A :class:`VolumeProcessor` whose feedback computer is the arm's.

    Parameters
    ----------
    cfg : Config
        The run's config (as recorded).
    feedback : callable
        ``feedback(processor)`` -> the object used as ``processor.feedback``
        (built once the processor's ROIs and protocol exist).
    """

    def __init__(self, cfg: Config, feedback: Callable[[VolumeProcessor], Any], **kwargs: Any) -> None:
        super().__init__(cfg, **kwargs)
        self.feedback = feedback(self)


@dataclass(frozen=True)
class ArmRun:
    """How one feedback run of an arm is made.

    Attributes
    ----------
    arm : str
        ``"real"``, ``"sham"``, ``"control"`` or ``"none"``.
    control_roi : str or None
        The ROI the control arm feeds back.
    yoked_table : Path or None
        The sham arm's source: the matched run's recorded table.
    """

    arm: str
    control_roi: str | None = None
    yoked_table: Path | None = None

    def parts(self) -> RunParts:
        """The run's parts: rtnf's own, with the arm's processor."""
        return RunParts(processor=functools.partial(ArmProcessor, feedback=self._feedback))

    def _feedback(self, proc: VolumeProcessor) -> Any:
        fb = proc.cfg.feedback
        if self.arm == "real":
            return proc.feedback
        if self.arm == "sham":
            return YokedFeedback(proc.feedback, read_yoked(self.yoked_table, proc.protocol.n_volumes),
                                 _source_shaping(proc.feedback, self.yoked_table))
        if self.arm == "control":
            update: dict[str, Any] = {"roi": self.control_roi}
            if fb.reference_roi == self.control_roi:
                update["reference_roi"] = None
            return _computer_like(proc, fb.model_copy(update=update))
        if self.arm == "none":
            return _computer_like(proc, fb.model_copy(update={"enabled": False}))
        raise ValueError(f"unknown arm {self.arm!r}")


def _computer_like(proc: VolumeProcessor, fb: Any) -> FeedbackComputer:
    """A feedback computer for ``fb`` in the place of the processor's own, continuing its shaping history."""
    history = getattr(proc.feedback, "shaping_history", None)  # [feedback.shaping]'s earlier blocks, when present
    extra = {} if history is None else {"shaping_history": history}
    return FeedbackComputer(fb, proc.roi_names, proc.protocol, **extra)


def _source_shaping(own: Any, table: Path) -> list[Any] | None:
    """The sham source's shaping states, when this rtnf shapes (``[feedback.shaping]``)."""
    from rtnf.analysis import feedback

    reader = getattr(feedback, "read_sham_shaping", None)
    if reader is None or not hasattr(own, "shaping"):
        return None
    return reader(table)
