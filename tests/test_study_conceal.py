"""``rtnf study next`` refuses a feedback run under conditions the operator can see, never by its arm.

The operator knows every participant's arm code and progress, not what the codes mean. A rule that refused
only a sham participant (no matched real run yet) would tell the arm by scheduling; the study's rule
(``arms.conceal_order``) refuses real and sham participants alike. These tests build the study's state by
hand (allocation, key, journal) and ask :func:`rtnf.study.runner.prepare` what it would do: no run, no
scanner, under a second.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rtnf.cli import main
from rtnf.config import ConfigError
from rtnf.study.arms import allocate, write_key
from rtnf.study.progress import next_step
from rtnf.study.runner import init_study, load_key, prepare
from rtnf.study.state import StudyRecord, StudyState
from rtnf.study.studyfile import Study, load_study
from tests.helpers import make_config
from tests.study_data import ARM_WORDS, run_config

STUDY = """
[study]
name = "trial"
output_dir = "derivatives"
participants = ["P01", "P02", "P03"]
sessions = ["01"]

[[runs]]
kind = "localizer"
config = "localizer.toml"

[[runs]]
kind = "feedback"
config = "nf.toml"

[arms]
arms = ["real", "sham"]
"""

CODES = {"A": "real", "B": "sham"}
TABLE_HEADER = "index\tfeedback_value\tfeedback_signal\tfeedback_reason\n"


def _study(tmp_path: Path, allocation: dict[str, str]) -> Study:
    """A study whose state and key hold ``allocation`` (participant -> code of :data:`CODES`)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    make_config(tmp_path, {**run_config("inproc://x"), "session.task": "loc"}, name="localizer.toml")
    make_config(tmp_path, {**run_config("inproc://x"), "session.task": "nf"}, name="nf.toml")
    (tmp_path / "study.toml").write_text(STUDY)
    study = load_study(tmp_path / "study.toml")
    digest = write_key(study.key_file, study.name, CODES)
    StudyState(study.state_dir).create(StudyRecord(study.name, allocation, digest, "2026-01-01T00:00:00Z"))
    return study


def _ran(study: Study, subject: str, position: int, table: Path | None = None) -> None:
    """Journal a run of ``subject`` at ``position`` of session 01 that ended usable."""
    task = study.runs[position].task
    ident = {"subject": subject, "session": "01", "position": position, "task": task, "run": 1}
    state = StudyState(study.state_dir)
    state.append("start", **ident)
    state.append("end", **ident, status="completed", ok=True, n_processed=40, n_missing=0,
                 table=str(table or study.output_dir / f"{subject}_{task}.tsv"))


def _outcome(study: Study, subject: str) -> str:
    """What ``rtnf study next SUBJECT`` does with its next run: "runs", or the refusal, the subject taken out."""
    state = StudyState(study.state_dir)
    record, events = state.record(), state.events()
    step = next_step(study, events, subject)
    assert step is not None and step.planned.kind == "feedback"
    try:
        prepare(study, record, events, step, lambda: load_key(study, record))
    except ConfigError as exc:
        return str(exc).replace(subject, "SUBJECT")
    return "runs"


def _localizers_done(study: Study) -> None:
    for subject in study.participants:
        _ran(study, subject, 0)


# P02 is real in one study and sham in the other; everything the operator sees is the same in both.
ALLOCATIONS = {"P02 real": {"P01": "A", "P02": "A", "P03": "B"},
               "P02 sham": {"P01": "A", "P02": "B", "P03": "A"}}


def test_refusal_before_any_matched_run_does_not_depend_on_the_arm(tmp_path):
    outcomes = {}
    for name, allocation in ALLOCATIONS.items():
        study = _study(tmp_path / name.replace(" ", "_"), allocation)
        _localizers_done(study)
        outcomes[name] = {p: _outcome(study, p) for p in ("P02", "P03")}
    # the same participant at the same place: the same outcome, whatever its arm
    assert outcomes["P02 real"] == outcomes["P02 sham"]
    # ... which is a refusal naming no arm and no other participant
    for text in outcomes["P02 real"].values():
        assert "cannot start yet" in text
        assert not ARM_WORDS.search(text) and not re.search(r"P0\d", text), text


