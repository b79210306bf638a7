"""``study.toml``: the participants, sessions, runs, ROI strategy and arms of a study.

Example (every relative path is relative to the study file's folder)::

    [study]
    name = "accpain"                   # letters and digits; names the default state folder and key file
    output_dir = "derivatives/rtnf"    # one BIDS derivatives dataset for every participant, session and run
    participants = ["P01", "P02"]      # non-identifying codes (see check_participant_id)
    sessions = ["01", "02"]            # session labels, in the order they happen
    # state_dir = "accpain-state"      # the study's state (a journal); default "<name>-state"
    # key_file = "accpain.key"         # the blinding key `rtnf study init` writes (mode 0600); default "<name>.key"

    [[runs]]                           # the runs of every session, in order
    kind = "localizer"                 # "localizer" (no feedback, whole-brain t-map), "feedback", "transfer"
    config = "localizer.toml"

    [[runs]]
    kind = "feedback"
    config = "acc_feedback.toml"

    [roi]
    strategy = "localizer"             # "config", "atlas", "localizer" or "carried" (see RoiStrategy)
    roi = "acc"
    top_k = 50

    [arms]
    arms = ["real", "sham"]            # 2 to 4 of "real", "sham", "control", "none"
    control_roi = "wm"                 # only with "control": the ROI it feeds back instead
    # conceal_order = true             # feedback runs wait for the first participant's (default with "sham")
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rtnf.config import LABEL, MAX_LABEL, ConfigError, FilePath, load_config
from rtnf.wire._validation import format_validation_error

ARM_KINDS = ("real", "sham", "control", "none")
"""The arms a study can compare (see :mod:`rtnf.study.arms`)."""

Label = Annotated[str, Field(pattern=LABEL, max_length=MAX_LABEL)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def check_participant_id(pid: str) -> str:
    """Refuse participant IDs that may identify a person; return the ID.

    A study's IDs are codes: they must hold at least one digit (a letters-only
    ID may be a name or initials) and must not read as a date (birth dates:
    ``19850312``, ``120385``, ``850312``).

    Raises
    ------
    ValueError
        Naming the rule the ID breaks.
    """
    if not re.fullmatch(LABEL, pid):
        raise ValueError(f"{pid!r} is not a code of letters and digits")
    if not any(c.isdigit() for c in pid):
        raise ValueError(f"{pid!r} has no digit: a letters-only ID may be a name or initials; use codes such as P01")
    for digits in re.findall(r"\d{6,8}", pid):
        if _reads_as_date(digits):
            raise ValueError(f"{pid!r} contains {digits}, which reads as a date; use codes such as P01")
    return pid


def _reads_as_date(digits: str) -> bool:
    """Whether a run of 6 or 8 digits reads as a date (YYYYMMDD, DDMMYYYY, YYMMDD, DDMMYY)."""
    layouts = {8: [(0, 4, 4, 6, 6, 8), (4, 8, 2, 4, 0, 2)], 6: [(0, 2, 2, 4, 4, 6), (4, 6, 2, 4, 0, 2)]}
    for y0, y1, m0, m1, d0, d1 in layouts.get(len(digits), []):
        year = int(digits[y0:y1]) + (1900 if y1 - y0 == 2 else 0)
        try:
            date(year, int(digits[m0:m1]), int(digits[d0:d1]))
            return True
        except ValueError:
            continue
    return False


class RunEntry(_Model):
    """One run of every session: its kind and its run config."""

    kind: Literal["localizer", "feedback", "transfer"]
    config: FilePath


class RoiStrategy(_Model):
    """Where the feedback runs' ROI comes from.

    - ``"config"``: the run configs' own ROIs (masks made before the study, e.g.
      ``rtnf roi mni --region ...`` or an atlas label): nothing is derived.
    - ``"atlas"``: an MNI region (``region``, a built-in region of ``rtnf roi
      mni``, or an MNI sphere ``center_mm`` + ``radius_mm``) put on each
      session's grid as ``rtnf roi mni`` does: the MNI152 template registered
      to the first volume of the session's first run, once per session.
    - ``"localizer"``: each session's localizer run (its whole-brain t-map): the
      ``top_k`` voxels (or those above ``threshold``) within ``search_mask``
      become ROI ``roi`` of that session's feedback and transfer runs.
    - ``"carried"``: the first session's localizer ROI carried to each later
      session by ``rtnf roi transfer``'s registration (day-1 localizer reference
      to day-N localizer reference, rigid); the later sessions' localizers give
      the reference and a re-derived ROI to compare with (Dice), not the ROI.
    """

    strategy: Literal["config", "atlas", "localizer", "carried"] = "config"
    roi: Optional[Label] = None
    top_k: Annotated[int, Field(ge=1, le=100_000)] = 50
    threshold: Optional[float] = None
    search_mask: Optional[FilePath] = None
    region: Optional[str] = None
    center_mm: Optional[Annotated[list[float], Field(min_length=3, max_length=3)]] = None
    radius_mm: Optional[Annotated[float, Field(gt=0, le=100)]] = None

    @model_validator(mode="after")
    def _roi_named(self) -> "RoiStrategy":
        if self.strategy != "config" and self.roi is None:
            raise ValueError(f"strategy {self.strategy!r} needs 'roi': the ROI of the feedback runs it defines")
        if self.strategy == "atlas" and (self.region is None) == (self.center_mm is None or self.radius_mm is None):
            raise ValueError("strategy 'atlas' needs either 'region' (a region of `rtnf roi mni --region`) or "
                             "'center_mm' and 'radius_mm' (an MNI sphere)")
        return self


class ArmsSpec(_Model):
    """The arms compared, concealed under codes at ``rtnf study init``."""

    arms: Annotated[list[Literal["real", "sham", "control", "none"]], Field(min_length=1, max_length=4)] = ["real"]
    control_roi: Optional[Label] = None
    # Participants are allocated in permuted blocks of this size (a multiple of the number of arms; default: 2 x arms).
    block_size: Optional[Annotated[int, Field(ge=1, le=1000)]] = None
    # Every participant's feedback run waits for the study's first participant's matched run (allocated to the
    # real arm): refusals then never depend on an arm. Default: on when there is a sham arm.
    conceal_order: Optional[bool] = None

    @property
    def ordered(self) -> bool:
        """Whether ``conceal_order`` applies (its value, or whether a sham arm is compared)."""
        return "sham" in self.arms if self.conceal_order is None else self.conceal_order

    @model_validator(mode="after")
    def _consistent(self) -> "ArmsSpec":
        if len(set(self.arms)) != len(self.arms):
            raise ValueError(f"'arms' lists an arm twice: {self.arms}")
        if "sham" in self.arms and "real" not in self.arms:
            raise ValueError("a 'sham' arm is yoked to participants of the 'real' arm: add 'real' to 'arms'")
        if ("control" in self.arms) != (self.control_roi is not None):
            raise ValueError("'control_roi' goes with a 'control' arm: set both or neither")
        if self.block_size is not None and self.block_size % len(self.arms):
            raise ValueError(f"'block_size' {self.block_size} is not a multiple of the {len(self.arms)} arms")
        return self


class StudyHead(_Model):
    """``[study]``: names, folders, participants and sessions."""

    name: Label = "study"
    output_dir: FilePath = Path("derivatives/rtnf")
    state_dir: Optional[FilePath] = None
    key_file: Optional[FilePath] = None
    participants: Annotated[list[Label], Field(min_length=1)]
    sessions: Annotated[list[Label], Field(min_length=1)] = ["01"]

    @field_validator("participants")
    @classmethod
    def _codes_only(cls, ids: list[str]) -> list[str]:
        for pid in ids:
            check_participant_id(pid)
        if len(set(ids)) != len(ids):
            raise ValueError("a participant is listed twice")
        return ids

    @field_validator("sessions")
    @classmethod
    def _unique(cls, labels: list[str]) -> list[str]:
        if len(set(labels)) != len(labels):
            raise ValueError("a session is listed twice")
        return labels


class StudyFile(_Model):
    """The whole ``study.toml``."""

    study: StudyHead
    runs: Annotated[list[RunEntry], Field(min_length=1)]
    roi: RoiStrategy = RoiStrategy()
    arms: ArmsSpec = ArmsSpec()


@dataclass(frozen=True)
class PlannedRun:
    """One run of a session as the study plans it."""

    position: int  # 0-based place in the session's runs
    kind: str  # "localizer", "feedback" or "transfer"
    config: Path
    task: str  # the config's session.task


@dataclass(frozen=True)
class Study:
    """A loaded study file, its paths resolved."""

    path: Path
    spec: StudyFile
    runs: tuple[PlannedRun, ...]

    @property
    def name(self) -> str:
        """The study's name."""
        return self.spec.study.name

    @property
    def output_dir(self) -> Path:
        """The study's BIDS derivatives dataset."""
        return self.spec.study.output_dir

    @property
    def state_dir(self) -> Path:
        """The study's state folder."""
        return self.spec.study.state_dir or self.path.parent / f"{self.name}-state"

    @property
    def key_file(self) -> Path:
        """The blinding key's path."""
        return self.spec.study.key_file or self.path.parent / f"{self.name}.key"

    @property
    def participants(self) -> list[str]:
        """Participant codes, in the study file's order."""
        return list(self.spec.study.participants)

    @property
    def sessions(self) -> list[str]:
        """Session labels, in order."""
        return list(self.spec.study.sessions)


