"""Ratings on the participant's screen: when each is due, what the frame shows, what was answered.

No PsychoPy here: :class:`RatingController` follows the
:class:`~stimulus.link.ScreenState` frame by frame, queues the ratings of
``[[display.ratings]]`` (:mod:`rtnf.wire.ratings`) at their moments, turns
the frame of a rating on screen into a :class:`~stimulus.scene.Scene` of view
"rating" (drawn by :class:`stimulus.rating_view.RatingView`, PsychoPy's
``visual.Slider``), takes the keys and clicks that answer it, closes it on
an answer or at its time limit, and publishes each rating on the ``rating``
topic once the first frame without it has flipped.

Moments (all in the run the screen follows):

- ``before_run``: when the screen learns that a run started and none of its
  volumes has come yet;
- ``after_block``: a block ends when the first volume after it arrives (its
  last value stays on screen until then), or, for a block that ends the run,
  one TR after the run's last volume arrived (or at the run's end message if
  that comes first). Only blocks of which the screen showed a volume are
  rated (a screen that joins late does not rate the blocks it missed);
- ``after_run``: one TR after the run's last volume arrived, or at the run's
  end message, after the last block's ratings;
- ``volumes``: when the feedback of each listed volume (1-based) arrives.

Ratings due together are shown one after the other in the order of the
config file, each with its own onset.

Rules while a rating is on screen (issue 17, point 5):

- the feedback display pauses: the frame shows the scale alone (no bar,
  score, fixation or instruction under it); feedback messages keep arriving,
  are acknowledged as usual (``displayed`` with view "rating", on the first
  frame that shows the scale after they arrived) and the run goes on. When
  the rating closes, the screen shows the current state again: the bar at
  the latest value, an intermittent score only for what is left of its
  display time;
- a rating never delays a frame: its scale is built when the screen opens,
  and showing, moving or closing it only changes what the next frame draws;
  every frame keeps its flip-log row (view "rating");
- only presses and clicks after the onset flip count (a key pressed before
  the scale appeared is not an answer to it); a confirm key with no marker
  on the scale does nothing;
- the connection-lost notice is not shown under a rating once the run's last
  volume arrived (rtnf is quiet while it waits for the ratings after the run).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from rtnf.wire.display import DisplayConfig, RatingDisplay
from rtnf.wire.ratings import rating_keys
from stimulus.link import RunInfo, ScreenState
from stimulus.scene import Scene

logger = logging.getLogger(__name__)

END_MOMENTS = ("after_block", "after_run")
"""Moments queued at the run's end (the last block's ratings, then those after the run)."""


@dataclass(frozen=True)
class RatingFrame:
    """What one frame of a rating shows.

    Attributes
    ----------
    spec : RatingDisplay
        The question, anchors, range and ticks.
    marker : float or None
        Where the marker is, in the scale's units (None: no marker yet).
    serial : int
        Number of the rating shown (from 1): a new number is a new scale (the
        view resets its slider).
    mouse : bool
        Whether a click answers.
    """

    spec: RatingDisplay
    marker: float | None
    serial: int
    mouse: bool


@dataclass
class Due:
    """A rating waiting to be shown."""

    spec: RatingDisplay
    when: str
    run_id: str | None
    not_before: float
    block: int | None = None
    condition: str | None = None
    at_end: bool = False


@dataclass
class Shown:
    """A rating on screen (or closed, waiting for the flip that removes it)."""

    due: Due
    serial: int
    marker: float | None
    index: int | None
    t_onset: float | None = None
    n_moves: int = 0
    value: float | None = None
    t_response: float | None = None
    response: str | None = None
    timed_out: bool = False
    t_offset: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class RatingController:
    """Which rating is on screen, frame by frame (see the module's description).

    Parameters
    ----------
    cfg : DisplayConfig
        ``ratings`` and ``rating_input`` are used.
    send : callable, optional
        ``send(run_id=..., question=..., **fields)``: publishes a rating
        (:meth:`stimulus.link.FeedbackLink.send_rating`).

    Attributes
    ----------
    active : Shown or None
        The rating on screen.
    queue : list of Due
        Ratings waiting, in the order they will be shown.
    n_shown : int
        Ratings shown in the current run.
    published : list of dict
        Every rating published (its fields), for tests and the screen's log.
    t_idle : float
        When the last rating left the screen (``time.time()``), 0 before any.
    """

    def __init__(self, cfg: DisplayConfig, send: Callable[..., Any] | None = None) -> None:
        self.specs: list[RatingDisplay] = list(cfg.ratings)
        self.keys = rating_keys(cfg.rating_input)
        self.mouse = bool(cfg.rating_input.mouse)
        self.send = send
        self.active: Shown | None = None
        self.queue: list[Due] = []
        self.closing: list[Shown] = []
        self.published: list[dict[str, Any]] = []
        self.t_idle = 0.0
        self._serial = 0
        self._changed = False
        self._reset_run(None)

    # ------------------------------------------------------------------ state
    @property
    def enabled(self) -> bool:
        return bool(self.specs)

    def _reset_run(self, run_id: str | None) -> None:
        self.run_id = run_id
        self.queue = [d for d in self.queue if d.run_id == run_id]  # another run's waiting ratings are dropped
        self.n_shown = 0
        self._last_index: int | None = None
        self._t_last: float | None = None
        self._seen_blocks: set[int] = set()
        self._rated_blocks: set[int] = set()
        self._started = False
        self._live = False  # the run was seen before its end (a screen that joins after the end rates nothing)
        self._end_queued = False
        self.volumes_done = False  # the run's last volume arrived

    def changed(self) -> bool:
        """True once after the rating on screen (or the queue) changed: the screen then sends a heartbeat."""
        out, self._changed = self._changed, False
        return out

    def busy(self) -> bool:
        """A rating is on screen, closing, or waiting in the current run."""
        return self.active is not None or bool(self.closing) or bool(self.queue)

    def pending(self, now: float) -> tuple[int, float | None]:
        """Ratings of the run on screen or waiting, and when they will have closed at the latest."""
        n = len(self.queue) + (self.active is not None)
        if not n:
            return 0, None
        cursor = now
        if self.active is not None:
            a = self.active
            cursor = (a.t_onset if a.t_onset is not None else now) + a.due.spec.time_limit_s
        for due in self.queue:
            cursor = max(cursor, due.not_before) + due.spec.time_limit_s
        return n, cursor

    def heartbeat_fields(self, now: float) -> dict[str, Any]:
        """The ratings' fields of the screen's heartbeat (none without ratings configured)."""
        if not self.enabled:
            return {}
        n, until = self.pending(now)
        return {"rating": None if self.active is None else self.active.due.spec.id, "n_ratings": self.n_shown,
                "ratings_pending": n, "ratings_until": until}

    # ------------------------------------------------------------------ moments
    def update(self, state: ScreenState, now: float) -> None:
        """Queue the ratings that became due with what the state says (called every frame)."""
        if not self.enabled:
            return
        if state.run_id != self.run_id:
            self._reset_run(state.run_id)
        if state.run_id is None:
            return  # no run: nothing to rate
        run = state.run
        if state.phase != "ended":
            self._live = True
        if not self._started and state.started:
            self._started = True
            if state.feedback is None and state.phase != "ended":
                self._enqueue("before_run", now)
        fb = state.feedback
        if fb is not None and (self._last_index is None or fb.index > self._last_index):
            self._on_index(fb.index, fb.t_received, run, now)
        if not self._live:
            return
        if not self._end_queued:
            end_at = None
            if state.phase == "ended":
                end_at = now
            elif (run is not None and run.n_volumes and self._last_index is not None
                  and self._last_index >= run.n_volumes - 1):
                end_at = (self._t_last or now) + (run.tr_s or 0.0)
            if end_at is not None:
                self._end_queued = True
                self.volumes_done = self._last_index is not None
                for number in sorted(self._seen_blocks - self._rated_blocks):
                    self._block_ended(number, run, end_at, at_end=True)
                self._enqueue("after_run", end_at, at_end=True)
        elif state.phase == "ended":
            for due in self.queue:  # the end message came before the last volume's TR was over
                if due.at_end:
                    due.not_before = min(due.not_before, now)

    def _on_index(self, index: int, t_received: float, run: RunInfo | None, now: float) -> None:
        prev = index - 1 if self._last_index is None else self._last_index
        self._last_index, self._t_last = index, t_received
        for spec in self.specs:
            if spec.volumes is not None and any(prev < v - 1 <= index for v in spec.volumes):
                self.queue.append(Due(spec, "volume", self.run_id, now))
                self._changed = True
        if run is None:
            return
        for number, (_, start, stop) in enumerate(run.blocks):
            if start <= index < stop:
                self._seen_blocks.add(number)
        for number, (_, start, stop) in enumerate(run.blocks):
            if stop <= index and number in self._seen_blocks and number not in self._rated_blocks:
                self._block_ended(number, run, now)

    def _block_ended(self, number: int, run: RunInfo | None, not_before: float, at_end: bool = False) -> None:
        self._rated_blocks.add(number)
        if run is None or number >= len(run.blocks):
            return
        condition = run.blocks[number][0]
        for spec in self.specs:
            if spec.when != "after_block" or condition is None:
                continue
            wanted = condition in spec.conditions if spec.conditions is not None else condition != run.baseline
            if wanted:
                self.queue.append(Due(spec, "after_block", self.run_id, not_before, number, condition, at_end))
                self._changed = True

    def _enqueue(self, when: str, not_before: float, at_end: bool = False) -> None:
        for spec in self.specs:
            if spec.when == when:
                self.queue.append(Due(spec, when, self.run_id, not_before, at_end=at_end))
                self._changed = True

    # ------------------------------------------------------------------ frames
    def overlay(self, state: ScreenState, scene: Scene, now: float) -> Scene:
        """The scene to draw at ``now``: ``scene`` itself, or the rating that pauses it."""
        if not self.enabled:
            return scene
        self.update(state, now)
        a = self.active
        if a is not None and a.t_onset is not None and now - a.t_onset >= a.due.spec.time_limit_s:
            self._close(a, None, now, None, timed_out=True)
        if self.active is None:
            self._promote(state, now)
        a = self.active
        if a is None:
            return scene
        frame = RatingFrame(a.due.spec, a.marker, a.serial, self.mouse)
        return Scene("rating", title_colour=scene.title_colour, lost=scene.lost and not self.volumes_done,
                     rating=frame)

    def _promote(self, state: ScreenState, now: float) -> None:
        for k, due in enumerate(self.queue):
            if due.not_before <= now:
                del self.queue[k]
                self._serial += 1
                self.n_shown += 1
                fb = state.feedback
                index = fb.index if fb is not None and state.run_id == due.run_id else None
                self.active = Shown(due, self._serial, due.spec.start_value, index)
                self._changed = True
                return

    def flipped(self, t_flip: float) -> None:
        """After each flip: stamp a new rating's onset, publish the ratings this frame removed."""
        if not self.enabled:
            return
        a = self.active
        if a is not None and a.t_onset is None:
            a.t_onset = t_flip
            logger.info("rating %r (%s%s) on screen at %.6f, volume index %s", a.due.spec.id, a.due.when,
                        "" if a.due.block is None else f" block {a.due.block}", t_flip, a.index)
        if self.closing:
            for shown in self.closing:
                shown.t_offset = t_flip
                self._publish(shown, t_flip)
            self.closing = []
            if self.active is None:
                self.t_idle = t_flip

    # ------------------------------------------------------------------ answers
    def key(self, name: str, t_key: float) -> bool:
        """A key press (at ``t_key``); True when it acted on the rating on screen."""
        role = self.keys.get(name)
        a = self.active
        if role is None or a is None or a.t_onset is None or t_key < a.t_onset:
            return False
        spec = a.due.spec
        if role == "confirm":
            if a.marker is None:
                return True  # nothing chosen yet
            self._close(a, a.marker, t_key, name)
            return True
        if a.marker is None:
            a.marker = spec.snap((spec.low + spec.high) / 2.0)
        else:
            a.marker = spec.snap(a.marker + (spec.key_step if role == "right" else -spec.key_step))
        a.n_moves += 1
        return True

    def click(self, value: float, t: float) -> bool:
        """A click on the scale chose ``value`` at ``t``; True when it answered the rating on screen."""
        a = self.active
        if not self.mouse or a is None or a.t_onset is None or t < a.t_onset:
            return False
        a.marker = a.due.spec.snap(value)
        self._close(a, a.marker, t, "mouse")
        return True

    def _close(self, a: Shown, value: float | None, t: float, response: str | None, timed_out: bool = False) -> None:
        a.value = value
        a.t_response = None if timed_out else t
        a.response = response
        a.timed_out = timed_out
        self.active = None
        self.closing.append(a)
        self._changed = True

    def _publish(self, a: Shown, now: float) -> None:
        spec = a.due.spec
        n, until = self.pending(now) if a.due.run_id == self.run_id else (0, None)
        fields: dict[str, Any] = {
            "text": spec.question,
            "value": a.value,
            "scale": [spec.low, spec.high],
            "when": a.due.when,
            "block": a.due.block,
            "condition": a.due.condition,
            "index": a.index,
            "t_onset": a.t_onset,
            "t_response": a.t_response,
            "response_time_s": None if a.t_response is None or a.t_onset is None else max(0.0, a.t_response - a.t_onset),
            "t_offset": a.t_offset,
            "timed_out": a.timed_out,
            "time_limit_s": spec.time_limit_s,
            "response": a.response,
            "n_moves": a.n_moves,
            "ratings_pending": n,
            "ratings_until": until,
        }
        self.published.append({"run_id": a.due.run_id, "question": spec.id, **fields})
        logger.info("rating %r: %s", spec.id, "no answer (time limit)" if a.timed_out else
                    f"{a.value:g} by {a.response} after {fields['response_time_s']:.3f} s")
        if self.send is not None:
            self.send(run_id=a.due.run_id, question=spec.id, **fields)
