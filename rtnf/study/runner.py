"""Running a participant's next run: its config, its ROI, its arm, journalled before and after.

:func:`prepare` turns a :class:`~rtnf.study.progress.Step` into what
:func:`rtnf.run.session.run_session` needs (the config with the study's
overrides, the run's parts with the arm's feedback); :func:`execute` runs it
between a ``start`` and an ``end`` event of the journal. Nothing here logs or
prints an arm: the arm lives in the :class:`~rtnf.study.armfeedback.ArmRun`
handed to the run and nowhere else.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rtnf.config import Config, ConfigError, load_config
from rtnf.run.record import RUN_KIND, RunRecorder
from rtnf.run.session import RunParts, RunResult

from .armfeedback import ArmRun
from .arms import BlindingKey, allocate, key_is_private, make_codes, read_key, write_key
from .progress import Attempt, Step, attempts, completed
from .sham import YokedSourceError, read_yoked
from .state import StudyRecord, StudyState, atomic_write_text
from .studyfile import Study

log = logging.getLogger(__name__)


def init_study(study: Study) -> StudyRecord:
    """``rtnf study init``: allocate the participants to arm codes, write the blinding key and the state.

    The key is written first (it refuses to replace an existing one), then the
    state; the dataset's ``participants.tsv`` lists each participant's code.
    """
    state = StudyState(study.state_dir)
    if state.exists():
        raise ConfigError(f"the study's state exists already in {study.state_dir}: `rtnf study init` runs once")
    if study.key_file.exists():
        raise ConfigError(f"the blinding key {study.key_file} exists but the study has no state in "
                          f"{study.state_dir}: an interrupted `rtnf study init`? Remove the key and run it again")
    spec = study.spec.arms
    codes = make_codes(list(spec.arms))
    # conceal_order: the first participant leads every feedback run, so is every sham run's source: real
    lead = None
    if spec.ordered and "sham" in spec.arms:
        lead = next(c for c, arm in codes.items() if arm == "real")
    allocation = allocate(study.participants, sorted(codes), spec.block_size, lead=lead)
    digest = write_key(study.key_file, study.name, codes)
    record = StudyRecord(study.name, allocation, digest, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    state.create(record)
    write_participants(study.output_dir, allocation)
    return record


def write_participants(output_dir: Path, allocation: dict[str, str]) -> None:
    """``participants.tsv`` (and its sidecar) of the derivatives dataset: each participant's arm code."""
    output_dir.mkdir(parents=True, exist_ok=True)
    lines = ["participant_id\tarm_code"] + [f"sub-{p}\t{c}" for p, c in allocation.items()]
    atomic_write_text(output_dir / "participants.tsv", "\n".join(lines) + "\n")
    side = {"arm_code": {"Description": "The participant's arm, concealed under a code until the study is "
                                        "unblinded (rtnf study unblind)."}}
    atomic_write_text(output_dir / "participants.json", json.dumps(side, indent=2) + "\n")


def load_key(study: Study, record: StudyRecord, path: Path | None = None) -> BlindingKey:
    """The study's blinding key (checked against the state); a key others may read is warned about."""
    path = path or study.key_file
    key = read_key(path, record.key_sha256)
    if not key_is_private(path):
        log.warning("the blinding key %s is readable by other users: chmod 600 it", path)
    return key


@dataclass(frozen=True)
class PreparedRun:
    """Everything a step's run needs."""

    step: Step
    cfg: Config
    config_text: str
    parts: RunParts
    code: str


