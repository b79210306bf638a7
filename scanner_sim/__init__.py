"""Scanner simulator: the stand-in for an MRI scanner.

``scanner_sim`` synthesises an fMRI run with known ground truth and writes it
into an export folder at TR pace, the way a scanner's real-time export does:
one NIfTI-1 per volume, one Siemens mosaic DICOM per volume, or one DICOM per
slice; it also replays real series (DICOM folder or 4D NIfTI), and injects
scanner faults (dropped, late, duplicated, out-of-order volumes, jitter, a
second series, the export folder vanishing). It never imports ``rtnf``: it is an independent producer
against which ``rtnf`` is tested.

Noise can be made realistic (``noise_preset = "realistic"``: AR(1) thermal
noise, polynomial and random-walk drifts, aliased cardiac and respiratory
fluctuations near CSF and vessels, motion-correlated signal at edges) or real
(``noise_from``: a real task-free series plus a known activation); the true
traces and nuisance time courses are written beside the truth. Two regions
can share a fluctuation whose correlation follows a condition's blocks
(``[[couplings]]``): known time-varying coupling, for connectivity feedback.
:func:`scanner_sim.generate.generate_run` writes a whole run into a folder at
once for tests.

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
physio
    Realistic noise parts: cardiac/respiratory traces, drifts, spatial weights.
physio_stream
    The cardiac/respiratory recording written as it happens during an export: a growing log, an LSL outlet.
realnoise
    A real series (4D NIfTI or DICOM folder) read onto its own grid for ``noise_from``.
generate
    :func:`generate_run`: a whole run and its truth written into a folder at once.
writer
    :class:`ScannerWriter`: a synthetic run written at TR pace (chunked, reopen, atomic).
dicom_writer
    Siemens mosaic (with CSA header) and per-slice DICOM encoders.
export
    The engine shared by synthetic runs and replays: pacing, faults, files.tsv, faults.tsv.
replay
    :class:`Replayer`: a real DICOM folder or 4D NIfTI replayed at TR pace.
cli
    The ``scanner-sim`` command.

Heavy modules (nilearn, scipy.ndimage) are imported only by the submodules
that need them, so ``import scanner_sim`` stays cheap.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
