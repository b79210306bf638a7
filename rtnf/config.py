"""Session configuration: TOML files validated when loaded.

:func:`load_config` reads a TOML file, checks every key and value, resolves
relative paths against the file's folder and checks the cross-references
(the feedback ROI exists, blocks do not overlap, the protocol fits the run,
ROIs lie in the field of view of the reference volume). Any problem raises
:class:`ConfigError` with one message that names the key, the bad value and
what is allowed.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from .wire._validation import format_validation_error
from rtnf.wire.display import DisplayConfig
from rtnf.wire.messages import DEFAULT_ADDRESS, DEFAULT_SCREEN_ADDRESS
from rtnf.wire.pubsocket import is_loopback
from rtnf.wire.topics import Direction
from rtnf.analysis.protocol import Block, Protocol, ProtocolError

LABEL = r"^[A-Za-z0-9]+$"  # BIDS labels: alphanumeric only
# Generous but finite bounds: a value outside them is a typo, never a run (issue 15).
MAX_LABEL = 64
MAX_VOLUMES = 100_000
MAX_SECONDS = 86_400.0  # one day, for onsets and durations
MAX_MM = 10_000.0
# TOML has no path type: paths are strings, converted (the only non-strict field).
FilePath = Annotated[Path, Field(strict=False)]


class ConfigError(ValueError):
    """A configuration that cannot be used; the message says why and what is allowed."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SessionConfig(_Model):
    """BIDS labels of the run."""

    subject: Annotated[str, Field(pattern=LABEL, max_length=MAX_LABEL)]
    session: Annotated[str, Field(pattern=LABEL, max_length=MAX_LABEL)] = "01"
    task: Annotated[str, Field(pattern=LABEL, max_length=MAX_LABEL)] = "nf"
    run: Annotated[int, Field(ge=1, le=9999)] = 1


class ScannerConfig(_Model):
    """Where and how the scanner exports volumes."""

    export_dir: FilePath
    format: Literal["auto", "nifti", "dicom", "parrec"] = "auto"
    tr_s: Annotated[float, Field(gt=0, le=60)]
    n_volumes: Annotated[int, Field(ge=1, le=MAX_VOLUMES)]
    dummy_volumes: Annotated[int, Field(ge=0, le=MAX_VOLUMES)] = 0
    # File names: a regular expression or a template such as
    # "001_{series:06d}_{volume:06d}.dcm"; the volume number comes from the
    # 'volume' group/field, else from the header (DICOM) or the last number in
    # a NIfTI file's name. Without either, every non-hidden file is considered.
    filename_regex: Optional[str] = None
    filename_template: Optional[str] = None
    first_volume_number: Annotated[int, Field(ge=0, le=10**9)] = 1
    # Series selection: this series number, else the first series that starts
    # after the run does (with expected_matrix when given); others are logged once.
    series_number: Optional[Annotated[int, Field(ge=0, le=10**9)]] = None
    expected_matrix: Optional[Annotated[list[Annotated[int, Field(ge=1, le=4096)]], Field(min_length=2, max_length=3)]] = None
    slices_per_volume: Optional[Annotated[int, Field(ge=1, le=4096)]] = None
    watch: Literal["inotify", "polling"] = "inotify"
    poll_interval_s: Annotated[float, Field(gt=0, le=5)] = 0.05
    # A file that stays incomplete this long with a constant size is logged once and dropped.
    stale_after_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    missing_timeout_s: Optional[Annotated[float, Field(gt=0, le=3600)]] = None
    reference_volume: Optional[FilePath] = None
    # Multi-echo: echoes per volume (each echo its own file, or the frames of one NIfTI file; a volume is
    # complete when all its echoes are), and their echo times in ms when the headers do not say
    # (DICOM EchoTime, NIfTI descrip "TE=<ms>"); see rtnf.scanner.echoes and [multiecho].
    echoes: Annotated[int, Field(ge=1, le=8)] = 1
    echo_times_ms: Optional[Annotated[list[Annotated[float, Field(gt=0, le=1000)]],
                                      Field(min_length=2, max_length=8)]] = None


class MultiEchoConfig(_Model):
    """How the echoes of a multi-echo volume are combined (:mod:`rtnf.analysis.multiecho`)."""

    # The T2* map behind the weights is fitted on this many first volumes (after the dummies).
    fit_volumes: Annotated[int, Field(ge=2, le=1000)] = 10
    # Until then: the plain mean of the echoes, or the echo closest to 30 ms.
    before_fit: Literal["mean", "closest_30ms"] = "mean"


# Bounded like the screen's checks of the wire (stimulus/link.py): names and texts the screen shows.
ConditionName = Annotated[str, Field(min_length=1, max_length=64)]
InstructionText = Annotated[str, Field(max_length=200)]


class BlockConfig(_Model):
    condition: ConditionName
    onset: Annotated[float, Field(ge=0, le=MAX_SECONDS)]
    duration: Annotated[float, Field(gt=0, le=MAX_SECONDS)]


class PatternStep(_Model):
    condition: ConditionName
    duration: Annotated[float, Field(gt=0, le=MAX_SECONDS)]


class PatternConfig(_Model):
    """A sequence of blocks repeated ``repeat`` times from ``onset``."""

    steps: Annotated[list[PatternStep], Field(min_length=1)]
    repeat: Annotated[int, Field(ge=1, le=MAX_VOLUMES)] = 1
    onset: Annotated[float, Field(ge=0, le=MAX_SECONDS)] = 0.0


class ProtocolConfig(_Model):
    units: Literal["volumes", "seconds"] = "volumes"
    baseline: ConditionName
    conditions: Optional[Annotated[list[ConditionName], Field(max_length=64)]] = None
    blocks: list[BlockConfig] = []
    pattern: Optional[PatternConfig] = None
    instructions: dict[str, InstructionText] = {}
    # Task condition -> which way of the ROI's signal is success in its blocks; task conditions not
    # listed increase, the baseline has none (see rtnf.analysis.protocol.Protocol.directions).
    directions: Annotated[dict[ConditionName, Direction], Field(max_length=64)] = {}


