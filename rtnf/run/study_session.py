"""``rtnf session``: several runs of one scanning session described in one file.

A session file names the participant once and lists the runs in the order
they are acquired — a localizer, feedback runs, a transfer run without
feedback — each with its own run config::

    [session]
    subject = "01"
    session = "01"
    output_dir = "derivatives/rtnf"     # one BIDS derivatives dataset for all runs

    [[runs]]
    config = "localizer.toml"
    feedback = false                     # no value shown (localizer, transfer run)

    [[runs]]
    config = "acc_feedback.toml"
    roi_from_localizer = { run = 1, roi = "acc", top_k = 50 }   # optional: a localizer ROI

Run numbers count per task, in order. Each run waits for its own series in
the export folder (the first series that starts after the run does), so the
operator starts the session once and the scanner's series follow one another.
"""

from __future__ import annotations

import logging
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rtnf.config import Config, ConfigError, load_config

log = logging.getLogger(__name__)


@dataclass
class SessionRun:
    """One run of a session file."""

    config: Path
    feedback: bool = True
    roi_from_localizer: dict[str, Any] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class StudySession:
    """A parsed session file."""

    subject: str
    session: str
    output_dir: Path | None
    runs: list[SessionRun]


_SESSION_KEYS = {"subject", "session", "output_dir"}
_RUN_KEYS = {"config", "feedback", "roi_from_localizer"}
_LOCALIZER_KEYS = {"run", "roi", "top_k", "threshold", "search_mask"}


def load_study_session(path: str | Path) -> StudySession:
    """Read and check a session file; every run's config is validated too.

    Raises
    ------
    ConfigError
        Naming the key, the bad value and what is allowed.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the session file: {exc}") from None
    unknown = set(raw) - {"session", "runs"}
    if unknown:
        raise ConfigError(f"{path}: unknown key '{sorted(unknown)[0]}'. Allowed keys: session, runs.")
    head = raw.get("session")
    if not isinstance(head, dict) or "subject" not in head:
        raise ConfigError(f"{path}: missing table [session] with 'subject'.")
    bad = set(head) - _SESSION_KEYS
    if bad:
        raise ConfigError(f"{path}: unknown key 'session.{sorted(bad)[0]}'. Allowed keys: {', '.join(sorted(_SESSION_KEYS))}.")
    runs_raw = raw.get("runs")
    if not isinstance(runs_raw, list) or not runs_raw:
        raise ConfigError(f"{path}: missing [[runs]]: at least one run with a 'config'.")
    runs: list[SessionRun] = []
    for i, entry in enumerate(runs_raw):
        key = f"runs[{i}]"
        bad = set(entry) - _RUN_KEYS
        if bad:
            raise ConfigError(f"{path}: unknown key '{key}.{sorted(bad)[0]}'. Allowed keys: {', '.join(sorted(_RUN_KEYS))}.")
        if "config" not in entry:
            raise ConfigError(f"{path}: missing key '{key}.config' (a run config file).")
        config = (path.parent / entry["config"]).resolve()
        if not config.is_file():
            raise ConfigError(f"{path}: invalid value for '{key}.config': file not found: {config}.")
        if not isinstance(entry.get("feedback", True), bool):
            raise ConfigError(f"{path}: invalid value for '{key}.feedback': {entry['feedback']!r}. Allowed: true or false.")
        loc = entry.get("roi_from_localizer")
        if loc is not None:
            bad = set(loc) - _LOCALIZER_KEYS
            if bad or "run" not in loc or "roi" not in loc:
                raise ConfigError(
                    f"{path}: invalid value for '{key}.roi_from_localizer': {loc!r}. Allowed: a table with 'run' "
                    f"(1-based position of an earlier run), 'roi', and 'top_k' or 'threshold', optional 'search_mask'."
                )
            if not 1 <= int(loc["run"]) <= i:
                raise ConfigError(
                    f"{path}: invalid value for '{key}.roi_from_localizer.run': {loc['run']}. "
                    f"Allowed: an earlier run, 1 to {i}."
                )
        runs.append(SessionRun(config, entry.get("feedback", True), loc))
    output_dir = head.get("output_dir")
    study = StudySession(
        str(head["subject"]), str(head.get("session", "01")),
        (path.parent / output_dir).resolve() if output_dir else None, runs,
    )
    _number_runs(study)
    for i, run in enumerate(study.runs):
        try:
            load_config(run.config, run.overrides)
        except ConfigError as exc:
            raise ConfigError(f"{path}: runs[{i}]: {exc}") from None
    return study


def _number_runs(study: StudySession) -> None:
    """Labels, output folder and run numbers (per task, in order) as config overrides."""
    counts: dict[str, int] = {}
    for run in study.runs:
        task = tomllib.loads(run.config.read_text(encoding="utf-8")).get("session", {}).get("task", "nf")
        counts[task] = counts.get(task, 0) + 1
        run.overrides = {
            "session.subject": study.subject,
            "session.session": study.session,
            "session.task": task,
            "session.run": counts[task],
        }
        if study.output_dir is not None:
            run.overrides["output.dir"] = str(study.output_dir)
        if not run.feedback:
            run.overrides["feedback.enabled"] = False


def run_study_session(
    study: StudySession,
    run_one: Callable[[Config, Path], Any],
    stop: threading.Event | None = None,
) -> list[Any]:
    """Run the session's runs in order; ``run_one(cfg, config_path)`` runs one (live or replay).

    A run that defines an ROI from a localizer gets the mask written from
    the localizer run's final t-map before it starts.
    """
    results: list[Any] = []
    configs: list[Config] = []
    for i, run in enumerate(study.runs):
        if stop is not None and stop.is_set():
            break
        overrides = dict(run.overrides)
        if run.roi_from_localizer is not None:
            overrides.update(_localizer_roi(run.roi_from_localizer, configs))
        cfg = load_config(run.config, overrides)
        log.info("session run %d of %d: %s (task %s, run %d)", i + 1, len(study.runs), run.config.name,
                 cfg.session.task, cfg.session.run)
        configs.append(cfg)
        results.append(run_one(cfg, run.config))
    return results


def _localizer_roi(spec: dict[str, Any], earlier: list[Config]) -> dict[str, Any]:
    """Write a localizer ROI mask from an earlier run's t-map; return the config override that uses it."""
    return localizer_roi(spec, earlier[int(spec["run"]) - 1])