def load_study(path: str | Path) -> Study:
    """Read and check a study file; every run config is validated too.

    Raises
    ------
    ConfigError
        One message naming the key, the bad value and what is allowed.
    """
    path = Path(path).resolve()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read study file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        spec = StudyFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: " + format_validation_error(exc, StudyFile, "")) from None
    spec = _resolve(spec, path.parent)
    runs = tuple(_plan_run(path, i, entry) for i, entry in enumerate(spec.runs))
    study = Study(path, spec, runs)
    _check_paths(study)
    _check_rois(study)
    return study


def _resolve(spec: StudyFile, base: Path) -> StudyFile:
    """Relative paths of the study file, relative to its folder."""

    def resolve(p: Path | None) -> Path | None:
        return None if p is None else (base / p).resolve()

    head = spec.study.model_copy(update={k: resolve(getattr(spec.study, k))
                                         for k in ("output_dir", "state_dir", "key_file")})
    runs = [r.model_copy(update={"config": resolve(r.config)}) for r in spec.runs]
    roi = spec.roi.model_copy(update={"search_mask": resolve(spec.roi.search_mask)})
    return spec.model_copy(update={"study": head, "runs": runs, "roi": roi})


def _plan_run(path: Path, i: int, entry: RunEntry) -> PlannedRun:
    if not entry.config.is_file():
        raise ConfigError(f"{path}: invalid value for 'runs[{i}].config': file not found: {entry.config}.")
    cfg = load_config(entry.config)  # the config's own message, with its file name, when it is wrong
    return PlannedRun(i, entry.kind, entry.config, cfg.session.task)


