"""Recording of a run as BIDS derivatives, written as the run goes.

``<output_dir>/sub-<s>/ses-<s>/func/sub-<s>_ses-<s>_task-<t>_run-<n>_<suffix>``:

- ``desc-rtnf_timeseries.tsv`` and ``.json``: one row per kept volume,
  appended and flushed as each volume completes; the sidecar describes
  every column;
- ``events.tsv``: the protocol;
- ``desc-rtnf_config.toml``: the session config as given;
- ``desc-rtnf_provenance.json``: run id, times, software versions;
- ``desc-rtnf_log.tsv``: warnings and notable events, flushed per line.

A crash loses at most the volume in flight: rows are flushed to the
operating system as they are written.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import platform
import stat
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

from rtnf.config import Config
from rtnf.wire.messages import clean_floats
from rtnf.wire.topics import Motion, Quality, Timing
from rtnf.analysis.protocol import Protocol
from . import outputs
from .outputs import bids_prefix, func_dir  # noqa: F401 (the recorder's users name files with them)

log = logging.getLogger(__name__)

# The table's columns that copy a message's part take their names and meanings from the wire's classes.
TIMING_FIELDS = tuple(Timing.model_fields)
MOTION_FIELDS = tuple(Motion.model_fields)
NA = "n/a"
SHAPING_COLUMNS = ("shaping_threshold", "block_value", "block_success")
"""Shaping's columns (:mod:`rtnf.analysis.shaping`): the threshold in force, and a block's value and success
where it is scored; their meaning is in the sidecar (:func:`_sidecar`)."""


def signal_columns(cfg: Config) -> dict[str, tuple[str, ...]]:
    """Each configured feedback signal's extra output columns (``[signals.<name>]``), by signal name."""
    from rtnf.analysis.signals.registry import load_signal_class

    return {name: tuple(load_signal_class(table["class"]).columns) for name, table in cfg.signals.items()}


def confound_columns(cfg: Config) -> tuple[str, ...]:
    """The design's confound regressors (``[confounds]``), in order; recorded as ``confound_<name>``."""
    from rtnf.analysis.confounds import make_confounds

    return tuple(name for source in make_confounds(cfg) for name in source.names)


def timeseries_columns(
    roi_names: list[str], signals: dict[str, tuple[str, ...]] | None = None, confounds: tuple[str, ...] = ()
) -> list[str]:
    """Column names of the per-volume table, in order (``signals``: see :func:`signal_columns`;
    ``confounds``: :func:`confound_columns`)."""
    cols = ["index", "acquisition", "onset_s", "condition", "direction", "block", "missing", "late", "out_of_order",
            "censored"]
    for name in roi_names:
        cols += [f"{name}_raw", f"{name}_clean", f"{name}_psc"]
    cols += [*MOTION_FIELDS, "framewise_displacement", "dvars", "global_signal"]
    cols += [f"confound_{name}" for name in confounds]
    for name, outputs in (signals or {}).items():
        cols += [f"signal_{name}", f"signal_{name}_reason", *(f"signal_{name}_{o}" for o in outputs), f"signal_{name}_s"]
    cols += ["feedback_signal", "feedback_success_signal", "feedback_value", "feedback_reason", *SHAPING_COLUMNS,
             *TIMING_FIELDS, "file"]
    return cols