def prepare(study: Study, record: StudyRecord, events: list[dict[str, Any]], step: Step,
            key: Callable[[], BlindingKey]) -> PreparedRun:
    """The config and parts of ``step``'s run. ``key()`` is called for feedback runs only."""
    overrides: dict[str, Any] = {
        "session.subject": step.subject,
        "session.session": step.session,
        "session.task": step.planned.task,
        "session.run": step.run,
        "output.dir": str(study.output_dir),
    }
    kind = step.planned.kind
    if kind in ("localizer", "transfer"):
        overrides["feedback.enabled"] = False  # computed and recorded, never shown
    if kind == "localizer" and study.spec.roi.strategy in ("localizer", "carried"):
        overrides["model.whole_brain"] = True  # its t-map makes the session's ROI
    if kind != "localizer":
        overrides.update(roi_overrides(study, events, step))
    cfg = load_config(step.planned.config, overrides)
    code = record.allocation[step.subject]
    parts = RunParts()
    if kind == "feedback" and study.spec.arms.ordered:
        check_turn(study, record, events, step)
    if kind == "feedback":
        parts = arm_run(study, events, step, key(), code).parts()
    return PreparedRun(step, cfg, step.planned.config.read_text(encoding="utf-8"), recorded_as(kind, parts), code)


def recorded_as(kind: str, parts: RunParts) -> RunParts:
    """``parts`` whose recorder writes the run's kind in its provenance (:data:`rtnf.run.record.RUN_KIND`).

    The longitudinal report reads a run's role from it instead of guessing
    from the task label. The kind is the study file's, the same in every arm
    (every arm has its feedback and transfer runs), so it tells nothing of the arm.
    """
    return dataclasses.replace(parts, recorder=functools.partial(RunRecorder, about={RUN_KIND: kind}))


def roi_overrides(study: Study, events: list[dict[str, Any]], step: Step) -> dict[str, Any]:
    """The ROI the study's strategy gives this run (a mask override), or none for ``"config"``."""
    roi = study.spec.roi
    if roi.strategy == "config":
        return {}
    if roi.strategy == "atlas":
        return atlas_roi(study, events, step)
    if roi.strategy == "carried" and step.session != study.sessions[0]:
        return carried_roi(study, events, step)
    return _localizer_mask(study, _session_localizer(study, events, step.subject, step.session))


def _localizer_mask(study: Study, localizer: Attempt) -> dict[str, Any]:
    """The study's ROI from a localizer run's t-map (written beside it); the config override."""
    from rtnf.run.study_session import localizer_roi

    roi = study.spec.roi
    spec = {"run": localizer.run, "roi": roi.roi, "top_k": roi.top_k}
    if roi.threshold is not None:
        spec["threshold"] = roi.threshold
    if roi.search_mask is not None:
        spec["search_mask"] = str(roi.search_mask)
    return localizer_roi(spec, attempt_config(study, localizer))


def carried_roi(study: Study, events: list[dict[str, Any]], step: Step) -> dict[str, Any]:
    """The first session's localizer ROI carried onto this session's grid (``rtnf roi transfer``); the override.

    The first session's localizer reference (its first volume) is registered
    rigidly to this session's (its localizer's first volume) and the mask
    resampled by nearest neighbour (keeping each of its scattered voxels),
    once per session: the mask and a JSON summary (centroid shift,
    registration quality, Dice against this session's own localizer ROI) are
    written beside this session's localizer outputs.
    """
    import nibabel as nib
    import numpy as np

    from rtnf.apps import roidef
    from rtnf.apps.roidef.transfer import transfer_masks
    from rtnf.run import outputs

    name = study.spec.roi.roi
    day1 = _session_localizer(study, events, step.subject, study.sessions[0])
    day_n = _session_localizer(study, events, step.subject, step.session)
    cfg1, cfg_n = attempt_config(study, day1), attempt_config(study, day_n)
    out = outputs.output_path(cfg_n, f"desc-{name}carried_mask.nii.gz")
    if out.is_file():
        return {f"rois.{name}": {"mask": str(out)}}
    day1_mask = Path(_localizer_mask(study, day1)[f"rois.{name}"]["mask"])
    own = nib.load(_localizer_mask(study, day_n)[f"rois.{name}"]["mask"])  # this session's own, for the Dice
    try:
        ref1 = roidef.load_reference(outputs.output_path(cfg1, outputs.BOLD), volume=0)
        ref_n = roidef.load_reference(outputs.output_path(cfg_n, outputs.BOLD), volume=0)
        mask_img = nib.load(day1_mask)
        # Nearest neighbour: a localizer ROI is top-k voxels, often scattered, and trilinear >= 0.5 drops an
        # isolated voxel (its weight spreads over up to 8 voxels), shrinking the ROI and shifting its centre.
        result = transfer_masks((ref1.data, ref1.affine), (ref_n.data, ref_n.affine),
                                {name: (np.asarray(mask_img.dataobj), mask_img.affine)},
                                compare={name: np.asarray(own.dataobj) > 0}, interpolation="nearest")
    except (roidef.RoiDefError, OSError) as exc:
        raise ConfigError(f"roi.strategy 'carried': {exc} (save_volumes must be on in the localizer config)") from None
    moved = result.masks[0]
    nib.save(nib.Nifti1Image(moved.mask.astype(np.uint8), ref_n.affine), out)
    summary = out.with_name(out.name.replace("_mask.nii.gz", "_transfer.json"))
    summary.write_text(json.dumps(result.as_dict(), indent=2))
    log.info("ROI %s carried from session %s: centroid shift %.1f mm, brain Dice %.3f, Dice with this session's "
             "localizer ROI %.3f", name, study.sessions[0], float(np.linalg.norm(moved.centroid_shift_mm)),
             result.brain_dice, moved.dice if moved.dice is not None else float("nan"))
    return {f"rois.{name}": {"mask": str(out)}}


