"""The numerical core: one volume in, ROI signals and a feedback value out.

Realignment (``motion``, ``reference``), quality checks (``quality``),
``preprocess`` (smoothing, ROI and brain sampling), the run's ``protocol`` and
``design``, the incremental ``glm``, the ROI model (``roi_model``) and the
whole-brain t-map (``wholebrain``), and ``feedback`` (scaling the cleaned
signal for the screen). No files, sockets or threads here.
"""