def row_from_messages(volume: dict[str, Any], feedback: dict[str, Any], roi_names: list[str]) -> dict[str, Any]:
    """The table row of a volume, taken from the messages that were published for it."""
    row: dict[str, Any] = {
        "index": volume["index"],
        "acquisition": volume["acquisition"],
        "onset_s": volume["onset_s"],
        "condition": volume["condition"],
        # The way the volume's condition asks for (older messages without it: the feedback's, for a continuous run).
        "direction": volume.get("direction", feedback.get("direction")),
        "block": volume["block"],
        "missing": int(volume["flags"]["missing"]),
        "late": int(volume["flags"]["late"]),
        "out_of_order": int(volume["flags"].get("out_of_order", False)),
        "censored": int(volume["flags"]["censored"]),
    }
    for name in roi_names:
        values = volume["rois"].get(name) or {}
        for kind in ("raw", "clean", "psc"):
            row[f"{name}_{kind}"] = values.get(kind)
    motion = volume.get("motion") or {}
    for name in MOTION_FIELDS:
        row[name] = motion.get(name)
    for name, value in (volume.get("confounds") or {}).items():
        row[f"confound_{name}"] = value
    for name, result in (volume.get("signals") or {}).items():
        row[f"signal_{name}"] = result.get("value")
        row[f"signal_{name}_reason"] = result.get("reason")
        row[f"signal_{name}_s"] = result.get("seconds")
        for output, value in (result.get("outputs") or {}).items():
            row[f"signal_{name}_{output}"] = value
    row["framewise_displacement"] = volume.get("framewise_displacement")
    quality = volume.get("quality") or {}
    row["dvars"] = quality.get("dvars")
    row["global_signal"] = quality.get("global_signal")
    signal = feedback.get("signal")
    row["feedback_signal"] = signal
    row["feedback_success_signal"] = None if signal is None else (
        -signal if feedback.get("direction") == "decrease" else signal)
    row["feedback_value"] = feedback["value"]
    row["feedback_reason"] = feedback["reason"]
    row["shaping_threshold"] = feedback.get("threshold")
    row["block_value"] = feedback.get("block_value")
    success = feedback.get("block_success")
    row["block_success"] = None if success is None else int(success)
    for field in TIMING_FIELDS:
        row[field] = volume["timing"][field]
    row["file"] = volume["file"]
    return row


def format_cell(value: Any) -> str:
    """TSV text of a value: 'n/a' for missing, shortest round-trip text for floats."""
    if value is None:
        return NA
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    return text.replace("\t", " ").replace("\n", " ")


