"""The participant's feedback screen.

Modules
-------
link
    ZeroMQ link to rtnf and the pure :class:`~stimulus.link.ScreenState`
    (no PsychoPy).
geometry
    Colours and the thermometer's pixel geometry (no PsychoPy), re-exported by
    :mod:`stimulus.screen`.
screen
    The PsychoPy window that draws a :class:`~stimulus.link.ScreenState`.
cli
    The ``rtnf-screen`` console script (``python -m stimulus``).
xvfb
    Prefix for launching the screen on a virtual display when there is none.

Only :mod:`stimulus.screen` imports PsychoPy, and only the CLI imports it
(lazily), because ``import psychopy.visual`` fails without a display.
"""
