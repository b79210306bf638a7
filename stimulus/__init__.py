"""The participant's feedback screen.

Modules
-------
link
    ZeroMQ link to rtnf and the pure :class:`~stimulus.link.ScreenState`
    (no PsychoPy).
geometry
    Colours and the thermometer's pixel geometry (no PsychoPy), re-exported by
    :mod:`stimulus.screen`.
scene
    What to draw (view, texts, colours, the bar's glide) from a
    :class:`~stimulus.link.ScreenState` and the ``[display]`` config
    (:mod:`rtnf.wire.display`); no PsychoPy.
screen
    The PsychoPy window that draws a :class:`~stimulus.scene.Scene`.
displays
    The feedback displays beside the thermometer, chosen per condition: a
    gauge, a picture, a number, a tone, and labels of the target and baseline
    marks (only :mod:`stimulus.displays.draw` imports PsychoPy's visual module).
rating
    Ratings (visual analogue scales of ``[[display.ratings]]``): when each is
    due, the keys and clicks that answer it, its ``rating`` message; no
    PsychoPy. :mod:`stimulus.rating_view` draws them (PsychoPy's Slider).
timing
    Receive-to-flip latency (median, p95, p99) from the flip log.
docs
    ``python -m stimulus.docs``: a PNG of every screen and state
    (``docs/screens``).
cli
    The ``rtnf-screen`` console script (``python -m stimulus``).
xvfb
    Prefix for launching the screen on a virtual display when there is none.

Only :mod:`stimulus.screen` imports PsychoPy, and only the CLI imports it
(lazily), because ``import psychopy.visual`` fails without a display.
"""
