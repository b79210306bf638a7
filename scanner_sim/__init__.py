"""Scanner simulator: the stand-in for an MRI scanner.

``scanner_sim`` synthesises an fMRI run with known ground truth and writes one
NIfTI-1 file per volume into an export folder at TR pace, the way a scanner's
real-time export does. It never imports ``rtnf``: it is an independent producer
against which ``rtnf`` is tested.

Modules
-------
spec
    :class:`RunSpec`, the validated description of a run (TOML or dict).
hrf
    SPM's canonical HRF and block responses.
phantom
    A noise-free EPI-like head built from nilearn's MNI152 templates.
synth
    :class:`SyntheticRun`: volumes generated lazily, plus the ground truth.
writer
    :class:`ScannerWriter`: files written at TR pace (chunked, reopen, atomic).
cli
    The ``scanner-sim`` command.

Heavy modules (nilearn, scipy.ndimage) are imported only by the submodules
that need them, so ``import scanner_sim`` stays cheap.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