def _check_paths(study: Study) -> None:
    """The key must live apart from the outputs and the state, which others read and copy."""
    key = study.key_file
    for where, folder in (("study.output_dir", study.output_dir), ("study.state_dir", study.state_dir)):
        if key.is_relative_to(folder):
            raise ConfigError(f"{study.path}: invalid value for 'study.key_file': {key} is inside {where} ({folder}). "
                              "Allowed: a path outside the outputs and the state, which are shared.")
    if study.spec.roi.search_mask is not None and not study.spec.roi.search_mask.is_file():
        raise ConfigError(f"{study.path}: invalid value for 'roi.search_mask': file not found: "
                          f"{study.spec.roi.search_mask}.")


def _check_rois(study: Study) -> None:
    """The ROIs the strategy and the control arm name exist in the feedback runs' configs."""
    kinds = {r.kind for r in study.runs}
    if "feedback" not in kinds:
        raise ConfigError(f"{study.path}: 'runs' has no run of kind 'feedback': the arms apply to feedback runs.")
    if study.spec.roi.strategy in ("localizer", "carried") and "localizer" not in kinds:
        raise ConfigError(f"{study.path}: invalid value for 'roi.strategy': {study.spec.roi.strategy!r} needs a run "
                          "of kind 'localizer' in 'runs'.")
    if study.spec.roi.strategy == "atlas" and study.runs[0].kind == "feedback":
        raise ConfigError(f"{study.path}: invalid value for 'roi.strategy': 'atlas' registers the MNI template to "
                          "the session's first run, which must come before the feedback runs (a localizer).")
    for run in study.runs:
        if run.kind != "feedback":
            continue
        rois = load_config(run.config).rois
        for key, name in (("roi.roi", study.spec.roi.roi), ("arms.control_roi", study.spec.arms.control_roi)):
            if name is not None and name not in rois:
                raise ConfigError(f"{study.path}: invalid value for '{key}': {name!r} is not an ROI of "
                                  f"{run.config.name} (ROIs: {', '.join(rois)}).")