def localizer_roi(spec: dict[str, Any], source: Config) -> dict[str, Any]:
    """Write ROI ``spec["roi"]`` from the t-map of the localizer run ``source``; return the config override.

    ``spec``: ``roi``, ``top_k`` (default 50) or ``threshold``, optional
    ``search_mask``; ``run`` only names the localizer in messages. The mask
    is written beside the localizer's outputs (:func:`rtnf.run.outputs.localizer_mask`).
    """
    import nibabel as nib
    import numpy as np

    from . import outputs
    from .outputs import output_path

    stat = output_path(source, outputs.STATMAP)
    if not stat.is_file():
        raise ConfigError(
            f"roi_from_localizer: run {spec['run']} left no t-map ({stat}); set [model] whole_brain = true in its config"
        )
    img = nib.load(stat)
    t = np.nan_to_num(np.asarray(img.dataobj, dtype=np.float64))
    if spec.get("search_mask"):
        from nilearn.image import resample_to_img

        search = resample_to_img(nib.load(spec["search_mask"]), img, interpolation="nearest",
                                 force_resample=True, copy_header=True)
        t = np.where(np.asarray(search.dataobj) > 0, t, 0.0)
    if "threshold" in spec:
        mask = t > float(spec["threshold"])
    else:
        k = int(spec.get("top_k", 50))
        order = np.argsort(t, axis=None)[::-1][:k]
        mask = np.zeros(t.size, dtype=bool)
        mask[order[t.reshape(-1)[order] > 0]] = True
        mask = mask.reshape(t.shape)
    if not mask.any():
        raise ConfigError(f"roi_from_localizer: no voxel of run {spec['run']}'s t-map passes {spec}")
    out = output_path(source, outputs.localizer_mask(spec["roi"]))
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), img.affine), out)
    log.info("localizer ROI %s: %d voxels from %s", spec["roi"], int(mask.sum()), stat.name)
    return {f"rois.{spec['roi']}": {"mask": str(out)}}