class RoiConfig(_Model):
    """A sphere (``center_mm`` and ``radius_mm``) or a NIfTI ``mask``."""

    center_mm: Optional[Annotated[list[Annotated[float, Field(ge=-MAX_MM, le=MAX_MM)]], Field(min_length=3, max_length=3)]] = None
    radius_mm: Optional[Annotated[float, Field(gt=0, le=50)]] = None
    mask: Optional[FilePath] = None


class ModelConfig(_Model):
    hrf: Literal["spm", "spm + derivative", "glover"] = "spm"
    drift_cutoff_s: Annotated[float, Field(gt=0, le=MAX_SECONDS)] = 128.0
    # Motion parameters as nuisance regressors: 6, 12 (with derivatives) or 24 (and squares).
    motion_regressors: Literal[0, 6, 12, 24] = 0
    # Fit every brain voxel too: betas and a t-map of `contrast` after every volume.
    whole_brain: bool = False
    # The task condition whose regressor the t-map tests (default: the first one).
    contrast: Optional[str] = None


class PhysioConfig(_Model):
    """Physiological noise regressors: RETROICOR and RVT (``[confounds.physio]``, :mod:`rtnf.analysis.confounds.physio`).

    The recording comes from a growing text log (``log``) or an LSL stream
    (``lsl_name`` / ``lsl_type``). Columns (log) or channels (LSL) are 0-based
    indices, or header names for a log whose last header line names them.
    Clock: a time column is in seconds (times ``time_unit_s``) from the
    acquisition start of the scanner's first volume (dummies included) plus
    ``time_offset_s``; without one, sample n of the log is at ``n / sampling_hz``
    on that clock, and an LSL stream's own timestamps are matched with the
    volumes' acquisition times.
    """

    log: Optional[str] = None  # relative to the export folder (the scanner writes it beside the images)
    lsl_name: Optional[str] = None
    lsl_type: Optional[str] = None
    delimiter: Optional[str] = None  # None: any whitespace
    header_lines: Annotated[int, Field(ge=0, le=1000)] = 0
    time_column: Optional[int | str] = None
    cardiac_column: Optional[int | str] = None
    resp_column: Optional[int | str] = None
    sampling_hz: Optional[Annotated[float, Field(gt=0, le=10000)]] = None
    time_unit_s: Annotated[float, Field(gt=0)] = 1.0  # 0.001 for a time column in ms
    time_offset_s: float = 0.0
    sample_offset_s: Annotated[float, Field(ge=0, le=60)] = 0.0  # when in the volume to sample (e.g. the ROI's slices)
    cardiac_order: Annotated[int, Field(ge=0, le=6)] = 2
    resp_order: Annotated[int, Field(ge=0, le=6)] = 2
    rvt: bool = True
    rvt_rrf: bool = True  # convolve RVT with the respiration response function (Birn et al. 2008)
    max_wait_s: Annotated[float, Field(ge=0, le=1)] = 0.05
    buffer_s: Annotated[float, Field(ge=30, le=3600)] = 300.0


class TissueConfig(_Model):
    """White-matter, CSF, CompCor and global signals (``[confounds.tissue]``, :mod:`rtnf.analysis.confounds.tissue`)."""

    # Which signals: mean WM and CSF signals, anatomical CompCor (WM/CSF masks), temporal CompCor (no anatomy),
    # and the global signal (all brain voxels; only when listed: it also removes widespread neural signal).
    signals: Annotated[list[Literal["white_matter", "csf", "acompcor", "tcompcor", "global_signal"]],
                       Field(min_length=1, max_length=5)] = ["acompcor"]
    # Masks on the functional grid (relative to the config's folder); `rtnf roi tissue` writes eroded ones.
    wm_mask: Optional[FilePath] = None
    csf_mask: Optional[FilePath] = None
    # CompCor components kept (per tissue with acompcor_masks = "separate").
    n_components: Annotated[int, Field(ge=1, le=20)] = 5
    acompcor_masks: Literal["combined", "separate"] = "combined"
    # Components fixed from a localizer 4-D NIfTI on the run's grid, else from the run's first fit_volumes
    # volumes (CompCor columns are 0 until then); the WM/CSF/global means are z-scored with a running
    # estimate over the same first volumes, then frozen.
    fit_from: Optional[FilePath] = None
    fit_volumes: Annotated[int, Field(ge=10, le=1000)] = 30
    # tCompCor: fraction of brain voxels with the largest temporal SD.
    tcompcor_fraction: Annotated[float, Field(gt=0, le=0.5)] = 0.02


class ConfoundsConfig(_Model):
    """Confound regressors that arrive with each volume; each table present turns its source on."""

    physio: Optional[PhysioConfig] = None
    tissue: Optional[TissueConfig] = None


class MotionConfig(_Model):
    """Rigid-body realignment of every volume (see :mod:`rtnf.analysis.motion`)."""

    enabled: bool = True
    # "first": the first kept volume; or a NIfTI on the functional grid, in any voxel order (rtnf.analysis.reference).
    reference: Literal["first"] | FilePath = "first"
    sigma_vox: Annotated[float, Field(ge=0, le=5)] = 1.0
    # Gaussian smoothing of the realigned data before ROI sampling (0: none).
    fwhm_mm: Annotated[float, Field(ge=0, le=20)] = 0.0