def test_after_the_first_participants_matched_run_real_and_sham_both_run(tmp_path):
    for name, allocation in ALLOCATIONS.items():
        study = _study(tmp_path / name.replace(" ", "_"), allocation)
        _localizers_done(study)
        assert _outcome(study, "P01") == "runs"  # the study's first participant leads every feedback run
        table = study.output_dir / "P01_nf.tsv"
        table.parent.mkdir(parents=True, exist_ok=True)
        table.write_text(TABLE_HEADER + "0\t0.5\t0.1\tn/a\n")
        _ran(study, "P01", 1, table)
        assert {p: _outcome(study, p) for p in ("P02", "P03")} == {"P02": "runs", "P03": "runs"}, name


def test_unreadable_matched_table_refuses_every_arm_alike_and_names_nobody(tmp_path, capsys):
    outcomes = {}
    for name, allocation in ALLOCATIONS.items():
        study = _study(tmp_path / name.replace(" ", "_"), allocation)
        _localizers_done(study)
        _ran(study, "P01", 1, study.output_dir / "P01_nf.tsv")  # ended, but its table is gone
        outcomes[name] = {p: _outcome(study, p) for p in ("P02", "P03")}
        # on screen: no table, no participant; the journal says which table and why
        assert main(["study", "next", "P02", "--study", str(study.path)]) == 2
        err = capsys.readouterr().err
        assert "the matched run's recorded table cannot be read; see the study log" in err
        assert "P01" not in err and ".tsv" not in err and not ARM_WORDS.search(err), err
        refused = [e for e in StudyState(study.state_dir).events() if e["event"] == "refused"]
        assert refused and "P01_nf.tsv" in refused[-1]["detail"]
    assert outcomes["P02 real"] == outcomes["P02 sham"]
    assert set(outcomes["P02 real"].values()) == {
        "sub-SUBJECT ses-01 run 2 cannot start yet: the matched run's recorded table cannot be read; "
        "see the study log"}


@pytest.mark.parametrize("seed", range(20))
def test_init_allocates_the_first_participant_to_the_real_arm(tmp_path, seed):
    """The leader runs every feedback run first, so it is the sham source: it must be real (a public fact)."""
    make_config(tmp_path, {**run_config("inproc://x"), "session.task": "loc"}, name="localizer.toml")
    make_config(tmp_path, {**run_config("inproc://x"), "session.task": "nf"}, name="nf.toml")
    (tmp_path / "study.toml").write_text(STUDY)
    study = load_study(tmp_path / "study.toml")
    record = init_study(study)
    codes = json.loads(study.key_file.read_text())["codes"]
    assert codes[record.allocation["P01"]] == "real"
    assert sorted(codes[c] for c in record.allocation.values()) in (["real", "real", "sham"],
                                                                      ["real", "sham", "sham"])


def test_allocate_keeps_blocks_balanced_with_a_lead_code():
    import random

    for seed in range(50):
        seq = allocate([f"P{i:02d}" for i in range(1, 9)], ["A", "B"], 4, rng=random.Random(seed), lead="B")
        values = list(seq.values())
        assert values[0] == "B"
        assert sorted(values[:4]) == ["A", "A", "B", "B"] and sorted(values[4:]) == ["A", "A", "B", "B"]


def test_conceal_order_off_keeps_the_old_rule(tmp_path):
    """``conceal_order = false``: a sham participant waits for a real one's matched run (which tells its arm)."""
    allocation = ALLOCATIONS["P02 sham"]
    study = _study(tmp_path, allocation)
    (tmp_path / "study.toml").write_text(STUDY + "conceal_order = false\n")
    study = load_study(tmp_path / "study.toml")
    _localizers_done(study)
    assert _outcome(study, "P03") == "runs"  # real
    assert "cannot start yet" in _outcome(study, "P02")  # sham


def test_a_sham_source_unreadable_during_the_run_is_journalled_not_shown(tmp_path):
    """The table read when the run builds its feedback: the journal gets the path, the raised message does not."""
    from rtnf.study.runner import PreparedRun, execute
    from rtnf.study.sham import read_yoked

    study = _study(tmp_path, ALLOCATIONS["P02 sham"])
    state = StudyState(study.state_dir)
    step = next_step(study, state.events(), "P02")
    prepared = PreparedRun(step, None, "", None, "B")  # the run below reads only the step
    with pytest.raises(ConfigError) as raised:
        execute(state, prepared, lambda p: read_yoked(tmp_path / "P01_gone.tsv", 40))
    assert "P01" not in str(raised.value) and "see the study log" in str(raised.value)
    end = state.events()[-1]
    assert end["event"] == "end" and "P01_gone.tsv" in end["reason"]
