"""Feedback signals beyond ROI activity, as plugins: connectivity, decoding, a lab's own.

A signal is a :class:`~rtnf.analysis.signals.base.FeedbackSignal` subclass
named in the session config (``[signals.<name>] class = "..."``): a built-in
name, the name of a ``rtnf.signals`` entry point, or ``"module:Class"``
(:func:`~rtnf.analysis.signals.registry.load_signal_class`). Each volume it
gets a :class:`~rtnf.analysis.signals.base.VolumeInput` and returns one value;
``feedback.source = "<name>"`` feeds that value back instead of ROI activity.
"""

from .base import FeedbackSignal, SignalContext, SignalError, VolumeInput

__all__ = ["FeedbackSignal", "SignalContext", "SignalError", "VolumeInput"]