class SliceTimingConfig(_Model):
    """Real-time slice-timing correction (``[slice_timing]``, :mod:`rtnf.analysis.slicetiming`); off by default.

    Slice times come from ``slice_times_s`` or ``order`` when given, else from the volumes' headers
    (Siemens ``MosaicRefAcqTimes``, enhanced DICOM frame times, a NIfTI's BIDS sidecar).
    """

    enabled: bool = False
    # Seconds from the volume's start, one per slice along the slice axis (index 0 first); below scanner.tr_s.
    slice_times_s: Optional[Annotated[list[Annotated[float, Field(ge=0, le=60)]],
                                      Field(min_length=2, max_length=1024)]] = None
    # A single-band order instead of the list: slices TR / n apart (rtnf.analysis.slicetiming.ORDERS).
    order: Optional[Literal["ascending", "descending", "interleaved", "interleaved_siemens"]] = None
    # The time every slice is moved to: "first" (the earliest slice, the only choice that never
    # extrapolates in real time) or seconds from the volume's start.
    reference: Literal["first"] | Annotated[float, Field(ge=0, le=60)] = "first"
    # "linear" (last 2 volumes) or "cubic" (Lagrange through the last 4).
    method: Literal["linear", "cubic"] = "linear"


class QualityConfig(_Model):
    """Per-volume quality checks and what the feedback does for a censored volume."""

    fd_threshold_mm: Annotated[float, Field(gt=0, le=100)] = 0.5
    spike_z: Annotated[float, Field(gt=0, le=1000)] = 5.0
    censor_action: Literal["hold", "null", "keep"] = "hold"


class ShapingConfig(_Model):
    """``[feedback.shaping]``: adaptive success thresholds across blocks, runs and sessions (OpenNFT's shaping).

    A regulation block succeeds when its value (the mean feedback signal over the block shifted by the
    hemodynamic lag, oriented as success) exceeds ``percentile`` of the previous blocks' values: those of
    this run and, with ``history`` "session" or "study", of the participant's earlier feedback runs in the
    same derivatives dataset (read from their recorded tables). See :mod:`rtnf.analysis.shaping`.
    """

    # 50: the median of the previous blocks, as OpenNFT's intermittent PSC feedback.
    percentile: Annotated[float, Field(ge=0, le=100)] = 50.0
    # Which earlier blocks count: this run's only, also the same session's earlier runs, or every session's.
    history: Literal["study", "session", "run"] = "study"
    # Until this many previous blocks exist the threshold is 0: the block must beat its baseline.
    min_blocks: Annotated[int, Field(ge=1, le=10_000)] = 2
    # Only the most recent blocks of the history (OpenNFT: 3); default: all of them.
    last_blocks: Optional[Annotated[int, Field(ge=1, le=10_000)]] = None


class FeedbackConfig(_Model):
    """How ROI values become the value on the screen (see :mod:`rtnf.analysis.feedback`)."""

    # false: a localizer or transfer run; everything is computed and recorded, nothing is shown.
    enabled: bool = True
    roi: str | Annotated[list[str], Field(min_length=1)]
    combine: Literal["mean", "median"] = "mean"
    reference_roi: Optional[str] = None
    signal: Literal["psc", "beta", "t"] = "psc"
    baseline: Literal["block", "running"] = "block"
    running_baseline_s: Annotated[float, Field(gt=0, le=MAX_SECONDS)] = 30.0
    window_s: Annotated[float, Field(gt=0, le=MAX_SECONDS)] = 30.0
    kind: Literal["continuous", "intermittent"] = "continuous"
    hemodynamic_lag_s: Annotated[float, Field(ge=0, le=20)] = 6.0
    intermittent_display_s: Annotated[float, Field(gt=0, le=3600)] = 4.0
    despike: bool = False
    despike_threshold: Annotated[float, Field(gt=0, le=1000)] = 3.0
    smoothing_alpha: Optional[Annotated[float, Field(gt=0, le=1)]] = None
    # "adaptive": scale_range stretched or shrunk to the participant's own signal
    # (see rtnf.analysis.feedback.AdaptiveScaler); "fixed": scale_range as it is;
    # "dynamic": the range of the values seen so far.
    scaling: Literal["adaptive", "fixed", "dynamic"] = "adaptive"
    # Signal values (percent, beta or t) shown as an empty and a full bar, clipped outside
    # (with adaptive scaling: before the range adapts, and where zero sits on the bar).
    scale_range: Annotated[list[Annotated[float, Field(ge=-1e6, le=1e6)]], Field(min_length=2, max_length=2)] = [-1.0, 2.0]
    min_baseline_volumes: Annotated[int, Field(ge=1, le=MAX_VOLUMES)] = 3
    sham_from: Optional[FilePath] = None
    # The [signals.<name>] whose value is fed back (connectivity, a decoder, a plugin), scaled like ROI
    # activity; default: ROI activity (roi, signal, reference_roi).
    source: Optional[Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,39}$")]] = None
    # Adaptive success thresholds ([feedback.shaping]); without it a block succeeds when it beats its baseline.
    shaping: Optional[ShapingConfig] = None

    @property
    def targets(self) -> list[str]:
        """Target ROI names as a list."""
        return [self.roi] if isinstance(self.roi, str) else list(self.roi)


class PublishConfig(_Model):
    address: str = DEFAULT_ADDRESS
    heartbeat_s: Annotated[float, Field(gt=0, le=10)] = 1.0
    # Slices of the latest volume (and t-map) for the console, every volume.
    preview: bool = True
    # A folder made by `rtnf keys`: ZeroMQ CURVE encryption and client authentication.
    curve_keys: Optional[FilePath] = None
    # The feedback screen's acknowledgement address (`rtnf-screen --ack-address`): rtnf subscribes to it
    # and records what the participant saw and pressed (displayed, keys) with the run's outputs.
    screen_address: str = DEFAULT_SCREEN_ADDRESS
    # CURVE keys for that subscription when the screen uses --ack-curve-keys: a folder holding the
    # screen's public key (rtnf.key) and this client's secret key (operator.key_secret).
    screen_curve_keys: Optional[FilePath] = None


