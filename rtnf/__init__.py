"""rtnf: real-time fMRI neurofeedback.

The package is kept light at import time: the feedback screen imports
:mod:`rtnf.wire.messages` and must not pull in the processing stack.
"""

__version__ = "0.1.0"