def atlas_roi(study: Study, events: list[dict[str, Any]], step: Step) -> dict[str, Any]:
    """The study's MNI region on this session's grid, as ``rtnf roi mni`` makes it; the config override.

    The MNI152 template is registered to the first volume the session's first
    run recorded, once per session: the mask (and its check PNG) is written
    beside that run's outputs and reused by the session's later runs.
    """
    from rtnf.run import outputs

    spec = study.spec.roi
    first = [a for a in attempts(events, step.subject) if a.session == step.session and a.position == 0 and a.ok]
    if step.planned.position == 0 or not first:
        raise ConfigError(f"roi.strategy 'atlas': sub-{step.subject} ses-{step.session} needs its first run done "
                          "first: the MNI template is registered to that run's first volume")
    source = attempt_config(study, first[-1])
    mask = outputs.output_path(source, f"desc-{spec.roi}atlas_mask.nii.gz")
    if not mask.is_file():
        _write_atlas_mask(outputs.output_path(source, outputs.BOLD), mask, spec)
    return {f"rois.{spec.roi}": {"mask": str(mask)}}


def _write_atlas_mask(bold: Path, mask: Path, spec: Any) -> None:
    from rtnf.apps import roidef

    if not bold.is_file():
        raise ConfigError(f"roi.strategy 'atlas': {bold} is missing (set output.save_volumes = true in the "
                          "session's first run config)")
    try:
        reference = roidef.load_reference(bold, volume=0)
        registration = roidef.register_mni(reference)
        roi = roidef.mni_roi(reference.grid, registration, region=spec.region, center_mm=spec.center_mm,
                             radius_mm=spec.radius_mm, name=spec.roi)
    except roidef.RoiDefError as exc:
        raise ConfigError(f"roi.strategy 'atlas': {exc}") from None
    roidef.save_mask(roi, mask)
    roidef.plot_roi(roi, reference.data, mask.with_name(mask.name.replace(".nii.gz", ".png")),
                    title=f"{spec.roi} (MNI {spec.region or spec.center_mm})")
    log.info("atlas ROI %s: %d voxels, MNI registration metric %.3f", spec.roi, int(roi.mask.sum()),
             registration.metric)


def _session_localizer(study: Study, events: list[dict[str, Any]], subject: str, session: str) -> Attempt:
    first = next(p for p in study.runs if p.kind == "localizer")
    done = [a for a in attempts(events, subject) if a.session == session and a.position == first.position and a.ok]
    if not done:
        raise ConfigError(f"sub-{subject} ses-{session}: the session's localizer (run {first.position + 1}) has "
                          "not ended usable; run it first")
    return done[-1]


