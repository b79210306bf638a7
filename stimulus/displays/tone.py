"""The tone of conditions with ``tone = true``: its pitch and volume follow the value.

For eyes-closed designs. Each new value of such a condition (a continuous
value, or an intermittent score) plays one tone of ``tone.duration_s``,
cutting the previous one; a volume without a value plays nothing (silence is
the "no value" state, as the bar's grey indicator is on screen).

:class:`ToneFollower` decides, from the :class:`~stimulus.link.ScreenState`
alone, when to play and at which pitch and volume (no sound library, so the
mapping is tested anywhere). :class:`TonePlayer` drives the sound: PsychoPy's
``psychopy.sound.Sound``, opened when the screen starts (so a machine without
a working audio device fails there, with one clear message, and not at the
first value), or any object with the same four methods (``stop``,
``setSound``, ``setVolume``, ``play``) for tests. The frame loop calls
:meth:`Tones.update` just after the flip, so that the tone starts with the
frame showing the value and never delays it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from rtnf.wire.display import DisplayConfig, ToneDisplay
from stimulus.displays.geometry import clip01, lerp
from stimulus.link import ScreenState

logger = logging.getLogger("stimulus.tone")


class ToneUnavailable(RuntimeError):
    """A condition asks for a tone and no sound can be played on this machine."""


def tone_for(tone: ToneDisplay, value: float) -> tuple[float, float]:
    """Pitch in Hz and volume (0-1) of the tone for ``value`` (clipped to [0, 1]).

    The pitch moves geometrically from ``pitch_hz[0]`` to ``pitch_hz[1]``
    (equal steps of the value are equal musical intervals: with 220 and 880
    Hz, 0.5 is 440 Hz), the volume linearly.
    """
    u = clip01(value)
    lo, hi = tone.pitch_hz
    return lo * (hi / lo) ** u, lerp(tone.volume[0], tone.volume[1], u)


@dataclass(frozen=True)
class ToneCue:
    """One tone to play."""

    hz: float
    volume: float
    duration_s: float
    value: float
    index: int
    condition: str | None


class ToneFollower:
    """Which new value calls for a tone (pure: no sound library).

    Parameters
    ----------
    cfg : DisplayConfig
    """

    def __init__(self, cfg: DisplayConfig) -> None:
        self.cfg = cfg
        self._last: tuple[Any, ...] | None = None

    @staticmethod
    def wanted(cfg: DisplayConfig) -> bool:
        """Does any condition ask for a tone?"""
        return any(c.tone for c in cfg.conditions.values())

    def cue(self, state: ScreenState) -> ToneCue | None:
        """The tone for the latest feedback message, once per message; None when it calls for none.

        Only messages with a value, in a condition with ``tone = true``, while
        the run is going on.
        """
        fb = state.feedback
        if fb is None:
            return None
        key = (state.run_id, fb.index, fb.kind, fb.t_received)
        if key == self._last:
            return None
        self._last = key
        if fb.value is None or state.phase != "running" or not self.cfg.condition(fb.condition).tone:
            return None
        hz, volume = tone_for(self.cfg.tone, fb.value)
        return ToneCue(hz=hz, volume=volume, duration_s=self.cfg.tone.duration_s, value=fb.value,
                       index=fb.index, condition=fb.condition)


class Sound(Protocol):
    """What :class:`TonePlayer` needs of a sound (PsychoPy's ``sound.Sound`` has it)."""

    def stop(self) -> Any: ...
    def setSound(self, value: Any, secs: float = ...) -> Any: ...  # noqa: N802 (PsychoPy's names)
    def setVolume(self, newVol: float) -> Any: ...  # noqa: N802
    def play(self) -> Any: ...


def psychopy_sound(hz: float, secs: float, volume: float) -> Sound:
    """A PsychoPy tone (the audio library of PsychoPy's preferences).

    Raises
    ------
    ToneUnavailable
        When PsychoPy cannot open a sound here (no audio library or device).
    """
    try:
        from psychopy import sound

        return sound.Sound(value=hz, secs=secs, volume=volume, hamming=True)
    except Exception as exc:  # PsychoPy raises many kinds here (DependencyError, ImportError, PortAudio errors)
        raise ToneUnavailable(
            "a condition of [display] has tone = true, but PsychoPy cannot play sound on this machine "
            f"({type(exc).__name__}: {str(exc).strip() or 'no detail'}). Install an audio library PsychoPy "
            "supports (psychtoolbox, or sounddevice with PortAudio) and check the audio device, or set "
            "tone = false."
        ) from exc


class TonePlayer:
    """Plays cues on one sound object, re-tuned for each cue.

    Parameters
    ----------
    tone : ToneDisplay
    make_sound : callable, optional
        ``make_sound(hz, secs, volume)`` -> sound; default :func:`psychopy_sound`.
        Called once, here.
    """

    def __init__(self, tone: ToneDisplay,
                 make_sound: Callable[[float, float, float], Sound] | None = None) -> None:
        hz, volume = tone_for(tone, 0.5)
        self.sound = (make_sound or psychopy_sound)(hz, tone.duration_s, volume)
        self.played: list[ToneCue] = []
        """Every cue played (a run has at most a few thousand volumes)."""
        self.n_failed = 0

    def play(self, cue: ToneCue) -> None:
        """Stop the current tone and play ``cue``'s; a failure is logged, never raised (the screen goes on)."""
        try:
            self.sound.stop()
            self.sound.setSound(cue.hz, secs=cue.duration_s)
            self.sound.setVolume(cue.volume)
            self.sound.play()
        except Exception as exc:  # the audio device went away mid-run: keep the screen running
            self.n_failed += 1
            if self.n_failed == 1:
                logger.error("could not play the tone for volume %d: %s", cue.index, exc)
            return
        self.played.append(cue)


class Tones:
    """The frame loop's tones: the follower's cues played by the player.

    Parameters
    ----------
    cfg : DisplayConfig
    player : TonePlayer
    """

    def __init__(self, cfg: DisplayConfig, player: TonePlayer) -> None:
        self.follower = ToneFollower(cfg)
        self.player = player

    @classmethod
    def open(cls, cfg: DisplayConfig,
             make_sound: Callable[[float, float, float], Sound] | None = None) -> "Tones | None":
        """The tones of ``cfg``, None when no condition asks for one.

        Raises
        ------
        ToneUnavailable
            When a condition asks for a tone and no sound can be played.
        """
        if not ToneFollower.wanted(cfg):
            return None
        return cls(cfg, TonePlayer(cfg.tone, make_sound))

    def update(self, state: ScreenState) -> ToneCue | None:
        """Play the tone of a new value, if it calls for one; return its cue."""
        cue = self.follower.cue(state)
        if cue is not None:
            self.player.play(cue)
            logger.debug("tone %.1f Hz, volume %.2f for volume %d (value %.3f)", cue.hz, cue.volume,
                         cue.index, cue.value)
        return cue