def _sidecar(roi_names: list[str], cfg: Config) -> dict[str, Any]:
    side: dict[str, Any] = {
        "index": {"Description": "Kept-volume index from 0 (dummy volumes excluded); row of the design."},
        "acquisition": {"Description": "Volume number in the scanner's file name (n/a when missing)."},
        "onset_s": {"Units": "s", "Description": "Start of the volume from the first kept volume."},
        "condition": {"Description": "Protocol condition of the volume."},
        "direction": {
            "Description": "Which way of the ROI's signal the volume's condition counts as success "
            "(protocol.directions): 'increase' or 'decrease'; n/a in the baseline, which asks for neither.",
            "Levels": {"increase": "success is the signal rising above baseline",
                       "decrease": "success is the signal falling below baseline"},
        },
        "block": {"Description": "Number of the protocol segment (consecutive volumes of one condition), from 0."},
        "missing": {"Description": "1 if the volume never arrived or could not be read, else 0."},
        "late": {
            "Description": "1 if the volume arrived late (after a later volume, or well after the usual "
            f"interval) or its processing took longer than one TR ({cfg.scanner.tr_s} s), else 0. "
            "A replay judges against its own pace (TR / speed); one as fast as possible flags only "
            "out-of-order volumes."
        },
        "out_of_order": {"Description": "1 if a later volume's file was complete before this one's, else 0."},
        "censored": {
            "Description": f"1 if framewise displacement exceeded {cfg.quality.fd_threshold_mm} mm or DVARS or the "
            f"global signal jumped (robust z over {cfg.quality.spike_z}); such volumes stay out of the model and "
            f"their feedback follows quality.censor_action ({cfg.quality.censor_action!r})."
        },
    }
    for name in roi_names:
        side[f"{name}_raw"] = {"Description": f"Mean signal of ROI '{name}' (scanner units)."}
        side[f"{name}_clean"] = {
            "Description": f"ROI '{name}' signal minus the drift fitted so far by the incremental GLM."
        }
        side[f"{name}_psc"] = {
            "Units": "percent",
            "Description": f"Cleaned ROI '{name}' signal as percent change from its mean over the most recent "
            "baseline period (baseline blocks shifted by the hemodynamic lag).",
        }
    for name in confound_columns(cfg):
        side[f"confound_{name}"] = {"Description": f"Confound regressor '{name}' of the model ([confounds]), "
                                                   "standardised; n/a where its source had no value."}
    for name, outputs in signal_columns(cfg).items():
        spec = cfg.signals[name]["class"]
        source = " It is the value fed back (feedback.source)." if cfg.feedback.source == name else ""
        side[f"signal_{name}"] = {"Description": f"Feedback signal '{name}' ({spec}, [signals.{name}]) of the "
                                                 f"volume, before any scaling.{source}"}
        side[f"signal_{name}_reason"] = {"Description": f"Why signal_{name} is n/a, else n/a."}
        side[f"signal_{name}_s"] = {"Units": "s", "Description": f"Time signal '{name}' took this volume, in the "
                                                                 "feedback path (before t_modelled)."}
        for output in outputs:
            side[f"signal_{name}_{output}"] = {"Description": f"Output '{output}' of feedback signal '{name}'."}
    for name in MOTION_FIELDS:
        unit = "mm" if name.startswith("trans") else "rad"
        side[name] = {
            "Units": unit,
            "Description": f"Head motion relative to the reference volume ({name}; fMRIPrep's convention: "
            "the head moves by p' = R p + t in scanner RAS mm about the origin, R = Rz Ry Rx).",
        }
    side["framewise_displacement"] = {"Units": "mm", "Description": "Framewise displacement (Power et al. 2012, 50 mm sphere)."}
    for field in ("dvars", "global_signal"):
        side[field] = {"Description": Quality.model_fields[field].description or field}
    fb = cfg.feedback
    target = " and ".join(fb.targets) + (f" minus {fb.reference_roi}" if fb.reference_roi else "")
    units = {"psc": "percent signal change", "beta": "regulation beta", "t": "regulation t"}[fb.signal]
    side["feedback_signal"] = {
        "Description": f"Feedback signal before scaling: {units} of {target} "
        f"({fb.kind}; despike {fb.despike}; smoothing alpha {fb.smoothing_alpha}). It is what the ROI did: "
        "recorded BEFORE the sign flip of a 'decrease' block (a falling signal is negative here in every block)."
    }
    side["feedback_success_signal"] = {
        "Description": "feedback_signal oriented as the feedback value counts success, AFTER the flip: "
        "minus feedback_signal where the feedback's direction is 'decrease', else feedback_signal. The "
        "feedback's direction is the volume's (see direction), except for an intermittent score, which "
        "takes the scored block's. feedback_value is this value scaled."
    }
    scaling = {
        "fixed": f"mapped from {fb.scale_range}",
        "adaptive": f"mapped from {fb.scale_range} times a gain adapted to the signal's size at each block's start",
        "dynamic": "scaled by the range seen so far",
    }[fb.scaling]
    side["feedback_value"] = {
        "Description": f"Value sent to the feedback screen, in [0, 1]: feedback_success_signal {scaling} and "
        "clipped, so a higher value is success in both directions"
        + (" (sham: replayed from another run)" if fb.sham_from else "") + "."
    }
    side["feedback_reason"] = {"Description": "Why feedback_value is n/a, else n/a."}
    shaping = fb.shaping
    rule = ("no [feedback.shaping]: always 0, the block must beat its baseline" if shaping is None else
            f"[feedback.shaping]: percentile {shaping.percentile:g} of the previous blocks' block_value"
            + (f" (the last {shaping.last_blocks})" if shaping.last_blocks else "")
            + {"run": " of this run", "session": " of this run and the session's earlier feedback runs",
               "study": " of this run and the participant's earlier feedback runs in every session"}[shaping.history]
            + f"; 0 until {shaping.min_blocks} exist")
    side["shaping_threshold"] = {
        "Description": "Success threshold in force at this volume, in the units of feedback_success_signal: the "
        f"next block scored succeeds when its block_value exceeds it ({rule}). Where a block is scored, the "
        "threshold that block had to beat; from the next row on it counts that block too."
        + (" Sham: copied from the source run." if fb.sham_from else "")
    }
    side["block_value"] = {
        "Description": "Only at the row where a regulation block is scored (the last row of the block shifted by "
        "the hemodynamic lag): the mean of feedback_signal over those rows, minus it in a block whose direction "
        "is 'decrease' (for intermittent feedback: that row's feedback_success_signal); else n/a."
    }
    side["block_success"] = {"Description": "With block_value: 1 if block_value > shaping_threshold, else 0."}
    for field in TIMING_FIELDS:
        side[field] = {"Units": "s", "Description": "UNIX time (time.time()): "
                       + _lower_first(Timing.model_fields[field].description or field)}
    side["file"] = {"Description": "Name of the volume's file in the export folder (with output.file_names = "
                                   "\"hash\": its volume number and a short salted hash of the name)."}
    return side


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("rtnf", "numpy", "scipy", "nibabel", "nilearn", "pyzmq", "watchdog", "pydantic"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = NA
    return out


class OutputExistsError(FileExistsError):
    """The run's outputs exist already and overwriting was not asked for."""


#: The provenance key under which ``rtnf study`` records what it ran a run as (localizer, feedback, transfer).
RUN_KIND = "run_kind"

#: What a resumed run's provenance keeps of each earlier attempt (under ``resumed``, oldest first).
ATTEMPT_KEYS = ("run_id", "started", "finished", "status", "n_rows")
#: The suffix of an earlier provenance file a resumed run could not read and kept aside.
UNREADABLE_SUFFIX = ".unreadable"
#: A provenance larger than this is not read (a run's is a few kB; its config copy is bounded).
MAX_PROVENANCE_BYTES = 16 * 1024 * 1024


def earlier_attempts(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The earlier attempts of a run being resumed, oldest first, from the provenance file ``path`` they left.

    Returns
    -------
    attempts : list of dict
        Empty when there is no such file. A file that cannot be read (cut short by a crash or a full
        disk, not UTF-8 JSON, not a JSON object, a ``resumed`` that is no list of objects) is renamed
        aside to ``<name>.unreadable`` (``<name>.2.unreadable``, ... when that exists), so nothing is
        lost, and the one attempt returned says where it went: ``{"provenance_unreadable": <file name>}``
        (None when it could not be renamed either).
    warning : str or None
        For an unreadable file: the warning to log, naming it.
    """
    if not os.path.lexists(path):
        return [], None
    try:
        info = path.stat()  # through a link (its target is only read: the new provenance replaces the link)
        if not stat.S_ISREG(info.st_mode):  # a FIFO would block the resume, a directory is no provenance
            problem = "not a regular file"
        elif info.st_size > MAX_PROVENANCE_BYTES:  # not read into memory
            problem = f"{info.st_size} bytes, more than a provenance ever holds ({MAX_PROVENANCE_BYTES})"
        else:
            earlier = json.loads(path.read_text(encoding="utf-8"))
            problem = _provenance_problem(earlier)
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: not JSON or not UTF-8; Recursion: nested
        problem = str(exc) or type(exc).__name__
    if problem is None:
        attempts = [*earlier.get("resumed", []), {k: earlier.get(k) for k in ATTEMPT_KEYS}]
        return [_scalars(a) for a in attempts], None
    try:
        aside: Path | None = _unreadable_name(path)
        path.rename(aside)
        kept = f"kept as {aside.name}"
    except OSError as exc:
        aside, kept = None, f"and could not be kept aside ({exc.strerror or exc}): this run's replaces it"
    warning = (f"resume: the earlier provenance {path} could not be read ({problem}); {kept}. "
               "This run's provenance starts afresh and notes it.")
    return [{"provenance_unreadable": None if aside is None else aside.name}], warning


def _scalars(attempt: dict[str, Any]) -> dict[str, Any]:
    """An earlier attempt's entry with plain values only (a list or object in their place, as deep as the JSON
    parser allows, would be carried into every later provenance): anything else becomes None."""
    return {str(k): v if v is None or isinstance(v, (str, int, float, bool)) else None
            for k, v in list(attempt.items())[:len(ATTEMPT_KEYS) + 1]}


def _provenance_problem(data: Any) -> str | None:
    """Why a parsed provenance cannot be carried over, or None when it can."""
    if not isinstance(data, dict):
        return f"not a JSON object but {type(data).__name__}"
    resumed = data.get("resumed", [])
    if not isinstance(resumed, list) or not all(isinstance(r, dict) for r in resumed):
        return "its 'resumed' is not a list of objects"
    return None


def _unreadable_name(path: Path) -> Path:
    """The first free ``<name>.unreadable``, ``<name>.2.unreadable``, ... beside ``path``."""
    k = 1
    while True:
        aside = path.with_name(f"{path.name}{'' if k == 1 else f'.{k}'}{UNREADABLE_SUFFIX}")
        if not os.path.lexists(aside):
            return aside
        k += 1


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename.

    A crash or a full disk mid-write leaves the earlier file whole (a plain ``write_text`` truncates it
    first: the unreadable provenance a resume then has to set aside).
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(clean_floats(data), indent=2, allow_nan=False), encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class RunRecorder:
    """Writes a run's outputs as it goes.

    Parameters
    ----------
    cfg : Config
        The session config.
    config_text : str
        The config file's text, recorded as given.
    protocol : Protocol
        For the events file.
    roi_names : list of str
        ROIs in column order.
    run_id : str
        Identifier of the run.
    overwrite : bool
        Replace earlier outputs of the same run instead of refusing.
    resume : bool
        Continue the outputs of a run whose process died: the rows recorded
        so far are kept (a last line cut off by the crash is dropped) and
        available as :attr:`recorded`; new rows are appended. The provenance lists
        the earlier attempts under ``resumed`` (:func:`earlier_attempts`: an
        earlier file that cannot be read is kept aside, with one warning).
    about : dict, optional
        What the caller knows of the run beyond its config, recorded in the
        provenance as it is (``rtnf study``: ``{RUN_KIND: "transfer"}``).
    """

    def __init__(
        self,
        cfg: Config,
        config_text: str,
        protocol: Protocol,
        roi_names: list[str],
        run_id: str,
        overwrite: bool = False,
        resume: bool = False,
        about: dict[str, Any] | None = None,
    ) -> None:
        self.dir = func_dir(cfg)
        self.prefix = bids_prefix(cfg)
        self.roi_names = roi_names
        self.columns = timeseries_columns(roi_names, signal_columns(cfg), confound_columns(cfg))
        self.timeseries_path = self._path(outputs.TIMESERIES)
        self.recorded: dict[int, dict[str, str]] = {}
        if resume:
            self.recorded = self._recover()
        elif self.timeseries_path.exists() and not overwrite:
            raise OutputExistsError(
                f"outputs of this run exist already: {self.timeseries_path}. "
                "Use --resume to continue this run after a crash, --overwrite to replace it, "
                "or another session.run or output.dir."
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        _write_dataset_description(cfg.output.dir)
        self._path(outputs.TIMESERIES_SIDECAR).write_text(json.dumps(_sidecar(roi_names, cfg), indent=2))
        self._path(outputs.CONFIG).write_text(config_text)
        self._write_events(protocol)
        self.provenance = {
            "run_id": run_id,
            "started": time.time(),
            "command": sys.argv,
            "platform": platform.platform(),
            "versions": _versions(),
            # what the run really used: the file plus command-line and session overrides
            "config": cfg.model_dump(mode="json"),
            **(about or {}),
        }
        unreadable = None  # why the earlier attempt's provenance was set aside, logged once the event log is open
        if resume:
            attempts, unreadable = earlier_attempts(self._path(outputs.PROVENANCE))
            if attempts:
                self.provenance["resumed"] = attempts
        self._write_provenance()
        self._tr_s = cfg.scanner.tr_s
        self._n_dummies = cfg.scanner.dummy_volumes
        self._bold_count: int | None = None  # volumes in the 4D file so far
        self._bold_failed = False  # a write failed and the volumes since wait in _bold_unsaved
        # Volumes not yet in the 4D file because writes fail (full or read-only disk), by index; written
        # in order once writes work again. Bounded: beyond MAX_UNSAVED_BYTES the oldest is given up and
        # listed in the file's sidecar ("volumes_not_saved"), its place in the file left as zeros.
        self._bold_unsaved: dict[int, tuple[Any, Any]] = {}
        self._bold_lost: set[int] = set()
        self._bold_sidecar_lost: list[int] | None = None  # what the sidecar on disk says was lost
        self._pending: list[str] = []  # rows not yet on disk (the output folder failing)
        self._failing = False
        if not (resume and self.recorded):
            self.timeseries_path.write_text("\t".join(self.columns) + "\n", encoding="utf-8")
        log_path = self._path(outputs.LOG)
        appending = resume and log_path.exists()
        self._log: TextIO = open(log_path, "a" if appending else "w", encoding="utf-8")
        if not appending:
            self._log.write("time\tlevel\tmessage\n")
        self._log.flush()
        self.n_rows = len(self.recorded)
        if unreadable is not None:
            log.warning("%s", unreadable)
            self.log_event("WARNING", unreadable)  # the run's event log too: the report lists it

    def _recover(self) -> dict[int, dict[str, str]]:
        """Rows recorded before a crash; a partial last line is cut off the file."""
        if not self.timeseries_path.exists():
            return {}
        data = self.timeseries_path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            self.timeseries_path.write_bytes(complete)  # the crash cut the last row short
        lines = complete.decode("utf-8").splitlines()
        if not lines:
            return {}
        header = lines[0].split("\t")
        if header != self.columns:
            raise OutputExistsError(
                f"cannot resume {self.timeseries_path}: its columns differ from this config's "
                "(other ROIs or another rtnf version); use another session.run or output.dir"
            )
        rows = [dict(zip(header, line.split("\t"))) for line in lines[1:]]
        return {int(r["index"]): r for r in rows if len(r) == len(header)}

    def _path(self, name: str) -> Path:
        """Path of the output ``name`` (a constant of :mod:`rtnf.run.outputs`)."""
        return self.dir / f"{self.prefix}_{name}"

    def _write_events(self, protocol: Protocol) -> None:
        lines = ["onset\tduration\ttrial_type"]
        for seg in protocol.segments():
            onset = seg.start * protocol.tr_s
            lines.append(f"{onset:g}\t{(seg.stop - seg.start) * protocol.tr_s:g}\t{seg.condition}")
        self._path(outputs.EVENTS).write_text("\n".join(lines) + "\n")

    def _write_provenance(self) -> None:
        write_json_atomic(self._path(outputs.PROVENANCE), self.provenance)

    def write_row(self, row: dict[str, Any]) -> None:
        """Append one volume's row and hand it to the operating system.

        If the output folder fails (full, unwritable, gone), the row is kept
        in memory with the ones before it, an error is logged once, and every
        later call tries again: rows reach the table in order, each once, as
        soon as writing works again.
        """
        self._pending.append("\t".join(format_cell(row.get(c)) for c in self.columns) + "\n")
        self.n_rows += 1
        self._write_pending()

    def retry(self) -> None:
        """Try again to write the rows kept in memory (no-op when none are)."""
        if self._pending:
            self._write_pending()

    @property
    def n_buffered(self) -> int:
        """Rows waiting in memory for the output folder to work again."""
        return len(self._pending)

    def _write_pending(self) -> None:
        data = "".join(self._pending).encode("utf-8")
        try:
            _append_whole(self.timeseries_path, data)
        except OSError as exc:
            if not self._failing:
                log.error(
                    "RECORDING FAILED: cannot write %s (%s). The feedback goes on; rows are kept in memory "
                    "and written as soon as the output folder works again.", self.timeseries_path, exc.strerror or exc,
                    extra={"alarm": "recording", "ok": False},
                )
            self._failing = True
            return
        if self._failing:
            log.warning(
                "recording works again: %d buffered rows written to %s", len(self._pending), self.timeseries_path.name,
                extra={"alarm": "recording", "ok": True},
            )
        self._failing = False
        self._pending.clear()

    def save_volume(self, index: int, data, affine, n_volumes: int) -> None:
        """Append the received volume ``index`` to the run's 4D NIfTI (``desc-rtnf_bold.nii``).

        Volumes come in order; one that never arrived is written as zeros
        when the next one comes. After each volume the header's time
        dimension is updated, so the file is a valid NIfTI of the volumes so
        far even after a crash, and a resumed run appends to it. A write that
        fails (full or read-only disk) is undone (logged once); the volume and
        the ones after it wait in memory (bounded, :attr:`MAX_UNSAVED_BYTES`)
        and are written in order once writes work again. While table rows
        wait too, the volumes wait: the space is the table's first. Volumes
        given up (memory bound, or the disk still failing at the end) are
        listed in the file's sidecar as ``volumes_not_saved``.
        """
        import numpy as np

        path = self._path(outputs.BOLD)
        data = np.array(data, dtype="<f4")  # a copy: it may wait in memory for the disk
        self._bold_unsaved[index] = (data, affine)
        self._bound_unsaved()
        if self._pending:
            return  # the table's rows wait for the disk: they get the space first
        try:
            for i in sorted(self._bold_unsaved):
                self._write_bold(path, i, *self._bold_unsaved[i])
                del self._bold_unsaved[i]
            if self._bold_lost != set(self._bold_sidecar_lost or ()):
                self._write_bold_sidecar()
        except OSError as exc:
            if not self._bold_failed:
                log.error("cannot save received volumes to %s (%s); keeping them in memory until writes work "
                          "again", path, exc.strerror or exc)
                self._bold_failed = True
            return
        if self._bold_failed:
            self._bold_failed = False
            log.warning("received volumes saved to %s again (%d volumes in the file%s)", path, self._bold_count,
                        f"; {len(self._bold_lost)} given up, listed in its sidecar" if self._bold_lost else "")

    # Memory kept for volumes the disk refused: about 400 volumes of 64 x 64 x 40.
    MAX_UNSAVED_BYTES = 256 * 2**20

    def _bound_unsaved(self) -> None:
        total = sum(d.nbytes for d, _ in self._bold_unsaved.values())
        while total > self.MAX_UNSAVED_BYTES and len(self._bold_unsaved) > 1:
            oldest = min(self._bold_unsaved)
            total -= self._bold_unsaved.pop(oldest)[0].nbytes
            self._bold_lost.add(oldest)

    def _write_bold(self, path: Path, index: int, data, affine) -> None:
        """Append volume ``index`` (and zeros for the ones before it that are not in the file)."""
        import numpy as np

        if self._bold_count is None:
            self._bold_count = self._open_bold(path, data, affine)
        if index < self._bold_count:
            return  # saved before a crash; a resumed run processes it again
        gap = index - self._bold_count
        _append_whole(path, bytes(gap * data.nbytes) + np.asfortranarray(data).tobytes(order="F"))
        self._bold_count = index + 1
        with open(path, "r+b") as f:  # dim[4]: the number of volumes in the file
            f.seek(48)
            f.write(np.array([self._bold_count], dtype="<i2").tobytes())

    def _bold_side(self) -> dict[str, Any]:
        side = {
            "RepetitionTime": self._tr_s,
            "dummies_removed": True,
            "n_dummy_volumes": self._n_dummies,
            "Description": "Volumes rtnf received, kept volumes only (the first dummy volumes of the run are not "
            "in this file; volume i is row i of the timeseries table). A volume that never arrived is all zeros, "
            "and so is one listed in volumes_not_saved (received, but the disk refused it for too long).",
        }
        lost = sorted(self._bold_lost | set(self._bold_unsaved))
        if lost:
            side["volumes_not_saved"] = lost
        return side

    def _write_bold_sidecar(self) -> None:
        side = self._bold_side()
        self._path(outputs.BOLD_SIDECAR).write_text(json.dumps(side, indent=2))
        self._bold_sidecar_lost = side.get("volumes_not_saved", [])

    def _finish_bold(self) -> None:
        """At the end of the run: one more try for the volumes in memory, else list them as not saved."""
        if not self._bold_unsaved and self._bold_lost == set(self._bold_sidecar_lost or ()):
            return
        path = self._path(outputs.BOLD)
        try:
            for i in sorted(self._bold_unsaved):
                self._write_bold(path, i, *self._bold_unsaved[i])
                del self._bold_unsaved[i]
        except OSError:
            pass
        if self._bold_unsaved or self._bold_lost:
            log.error("%d received volumes are not in %s (listed in its sidecar as volumes_not_saved)",
                      len(self._bold_unsaved) + len(self._bold_lost), path)
        try:
            self._write_bold_sidecar()
        except OSError as exc:
            log.error("cannot write %s: %s", self._path(outputs.BOLD_SIDECAR), exc.strerror or exc)

    def _open_bold(self, path: Path, data, affine) -> int:
        """Volumes already in the file (resumed run), or 0 after writing a new header."""
        import nibabel as nib
        import numpy as np

        if path.exists() and path.stat().st_size >= 352:
            header = nib.Nifti1Header.from_fileobj(open(path, "rb"))
            if tuple(header.get_data_shape()[:3]) == data.shape:
                return int(header["dim"][4])
        header = nib.Nifti1Header(endianness="<")
        header.set_data_shape(data.shape + (0,))
        header.set_data_dtype(np.float32)
        header.set_qform(affine, code=1)
        header.set_sform(affine, code=1)
        header.set_xyzt_units("mm", "sec")
        header["pixdim"][4] = self._tr_s
        header.set_data_offset(352)
        # A replay of this file must know the dummies are gone (its first volume is acquisition n_dummies):
        # the sidecar first, so a header on disk always has one.
        self._write_bold_sidecar()
        path.write_bytes(header.binaryblock + b"\0" * (352 - header.sizeof_hdr))
        return 0

    def save_statmap(self, t_volume, affine) -> Path:
        """The run's final whole-brain t-map as ``desc-rtnf_stat-t_statmap.nii.gz``."""
        import nibabel as nib

        path = self._path(outputs.STATMAP)
        nib.save(nib.Nifti1Image(t_volume, affine), path)
        return path

    def log_event(self, level: str, message: str) -> None:
        """Append a line to the run's event log."""
        self._log.write(f"{time.time()!r}\t{level}\t{format_cell(message)}\n")
        self._log.flush()

    def finalise(self, status: str) -> None:
        """Write the rows still in memory, then the provenance with how the run ended ("ended" or "aborted").

        Never raises: each failure is logged (the run's event log, the log
        topic, stderr) and the next step still runs. The event log stays open
        for what the end of the run still reports; :meth:`close` closes it.
        """
        try:
            if self._pending:
                self._write_pending()
            if self._pending:
                log.error("%d rows could not be written to %s: the output folder still fails", len(self._pending),
                          self.timeseries_path)
        except Exception as exc:  # noqa: BLE001 - the provenance still comes
            log.error("cannot write the rows kept in memory to %s: %s", self.timeseries_path, exc)
        try:
            self._finish_bold()
        except Exception as exc:  # noqa: BLE001
            log.error("cannot finish the received volumes' file: %s", exc)
        self.provenance.update({"finished": time.time(), "status": status, "n_rows": self.n_rows - len(self._pending)})
        try:
            self._write_provenance()
        except Exception as exc:  # noqa: BLE001
            log.error("cannot write the provenance file %s: %s", self._path(outputs.PROVENANCE), exc)
        self._finalised = True

    def close(self, status: str) -> None:
        """Close the files and record how the run ended ("ended" or "aborted")."""
        if not getattr(self, "_finalised", False):
            self.finalise(status)
        try:
            self._log.close()
        except OSError as exc:
            log.error("cannot write the event log: %s", exc)


class RecorderLogHandler(logging.Handler):
    """Copies warnings and errors of the ``rtnf`` loggers into the run's event log."""

    def __init__(self, recorder: RunRecorder, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.recorder = recorder

    def emit(self, record: logging.LogRecord) -> None:  # noqa: D102
        try:
            self.recorder.log_event(record.levelname, record.getMessage())
        except (OSError, ValueError):  # a closed or unwritable log must not stop the run
            pass


def _append_whole(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` entirely or not at all (a full disk leaves no half row)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, "short write", str(path))
        except OSError:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def _write_dataset_description(root: Path) -> None:
    path = root / "dataset_description.json"
    if path.exists():
        return
    root.mkdir(parents=True, exist_ok=True)
    desc = {
        "Name": "rtnf real-time neurofeedback outputs",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "rtnf", "Version": _versions()["rtnf"]}],
    }
    path.write_text(json.dumps(desc, indent=2))