class OutputConfig(_Model):
    dir: FilePath
    # Keep every received volume in the run's 4D NIfTI (desc-rtnf_bold.nii), as received.
    save_volumes: bool = True
    # How the scanner's file names appear in the table, messages and logs: "as_is", or "hash" (the volume
    # number and a short salted hash: for sites whose exported files are named after the patient).
    file_names: Literal["as_is", "hash"] = "as_is"


class Config(_Model):
    """A whole session configuration (one run)."""

    session: SessionConfig
    scanner: ScannerConfig
    protocol: ProtocolConfig
    rois: Annotated[dict[str, RoiConfig], Field(min_length=1)]
    model: ModelConfig = ModelConfig()
    multiecho: MultiEchoConfig = MultiEchoConfig()
    confounds: ConfoundsConfig = ConfoundsConfig()
    motion: MotionConfig = MotionConfig()
    slice_timing: SliceTimingConfig = SliceTimingConfig()
    quality: QualityConfig = QualityConfig()
    feedback: FeedbackConfig
    publish: PublishConfig = PublishConfig()
    display: DisplayConfig = DisplayConfig()
    output: OutputConfig
    # Feedback signals beyond ROI activity, each a table with a "class" (rtnf.analysis.signals): computed
    # every volume and recorded as signal_<name>; feedback.source picks the one shown.
    signals: Annotated[dict[Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,39}$")], dict[str, Any]],
                       Field(max_length=16)] = {}
    _base_dir: Optional[Path] = PrivateAttr(default=None)

    @property
    def base_dir(self) -> Optional[Path]:
        """Folder of the config file (relative paths in it are relative to this folder)."""
        return self._base_dir

    @property
    def n_kept_volumes(self) -> int:
        """Volumes after the dummies: the ones the model and feedback see."""
        return self.scanner.n_volumes - self.scanner.dummy_volumes

    def make_protocol(self) -> Protocol:
        """Lay the protocol out on the run (see :mod:`rtnf.analysis.protocol`)."""
        return _make_protocol(self)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Load and validate a session config.

    Parameters
    ----------
    path : str or Path
        TOML file. Relative paths inside it are relative to its folder.
    overrides : dict, optional
        Dotted keys to replace after reading (for example
        ``{"scanner.export_dir": "/tmp/x"}``), validated like the file.

    Returns
    -------
    Config

    Raises
    ------
    ConfigError
        With one message naming the key, the bad value and what is allowed.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for key, value in (overrides or {}).items():
        _set_dotted(raw, key, value)
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: " + format_validation_error(exc, Config, "")) from None
    cfg = _resolve_paths(cfg, path.resolve().parent)
    cfg._base_dir = path.resolve().parent
    try:
        _check_consistency(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return cfg


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


# ---------------------------------------------------------------- paths and cross-checks


def _check_echoes(sc: ScannerConfig) -> None:
    """Echo times agree with the echo count, increase, and multi-echo data come one file per echo."""
    tes = sc.echo_times_ms
    if tes is not None and len(tes) != sc.echoes:
        raise ConfigError(f"invalid value for 'scanner.echo_times_ms': {tes} gives {len(tes)} echo times for "
                          f"scanner.echoes = {sc.echoes}. Allowed: one echo time (ms) per echo.")
    if tes is not None and any(b <= a for a, b in zip(tes, tes[1:])):
        raise ConfigError(f"invalid value for 'scanner.echo_times_ms': {tes}. Allowed: increasing echo times (ms).")
    if sc.echoes > 1 and (sc.slices_per_volume is not None or sc.format == "parrec"):
        what = "scanner.slices_per_volume" if sc.slices_per_volume is not None else "scanner.format = \"parrec\""
        raise ConfigError(f"scanner.echoes = {sc.echoes} with {what}: multi-echo volumes are read one file per echo "
                          "(NIfTI, Siemens mosaic or enhanced DICOM) or as the frames of one NIfTI file. "
                          "Allowed: scanner.echoes = 1 for slice files and PAR/REC.")


def _resolve_paths(cfg: Config, base: Path) -> Config:
    def resolve(p: Path | None) -> Path | None:
        return None if p is None else (p if p.is_absolute() else (base / p)).resolve()

    scanner = cfg.scanner.model_copy(
        update={
            "export_dir": resolve(cfg.scanner.export_dir),
            "reference_volume": resolve(cfg.scanner.reference_volume),
        }
    )
    rois = {name: roi.model_copy(update={"mask": resolve(roi.mask)}) for name, roi in cfg.rois.items()}
    output = cfg.output.model_copy(update={"dir": resolve(cfg.output.dir)})
    feedback = cfg.feedback.model_copy(update={"sham_from": resolve(cfg.feedback.sham_from)})
    publish = cfg.publish.model_copy(update={"curve_keys": resolve(cfg.publish.curve_keys),
                                             "screen_curve_keys": resolve(cfg.publish.screen_curve_keys)})
    motion = cfg.motion
    if motion.reference != "first":
        motion = motion.model_copy(update={"reference": resolve(Path(motion.reference))})
    return cfg.model_copy(
        update={"scanner": scanner, "rois": rois, "output": output, "feedback": feedback, "motion": motion,
                "publish": publish}
    )


def _check_signals(cfg: Config) -> None:
    """Every [signals.<name>] table builds (its class exists and takes its keys); feedback.source names one."""
    from rtnf.analysis.signals.base import SignalError
    from rtnf.analysis.signals.registry import make_signal

    for name, table in cfg.signals.items():
        try:
            make_signal(name, table)
        except SignalError as exc:
            raise ConfigError(str(exc) if str(exc).startswith("invalid value") or str(exc).startswith("signals.")
                              else f"invalid value for 'signals.{name}.class': {exc}") from None
    source = cfg.feedback.source
    if source is not None and source not in cfg.signals:
        allowed = ", ".join(sorted(cfg.signals)) or "none is configured"
        raise ConfigError(f"invalid value for 'feedback.source': {source!r} is not a [signals.<name>] table. "
                          f"Allowed: a configured signal ({allowed}), or leave it out for ROI activity.")


def _check_physio(ph: PhysioConfig | None) -> None:
    """A physiological recording has one source, the columns its terms need, and a clock."""
    if ph is None:
        return
    key = "confounds.physio"
    lsl = ph.lsl_name is not None or ph.lsl_type is not None
    if (ph.log is None) == (not lsl):
        raise ConfigError(f"invalid '[{key}]': {'both' if lsl else 'neither'} 'log' and 'lsl_name'/'lsl_type' set. "
                          "Allowed: a growing text log (log = \"physio.log\") or an LSL stream, one of them.")
    needs = (("cardiac_column", ph.cardiac_order > 0, "cardiac_order = 0"),
             ("resp_column", ph.resp_order > 0 or ph.rvt, "resp_order = 0 and rvt = false"))
    for name, needed, off in needs:
        if needed and getattr(ph, name) is None:
            raise ConfigError(f"missing key '{key}.{name}' (the column of that signal, 0-based or its header name), "
                              f"or set {key}.{off}.")
    if ph.cardiac_order == 0 and ph.resp_order == 0 and not ph.rvt:
        raise ConfigError(f"invalid '[{key}]': no regressor asked for. Allowed: cardiac_order or resp_order > 0, "
                          "or rvt = true.")
    if ph.log is not None and ph.time_column is None and ph.sampling_hz is None:
        raise ConfigError(f"missing key '{key}.time_column' or '{key}.sampling_hz': a log needs one to place its "
                          "samples in time.")
    columns = [c for c in (ph.time_column, ph.cardiac_column, ph.resp_column) if c is not None]
    if lsl and any(isinstance(c, str) for c in columns):
        raise ConfigError(f"invalid '[{key}]': LSL channels are 0-based indices, not names ({columns}).")
    if any(isinstance(c, int) and c < 0 for c in columns):
        raise ConfigError(f"invalid '[{key}]': column indices are 0-based, >= 0 ({columns}).")
    if any(isinstance(c, str) for c in columns) and ph.header_lines == 0:
        raise ConfigError(f"invalid '[{key}]': columns named {[c for c in columns if isinstance(c, str)]} need "
                          "header_lines >= 1 (the last header line names the columns), or give 0-based indices.")


def resolve_path(path: Path | None, base_dir: Path | None) -> Path | None:
    """A config path made absolute against the config's folder (as given when absolute or without a folder)."""
    if path is None:
        return None
    path = Path(path)
    return path if path.is_absolute() or base_dir is None else (Path(base_dir) / path).resolve()


def check_tissue(tissue: TissueConfig, base_dir: Path | None) -> None:
    """Cross-checks of ``[confounds.tissue]`` that do not need the run: masks given and present for what is asked.

    Run when the config is loaded and again where the source is built
    (:class:`rtnf.analysis.confounds.tissue.TissueRegressors`), for a table made in code.

    Parameters
    ----------
    tissue : TissueConfig
        The table.
    base_dir : Path, optional
        Folder of the session config: relative mask and localizer paths are relative to it.

    Raises
    ------
    ConfigError
        With one message naming the key.
    """
    signals = set(tissue.signals)
    needs = {"wm_mask": ("white_matter",), "csf_mask": ("csf",)}
    for key, users in needs.items():
        for signal in users:
            if signal in signals and getattr(tissue, key) is None:
                raise ConfigError(f"missing key 'confounds.tissue.{key}': signals lists {signal!r}, which needs it. "
                                  f"Allowed: a mask on the functional grid (`rtnf roi tissue -r ref.nii.gz -o DIR/` "
                                  f"writes one), or leave {signal!r} out.")
    if "acompcor" in signals:
        if tissue.wm_mask is None and tissue.csf_mask is None:
            raise ConfigError("missing key 'confounds.tissue.wm_mask': aCompCor needs wm_mask and/or csf_mask. "
                              "Allowed: masks on the functional grid (`rtnf roi tissue`), or \"tcompcor\" without "
                              "anatomy.")
        if tissue.acompcor_masks == "separate" and (tissue.wm_mask is None or tissue.csf_mask is None):
            raise ConfigError("invalid value for 'confounds.tissue.acompcor_masks': \"separate\" needs both wm_mask "
                              "and csf_mask. Allowed: \"combined\".")
    for key in ("wm_mask", "csf_mask", "fit_from"):
        try:  # a NUL byte or an over-long name raises instead of answering "no such file"
            path = resolve_path(getattr(tissue, key), base_dir)
            found = path is None or path.is_file()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"invalid value for 'confounds.tissue.{key}': not a usable path "
                              f"({type(exc).__name__}: {str(exc)[:80]}).") from None
        if not found:
            raise ConfigError(f"invalid value for 'confounds.tissue.{key}': file not found: {path}.")
    if tissue.fit_from is not None and not ({"acompcor", "tcompcor"} & signals):
        raise ConfigError("invalid value for 'confounds.tissue.fit_from': no CompCor signal is asked for. "
                          "Allowed: leave it out, or add \"acompcor\" or \"tcompcor\" to signals.")


