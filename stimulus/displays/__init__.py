"""Feedback displays beside the thermometer (issue 17, point 3), chosen per condition in ``[display]``.

``view = "gauge"``
    a needle over an arc (:class:`~stimulus.displays.geometry.GaugeGeometry`);
``view = "picture"``
    a picture whose size, opacity and colour follow the value
    (:mod:`stimulus.displays.picture`: the image file, or a flame drawn by code);
``view = "number"``
    the value as a number, written like the intermittent score (``[display.score]``);
``tone = true``
    a tone at each new value whose pitch and volume follow it, for eyes-closed
    designs (:mod:`stimulus.displays.tone`, PsychoPy's sound);
``bar.target_label``, ``bar.baseline_label``
    labels beside the target and baseline marks of the bar and of the gauge.

Modules
-------
geometry
    Pixel geometry and value mappings (no PsychoPy), for the screen and the tests.
picture
    The image of the picture view: loading a file, or the built-in flame (no PsychoPy).
tone
    When to play a tone and at which pitch and volume (pure), and the player
    (PsychoPy's sound, imported when a condition asks for a tone).
draw
    The PsychoPy stimuli of the displays, drawn by :class:`~stimulus.screen.FeedbackScreen`.

A volume without a value shows the bar's "no value" state on every display:
the display holds the last value, and ``bar.null_text`` shows under it in
``bar.null_colour`` (the tone stays silent).
"""

from __future__ import annotations

FEEDBACK_VIEWS: tuple[str, ...] = ("bar", "gauge", "picture", "number")
"""Condition views that show the feedback value (the others: "fixation", "text")."""
NEW_VIEWS: tuple[str, ...] = ("gauge", "picture", "number")
"""The views drawn by :mod:`stimulus.displays.draw` (the bar is the screen's own)."""
