"""The participant's ratings, recorded with the run: ``<prefix>_desc-ratings_events.tsv`` and its sidecar.

The feedback screen publishes one ``rating`` message per rating scale it
showed (:class:`rtnf.wire.topics.RatingMessage`, ``[[display.ratings]]``)
on its acknowledgement socket. :class:`rtnf.run.screen_record.ScreenRecord`
receives them with the screen's other messages and hands those of this run
to :class:`RatingsRecord`, which writes one row per rating, flushed, as BIDS
events with their own columns (created at the first rating: a run without
ratings has no file). Onsets are relative to the ``StartTime`` of the
screen's events (``desc-screen_events.json``), so both files share one time
axis; the ``t_*`` columns are UNIX times of the screen machine's clock.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rtnf.wire.messages import MessageError
from rtnf.wire.topics import RatingMessage

from . import outputs

COLUMNS = ("onset", "duration", "trial_type", "value", "response_time", "timed_out", "volume_index", "block",
           "condition", "moment", "scale_low", "scale_high", "response", "n_moves", "question_text",
           "t_onset", "t_response", "t_offset")
"""Columns of :data:`rtnf.run.outputs.RATINGS_EVENTS`, in order."""
NA = "n/a"
_MAX_TEXT = 200

SIDECAR: dict[str, Any] = {
    "Description": "The participant's ratings on the feedback screen (rtnf-screen, [[display.ratings]] of the session "
                   "config): one row per rating scale shown, with the answer or n/a when its time limit ran out.",
    "onset": {"Description": "When the scale appeared (the flip of its first frame), relative to StartTime.",
              "Units": "s"},
    "duration": {"Description": "How long the scale was on screen (to the flip of the first frame without it).",
                 "Units": "s"},
    "trial_type": {"Description": "The question's id ([[display.ratings]] id), e.g. intensity, unpleasantness."},
    "value": {"Description": "The answer, in the scale's units (scale_low at its left end, scale_high at its "
                             "right end); n/a: no answer within the time limit."},
    "response_time": {"Description": "From onset to the confirming key press or click; n/a without an answer.",
                      "Units": "s"},
    "timed_out": {"Description": "1 when the time limit closed the scale without an answer, else 0."},
    "volume_index": {"Description": "0-based index of the feedback volume on screen when the scale appeared (as "
                                    "index in the desc-rtnf_timeseries table); n/a before the run's first volume."},
    "block": {"Description": "moment after_block: the protocol block rated, numbered from 0 as the block column "
                             "of the desc-rtnf_timeseries table; else n/a."},
    "condition": {"Description": "moment after_block: the rated block's condition; else n/a."},
    "moment": {"Description": "When the rating was shown.", "Levels": {
        "before_run": "the run started, before its first volume",
        "after_block": "after a regulation block (when the next block's first volume arrived, or one TR after "
                       "the run's last volume)",
        "after_run": "one TR after the run's last volume",
        "volume": "when a configured volume's feedback arrived"}},
    "scale_low": {"Description": "Value of the scale's left end."},
    "scale_high": {"Description": "Value of the scale's right end."},
    "response": {"Description": "How the answer was given: the confirming key's name, or mouse; n/a without one."},
    "n_moves": {"Description": "Key presses that moved the marker."},
    "question_text": {"Description": "The question as shown."},
    "t_onset": {"Description": "UNIX time just after the flip of the scale's first frame (screen machine's clock).",
                "Units": "s"},
    "t_response": {"Description": "UNIX time of the confirming key press or click (screen machine's clock).",
                   "Units": "s"},
    "t_offset": {"Description": "UNIX time just after the flip of the first frame without the scale.", "Units": "s"},
}


def _num(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return NA
    if isinstance(value, int):
        return str(value)
    return repr(float(value)) if math.isfinite(value) else NA


def _text(value: Any, limit: int = _MAX_TEXT) -> str:
    if not isinstance(value, str) or not value:
        return NA
    return "".join(c if c.isprintable() and c != "\t" else " " for c in value[:limit])


def rating_row(msg: RatingMessage, t_start: float) -> dict[str, str]:
    """The cells of one rating (see :data:`SIDECAR`), as text."""
    t_onset, t_offset = msg.t_onset, msg.t_offset
    scale = msg.scale or [None, None]
    return {
        "onset": NA if t_onset is None else f"{t_onset - t_start:.4f}",
        "duration": NA if t_onset is None or t_offset is None else f"{max(0.0, t_offset - t_onset):.4f}",
        "trial_type": _text(msg.question, 64),
        "value": _num(msg.value),
        "response_time": NA if msg.response_time_s is None else f"{msg.response_time_s:.4f}",
        "timed_out": NA if msg.timed_out is None else str(int(msg.timed_out)),
        "volume_index": _num(msg.index),
        "block": _num(msg.block),
        "condition": _text(msg.condition, 64),
        "moment": _text(msg.when, 64),
        "scale_low": _num(scale[0]),
        "scale_high": _num(scale[1]),
        "response": _text(msg.response, 64),
        "n_moves": _num(msg.n_moves),
        "question_text": _text(msg.text),
        "t_onset": _num(t_onset),
        "t_response": _num(msg.t_response),
        "t_offset": _num(t_offset),
    }


class RatingsRecord:
    """Writes the ratings of one run to ``<prefix>_desc-ratings_events.tsv`` (and its sidecar).

    Parameters
    ----------
    folder : Path
        The run's ``func`` folder.
    prefix : str
        The run's BIDS prefix.
    run_id : str
        The run (written in the sidecar; the caller passes only this run's messages).
    t_start : float
        ``StartTime`` of the onsets (the screen events' own).
    resume : bool
        Append to the file of a run whose process died.
    """

    def __init__(self, folder: Path, prefix: str, run_id: str, t_start: float, resume: bool = False) -> None:
        self.path = Path(folder) / f"{prefix}_{outputs.RATINGS_EVENTS}"
        self.sidecar_path = Path(folder) / f"{prefix}_{outputs.RATINGS_EVENTS_SIDECAR}"
        self.run_id = run_id
        self.t_start = t_start
        self._appending = resume and self.path.exists() and self.sidecar_path.exists()
        if not resume:
            for stale in (self.path, self.sidecar_path):  # an overwritten run's: not this run's ratings
                stale.unlink(missing_ok=True)
        self._file: Any = None
        self.n_rows = 0
        self.n_invalid = 0
        self.rows: list[dict[str, str]] = []

    def write(self, body: dict[str, Any]) -> bool:
        """Write one rating message's body (decoded); False when it cannot be used (no question id)."""
        try:
            msg = RatingMessage.from_body(body)
        except MessageError:
            self.n_invalid += 1
            return False
        row = rating_row(msg, self.t_start)
        if self._file is None:
            self._open()
        self._file.write("\t".join(row[c] for c in COLUMNS) + "\n")
        self._file.flush()
        self.rows.append(row)
        self.n_rows += 1
        return True

    def _open(self) -> None:
        if not self._appending:
            sidecar = {**SIDECAR, "StartTime": self.t_start, "RunId": self.run_id}
            self.sidecar_path.write_text(json.dumps(sidecar, indent=2))
        self._file = open(self.path, "a" if self._appending else "w", encoding="utf-8")
        if not self._appending:
            self._file.write("\t".join(COLUMNS) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