def _check_consistency(cfg: Config) -> None:
    _check_signals(cfg)
    _check_physio(cfg.confounds.physio)
    _check_echoes(cfg.scanner)
    _check_slice_timing(cfg)
    sc = cfg.scanner
    out_dir, export_dir = cfg.output.dir, sc.export_dir
    if out_dir is not None and export_dir is not None and (out_dir == export_dir or export_dir in out_dir.parents):
        raise ConfigError(
            f"invalid value for 'output.dir': {out_dir} is {'' if out_dir == export_dir else 'inside '}"
            f"scanner.export_dir ({export_dir}): rtnf would watch its own outputs as scanner files. "
            "Allowed: a folder outside the export folder."
        )
    if sc.dummy_volumes >= sc.n_volumes:
        raise ConfigError(
            f"invalid value for 'scanner.dummy_volumes': {sc.dummy_volumes}. "
            f"Allowed: fewer than scanner.n_volumes ({sc.n_volumes})."
        )
    if sc.filename_regex is not None and sc.filename_template is not None:
        raise ConfigError(
            "both 'scanner.filename_regex' and 'scanner.filename_template' are set. Allowed: one of them."
        )
    if sc.filename_regex is not None:
        try:
            re.compile(sc.filename_regex)
        except re.error as exc:
            raise ConfigError(
                f"invalid value for 'scanner.filename_regex': {sc.filename_regex!r} is not a regular "
                f"expression ({exc})."
            ) from None
    if sc.filename_template is not None:
        from rtnf.scanner.export import template_to_regex

        try:
            template_to_regex(sc.filename_template)
        except ValueError as exc:
            raise ConfigError(f"invalid value for 'scanner.filename_template': {exc}.") from None
    if cfg.motion.reference != "first" and not Path(cfg.motion.reference).is_file():
        raise ConfigError(
            f"invalid value for 'motion.reference': file not found: {cfg.motion.reference}. "
            "Allowed: \"first\" (the first kept volume) or a NIfTI file on the functional grid."
        )
    _check_drift_cutoff(cfg)
    if cfg.model.motion_regressors and not cfg.motion.enabled:
        raise ConfigError(
            f"invalid value for 'model.motion_regressors': {cfg.model.motion_regressors} needs motion.enabled = true. "
            "Allowed: 0 when motion correction is off."
        )
    if sc.reference_volume is not None and not sc.reference_volume.is_file():
        raise ConfigError(
            f"invalid value for 'scanner.reference_volume': file not found: {sc.reference_volume}."
        )
    for name, roi in cfg.rois.items():
        _check_roi(name, roi)
    _check_files(cfg)
    fb = cfg.feedback
    for name in fb.targets + ([fb.reference_roi] if fb.reference_roi else []):
        if name not in cfg.rois:
            key = "feedback.reference_roi" if name == fb.reference_roi else "feedback.roi"
            raise ConfigError(
                f"invalid value for '{key}': {name!r}. "
                f"Allowed: one of the ROIs defined under [rois]: {', '.join(map(repr, cfg.rois))}."
            )
    if fb.reference_roi in fb.targets:
        raise ConfigError(
            f"invalid value for 'feedback.reference_roi': {fb.reference_roi!r} is also a target in feedback.roi. "
            "Allowed: an ROI other than the targets."
        )
    lo, hi = fb.scale_range
    if not lo < hi:
        raise ConfigError(
            f"invalid value for 'feedback.scale_range': {fb.scale_range}. "
            "Allowed: [low, high] with low < high (in the units of feedback.signal)."
        )
    if fb.sham_from is not None and not fb.sham_from.is_file():
        raise ConfigError(f"invalid value for 'feedback.sham_from': file not found: {fb.sham_from}.")
    if cfg.publish.curve_keys is not None and not (cfg.publish.curve_keys / "rtnf.key_secret").is_file():
        raise ConfigError(
            f"invalid value for 'publish.curve_keys': {cfg.publish.curve_keys} has no rtnf.key_secret. "
            "Allowed: a folder made by `rtnf keys FOLDER`."
        )
    if cfg.publish.screen_curve_keys is not None and not (cfg.publish.screen_curve_keys / "rtnf.key").is_file():
        raise ConfigError(
            f"invalid value for 'publish.screen_curve_keys': {cfg.publish.screen_curve_keys} has no rtnf.key "
            "(the screen's public key). Allowed: a folder made by `rtnf keys FOLDER --client operator` on the "
            "screen's machine, with operator.key_secret."
        )
    if not cfg.publish.screen_address.startswith(("tcp://", "ipc://")):
        raise ConfigError(
            f"invalid value for 'publish.screen_address': {cfg.publish.screen_address!r}. "
            "Allowed: a ZeroMQ address such as 'tcp://127.0.0.1:5556'."
        )
    if not cfg.publish.address.startswith(("tcp://", "ipc://", "inproc://")):
        raise ConfigError(
            f"invalid value for 'publish.address': {cfg.publish.address!r}. "
            "Allowed: a ZeroMQ address such as 'tcp://127.0.0.1:5555' or 'ipc:///tmp/rtnf'."
        )
    protocol = _make_protocol(cfg)
    if cfg.model.contrast is not None and cfg.model.contrast not in protocol.task_conditions:
        raise ConfigError(
            f"invalid value for 'model.contrast': {cfg.model.contrast!r}. "
            f"Allowed: one of the task conditions {list(protocol.task_conditions)}."
        )
    for cond in cfg.display.conditions:
        if cond not in protocol.conditions:
            raise ConfigError(
                f"unknown condition in 'display.conditions.{cond}'. Allowed: {list(protocol.conditions)}."
            )
    if sc.reference_volume is not None:
        # Imported here: nibabel is only needed when a reference is given.
        from rtnf.analysis.rois import RoiError, load_grid, make_roi

        grid = load_grid(sc.reference_volume)
        for name, roi in cfg.rois.items():
            try:
                make_roi(name, roi).fit(grid)
            except RoiError as exc:
                raise ConfigError(f"{exc} (field of view from scanner.reference_volume)") from None
    if cfg.motion.enabled and cfg.motion.reference != "first":
        # The header now; the grid too when scanner.reference_volume gives it, else at the first volume.
        from rtnf.analysis.reference import check_motion_reference
        from rtnf.analysis.rois import load_grid

        functional = None if sc.reference_volume is None else load_grid(sc.reference_volume)
        check_motion_reference(cfg.motion.reference, functional, f"scanner.reference_volume {sc.reference_volume}")


