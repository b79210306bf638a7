"""Yoked sham feedback: the feedback time course of another participant's matched run.

As OpenNFT's sham file, the value shown at each volume is the one another
participant was shown at the same volume of the same session and run of
the study (read from that run's recorded table), while this participant's
own ROI values are computed and recorded as in any run. The study picks the
source (:func:`rtnf.study.runner.yoke_source`): the earliest participant of
the real arm to complete the matched run (under ``arms.conceal_order``, the
study's first participant, who leads every feedback run).

:class:`YokedFeedback` stands in for the run's
:class:`~rtnf.analysis.feedback.FeedbackComputer` (through
:class:`rtnf.study.armfeedback.ArmProcessor`), so the rest of the volume's
path is a real run's: censoring by this participant's own motion, the
messages, the row.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtnf.analysis.feedback import FeedbackValue
from rtnf.config import ConfigError

NA = "n/a"


class YokedSourceError(ConfigError):
    """The matched run's table cannot be read: the message names no table (nor its participant).

    ``detail`` (the table and the reason) goes to the study's journal only:
    on the operator's screen, a source's path would tell whose run a sham
    participant's feedback comes from.
    """

    MESSAGE = "the matched run's recorded table cannot be read; see the study log"

    def __init__(self, detail: str, prefix: str = "") -> None:
        super().__init__(prefix + self.MESSAGE)
        self.detail = detail


@dataclass(frozen=True)
class YokedRow:
    """What the source run showed at one volume."""

    value: float | None
    signal: float | None
    reason: str | None


def _number(text: str | None) -> float | None:
    return None if text in (None, "", NA) else float(text)


def read_yoked(table: Path, n_volumes: int) -> list[YokedRow | None]:
    """The source run's shown feedback per kept-volume index (None where it has no row).

    Raises
    ------
    YokedSourceError
        When the table cannot be read or is not an rtnf run's table.
    """
    try:
        with open(table, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except (OSError, UnicodeDecodeError) as exc:
        raise YokedSourceError(f"cannot read the matched run's table {table}: {exc}") from None
    needed = {"index", "feedback_value", "feedback_signal", "feedback_reason"}
    if rows and not needed <= set(rows[0]):
        raise YokedSourceError(f"{table} is not an rtnf run's table (columns {', '.join(sorted(needed))} needed)")
    out: list[YokedRow | None] = [None] * n_volumes
    for r in rows:
        index = int(r["index"])
        if 0 <= index < n_volumes:
            reason = r["feedback_reason"]
            out[index] = YokedRow(_number(r["feedback_value"]), _number(r["feedback_signal"]),
                                  None if reason in ("", NA) else reason)
    return out


class YokedFeedback:
    """The feedback of a yoked sham run, in the place of the run's :class:`FeedbackComputer`.

    Each step computes this participant's own feedback (so its state, and
    its reasons for having no value, are a real run's), then shows the source
    run's value and signal at that volume instead. Where the source has no
    value but this run would (the source's own censored or missing volume),
    the last yoked value is held, as ``censor_action = "hold"`` does.

    Parameters
    ----------
    own : FeedbackComputer
        The run's own feedback computer (its ROI values, its config).
    yoked : list of YokedRow or None
        :func:`read_yoked` of the source run.
    shaping : list, optional
        The source run's shaping states per volume
        (:func:`rtnf.analysis.feedback.read_sham_shaping`), shown in place of
        this run's own, as a ``feedback.sham_from`` run does.
    """

    def __init__(self, own: Any, yoked: list[YokedRow | None], shaping: list[Any] | None = None) -> None:
        self.own = own
        self.yoked = yoked
        self.yoked_shaping = shaping
        self._held: YokedRow | None = None

    def __getattr__(self, name: str) -> Any:
        # Anything else the pipeline asks of its feedback computer (its direction per volume, ...) is the own one's.
        return getattr(self.own, name)

    def shaping(self, index: int) -> Any:
        """The source run's shaping state at ``index`` (threshold, block score), as its values are shown.

        The own computer is still stepped (its blocks are scored in order); without the source's shaping
        columns its own state is returned.
        """
        own = self.own.shaping(index)
        if self.yoked_shaping is None:
            return own
        return self.yoked_shaping[index] if index < len(self.yoked_shaping) else type(own)(None)

    def step(self, index: int, values: list, model: Any, source: Any = None) -> FeedbackValue:
        """The value shown at kept volume ``index``: the source run's, where this run would show one."""
        own = self.own.step(index, values, model, source)
        if own.value is None:
            return own  # waiting for a baseline, between intermittent scores, no signal: as a real run
        row = self.yoked[index] if index < len(self.yoked) else None
        if row is not None and row.value is not None:
            self._held = row
        if self._held is None:
            return FeedbackValue(None, (row.reason if row is not None else None) or "waiting for baseline",
                                 kind=own.kind, direction=own.direction)
        return FeedbackValue(self._held.value, None, signal=self._held.signal, kind=own.kind,
                             display_s=own.display_s, direction=own.direction)