def attempt_config(study: Study, attempt: Attempt) -> Config:
    """The config a journalled run used (its labels and output folder)."""
    planned = study.runs[attempt.position]
    return load_config(planned.config, {
        "session.subject": attempt.subject, "session.session": attempt.session, "session.task": attempt.task,
        "session.run": attempt.run, "output.dir": str(study.output_dir),
    })


def arm_run(study: Study, events: list[dict[str, Any]], step: Step, key: BlindingKey, code: str) -> ArmRun:
    """The arm of ``code`` for this run; a sham run gets its yoked source."""
    arm = key.arm(code)
    if arm == "sham":
        return ArmRun(arm, yoked_table=yoke_source(events, step, key, study))
    return ArmRun(arm, control_roi=study.spec.arms.control_roi)


def leader(study: Study, record: StudyRecord) -> str:
    """The study's first allocated participant: under ``arms.conceal_order`` it runs every feedback run first."""
    return next(p for p in study.participants if p in record.allocation)


def check_turn(study: Study, record: StudyRecord, events: list[dict[str, Any]], step: Step) -> None:
    """``arms.conceal_order``: a feedback run starts once the leader's matched run has ended usable.

    The rule reads no arm, so a refusal tells none: every participant but the
    leader waits for the leader's matched run (same session, same planned
    run), and the leader's table must be readable, whatever the participant's
    arm. As the leader is allocated to the real arm and runs first, every sham
    run has its source (the leader's run).

    Raises
    ------
    ConfigError
        When the leader's matched run has not ended usable; a
        :class:`~rtnf.study.sham.YokedSourceError` (its ``detail`` for the
        journal) when its table cannot be read.
    """
    lead = leader(study, record)
    if step.subject == lead:
        return
    where = f"sub-{step.subject} ses-{step.session} run {step.planned.position + 1} cannot start yet: "
    done = [a for a in completed(events, step.session, step.planned.position) if a.subject == lead]
    if not done:
        raise ConfigError(where + "every feedback run waits until the study's first participant has finished the "
                          "matched run (arms.conceal_order; see `rtnf study status`)")
    try:
        read_yoked(Path(done[0].ended["table"]), 0)
    except YokedSourceError as exc:
        raise YokedSourceError(exc.detail, prefix=where) from None


def yoke_source(events: list[dict[str, Any]], step: Step, key: BlindingKey, study: Study) -> Path:
    """The table of the earliest real-arm participant's matched run (same session, same planned run).

    Raises
    ------
    ConfigError
        When no participant of the real arm has completed that run yet.
    """
    record = StudyState(study.state_dir).record()
    real = set(key.codes_of("real"))
    for attempt in completed(events, step.session, step.planned.position):
        if attempt.subject != step.subject and record.allocation.get(attempt.subject) in real:
            return Path(attempt.ended["table"])
    raise ConfigError(f"sub-{step.subject} ses-{step.session} run {step.planned.position + 1} cannot start yet: it "
                      "needs another participant's matched run first (see `rtnf study status`)")


def execute(state: StudyState, prepared: PreparedRun,
            run: Callable[[PreparedRun], RunResult]) -> RunResult:
    """Run a prepared step between its ``start`` and ``end`` journal events.

    A crash between them leaves the start alone in the journal: the next
    ``rtnf study next`` resumes the run. A config error the first volume
    reveals ends it (not usable), and is raised again.
    """
    step, cfg = prepared.step, prepared.cfg
    ident = {"subject": step.subject, "session": step.session, "position": step.planned.position,
             "task": step.planned.task, "run": step.run}
    state.append("resume" if step.resume else "start", **ident)
    try:
        result = run(prepared)
    except ConfigError as exc:
        # an unreadable sham source: its path (whose run it is) goes to the journal, never to the screen
        reason = exc.detail if isinstance(exc, YokedSourceError) else str(exc)
        state.append("end", **ident, status="config error", ok=False, reason=reason[:300])
        raise
    state.append("end", **ident, status=result.status, ok=result.ok, n_processed=result.n_processed,
                 n_missing=result.n_missing, table=str(result.timeseries))
    return result