def _check_slice_timing(cfg: Config) -> None:
    """Slice times: a list or an order, not both; every time and the reference within the TR."""
    st, tr = cfg.slice_timing, cfg.scanner.tr_s
    if st.slice_times_s is not None and st.order is not None:
        raise ConfigError(
            "invalid value for 'slice_timing.order': given together with slice_timing.slice_times_s. "
            "Allowed: one of them (or neither: the slice times in the volumes' headers)."
        )
    if st.slice_times_s is not None and max(st.slice_times_s) >= tr:
        raise ConfigError(
            f"invalid value for 'slice_timing.slice_times_s': {max(st.slice_times_s):g} s is not within the "
            f"TR (scanner.tr_s = {tr:g} s). Allowed: seconds from the volume's start, each below {tr:g}."
        )
    if st.reference != "first" and st.reference >= tr:
        raise ConfigError(
            f"invalid value for 'slice_timing.reference': {st.reference:g} s. "
            f"Allowed: \"first\" or seconds below the TR (scanner.tr_s = {tr:g} s)."
        )


def _check_drift_cutoff(cfg: Config) -> None:
    """``model.drift_cutoff_s`` is a period: a value below a second was meant as a frequency."""
    cutoff = cfg.model.drift_cutoff_s
    if cutoff < 1.0:
        raise ConfigError(
            f"invalid value for 'model.drift_cutoff_s': {cutoff:g}. drift_cutoff_s is a period in seconds; "
            f"{cutoff:g} looks like a frequency in Hz: did you mean {1.0 / cutoff:.0f}? "
            "Allowed: the longest period the drift terms remove, in seconds (default 128)."
        )
    if cutoff < 2 * cfg.scanner.tr_s:
        raise ConfigError(
            f"invalid value for 'model.drift_cutoff_s': {cutoff:g} s is shorter than two TRs "
            f"({2 * cfg.scanner.tr_s:g} s): the drift terms would remove every signal the scanner can sample. "
            "Allowed: a period in seconds longer than the task's blocks (default 128)."
        )


# Typical task-related BOLD changes: about 0.5-3 % of the signal in an ROI mean.
SCALE_WIDTH_PSC = (0.2, 20.0)


def plausibility_warnings(cfg: Config) -> list[str]:
    """Values that are allowed but probably not meant; ``rtnf check`` prints them, ``rtnf run`` logs them.

    A fixed ``feedback.scale_range`` on percent signal change narrower than
    0.2 % keeps the bar at one end (noise alone spans it); wider than 20 %
    the bar hardly moves (task-related changes are about 0.5-3 %). Adaptive
    and dynamic scaling adapt the width to the signal, so only a fixed
    range is judged, and only for ``signal = "psc"`` (betas and t values
    have no typical size).
    """
    out: list[str] = []
    if not is_loopback(cfg.publish.address) and cfg.publish.curve_keys is None:
        out.append(
            f"publish.address {cfg.publish.address!r} is reachable from other machines and publish.curve_keys "
            "is not set: anyone on that network can read the run's data (ROI signals, motion, feedback, "
            "slices of the brain) unencrypted and connect to rtnf. Set publish.curve_keys (`rtnf keys FOLDER`) "
            "or bind to 127.0.0.1."
        )
    fb = cfg.feedback
    if fb.enabled and fb.scaling == "fixed" and fb.signal == "psc":
        lo, hi = fb.scale_range
        width = hi - lo
        low_w, high_w = SCALE_WIDTH_PSC
        if width < low_w:
            out.append(
                f"feedback.scale_range {fb.scale_range} spans {width:g} % signal change with scaling = \"fixed\": "
                f"noise alone (a task-related BOLD change is about 0.5-3 %) overflows it, so the bar will mostly "
                f"sit at one end. A width between {low_w:g} and {high_w:g} % fills the bar, or use "
                "scaling = \"adaptive\"."
            )
        elif width > high_w:
            out.append(
                f"feedback.scale_range {fb.scale_range} spans {width:g} % signal change with scaling = \"fixed\": "
                f"a task-related BOLD change (about 0.5-3 %) can never fill it, so the bar will hardly move. "
                f"A width between {low_w:g} and {high_w:g} % fills the bar, or use scaling = \"adaptive\"."
            )
    return out


# Output folders never go to the kernel's pseudo-filesystems.
_FORBIDDEN_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))


def _check_files(cfg: Config) -> None:
    """Every file and folder checked as the run will use it, so a bad one fails here and not at volume 1."""
    sc = cfg.scanner
    if sc.export_dir.exists() and not sc.export_dir.is_dir():
        raise ConfigError(
            f"invalid value for 'scanner.export_dir': {sc.export_dir} is a file. "
            "Allowed: the folder the scanner exports volumes into."
        )
    _check_output_dir(cfg.output.dir)
    if sc.reference_volume is not None:
        _check_nifti("scanner.reference_volume", sc.reference_volume, "a 3-D NIfTI image of the functional grid")
    if cfg.motion.reference != "first":
        _check_nifti("motion.reference", Path(cfg.motion.reference),
                     "\"first\" (the first kept volume) or a 3-D NIfTI file on the functional grid")
    for name, roi in cfg.rois.items():
        if roi.mask is not None:
            _check_nifti(f"rois.{name}.mask", roi.mask, "a 3-D NIfTI mask", read_data=True)
    if cfg.feedback.sham_from is not None:
        _check_sham(cfg.feedback.sham_from)
    if cfg.confounds.tissue is not None:  # masks given for the signals asked, and present
        check_tissue(cfg.confounds.tissue, cfg.base_dir)


def _check_output_dir(folder: Path) -> None:
    key = "output.dir"
    allowed = "Allowed: a folder rtnf can create and write, outside /proc, /sys and /dev."
    if any(folder == root or root in folder.parents for root in _FORBIDDEN_ROOTS):
        raise ConfigError(f"invalid value for '{key}': {folder} is on a system pseudo-filesystem. {allowed}")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == folder else f"lies under a file ({existing})"
        raise ConfigError(f"invalid value for '{key}': {folder} {what}. {allowed}")
    import os

    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"invalid value for '{key}': {existing} is not writable. {allowed}")


def _check_nifti(key: str, path: Path, allowed: str, read_data: bool = False) -> None:
    import nibabel as nib
    import numpy as np

    if not path.is_file():
        raise ConfigError(f"invalid value for '{key}': file not found: {path}. Allowed: {allowed}.")
    try:
        img = nib.load(path)
        shape = tuple(int(n) for n in img.shape)
        if read_data:
            np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types on foreign or truncated files; all mean the same here
        reason = " ".join(str(exc).split())[:200]
        raise ConfigError(
            f"invalid value for '{key}': {path} is not a readable NIfTI image ({reason}). Allowed: {allowed}."
        ) from None
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise ConfigError(f"invalid value for '{key}': {path} is an image of shape {shape}. Allowed: {allowed}.")


def _check_sham(path: Path) -> None:
    from rtnf.analysis.feedback import read_sham_series

    key = "feedback.sham_from"
    allowed = "Allowed: a recorded run's desc-rtnf_timeseries.tsv (with a feedback_value column)."
    if not path.is_file():
        raise ConfigError(f"invalid value for '{key}': file not found: {path}. {allowed}")
    try:
        with open(path, encoding="utf-8") as f:
            header = f.readline().rstrip("\r\n").split("\t")
        if "feedback_value" not in header:
            raise ValueError("no 'feedback_value' column")
        read_sham_series(path)
    except (OSError, UnicodeDecodeError, ValueError, KeyError) as exc:
        reason = " ".join(str(getattr(exc, "strerror", None) or exc).split())[:200]
        raise ConfigError(f"invalid value for '{key}': {path} is not a recorded table ({reason}). {allowed}") from None


def _check_roi(name: str, roi: RoiConfig) -> None:
    key = f"rois.{name}"
    if not re.match(r"^[A-Za-z][A-Za-z0-9]*$", name):
        raise ConfigError(
            f"invalid ROI name '{key}'. Allowed: letters and digits, starting with a letter "
            "(the name becomes part of column names)."
        )
    sphere = roi.center_mm is not None or roi.radius_mm is not None
    if roi.mask is not None and sphere:
        raise ConfigError(f"'{key}' has both 'mask' and a sphere. Allowed: either 'mask' or 'center_mm' with 'radius_mm'.")
    if roi.mask is None and (roi.center_mm is None or roi.radius_mm is None):
        raise ConfigError(
            f"'{key}' is incomplete. Allowed: 'mask' (a NIfTI file) or both 'center_mm' "
            "([x, y, z] in the participant's scanner space: RAS mm of the functional images) and 'radius_mm'."
        )
    if roi.mask is not None and not roi.mask.is_file():
        raise ConfigError(f"invalid value for '{key}.mask': file not found: {roi.mask}.")


def _make_protocol(cfg: Config) -> Protocol:
    pc = cfg.protocol
    unit = cfg.scanner.tr_s if pc.units == "volumes" else 1.0
    blocks: list[Block] = []
    for i, b in enumerate(pc.blocks):
        blocks.append(Block(b.condition, b.onset * unit, b.duration * unit, f"protocol.blocks[{i}]"))
    if pc.pattern is not None:
        t = pc.pattern.onset * unit
        for r in range(pc.pattern.repeat):
            for j, step in enumerate(pc.pattern.steps):
                source = f"protocol.pattern.steps[{j}] (repeat {r + 1})"
                blocks.append(Block(step.condition, t, step.duration * unit, source))
                t += step.duration * unit
    blocks.sort(key=lambda b: b.onset_s)
    used = list(dict.fromkeys([pc.baseline] + [b.condition for b in blocks]))
    if pc.conditions is not None:
        for b in blocks:
            if b.condition not in pc.conditions:
                raise ConfigError(
                    f"invalid condition {b.condition!r} in {b.source}. "
                    f"Allowed: one of protocol.conditions {pc.conditions}."
                )
        if pc.baseline not in pc.conditions:
            raise ConfigError(
                f"invalid value for 'protocol.baseline': {pc.baseline!r}. "
                f"Allowed: one of protocol.conditions {pc.conditions}."
            )
        conditions = list(dict.fromkeys([pc.baseline] + pc.conditions))
    else:
        conditions = used
    for cond in pc.instructions:
        if cond not in conditions:
            raise ConfigError(
                f"unknown condition in 'protocol.instructions.{cond}'. Allowed: {conditions}."
            )
    task = [c for c in conditions if c != pc.baseline]
    for cond in pc.directions:
        if cond not in task:
            what = "the baseline, which has no direction" if cond == pc.baseline else "not a condition of the protocol"
            raise ConfigError(
                f"invalid key 'protocol.directions.{cond}': {cond!r} is {what}. "
                f"Allowed: a task condition ({', '.join(map(repr, task))}) = \"increase\" or \"decrease\"."
            )
    if len(conditions) < 2:
        raise ConfigError(
            "the protocol has no condition besides the baseline "
            f"({pc.baseline!r}). Allowed: at least one block of another condition in "
            "'protocol.blocks' or 'protocol.pattern'."
        )
    try:
        return Protocol(
            blocks=tuple(blocks),
            baseline=pc.baseline,
            conditions=tuple(conditions),
            tr_s=cfg.scanner.tr_s,
            n_volumes=cfg.n_kept_volumes,
            directions=dict(pc.directions),
        )
    except ProtocolError as exc:
        raise ConfigError(str(exc)) from None
