"""Where each participant stands, folded from the study's journal: runs done, the run under way, what comes next.

A run is identified by (participant, session, task, run number). Its
``start`` event is journalled before it starts, its ``end`` event when it has
ended. A start without an end is a run a crash interrupted: the next step
resumes it (same run number, the rows kept). A run that ended without a
usable volume or was aborted is done again under the next free run number
of its task in that session, so its rows stay too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .studyfile import PlannedRun, Study


@dataclass(frozen=True)
class Attempt:
    """One run started for a planned run of a session."""

    subject: str
    session: str
    position: int
    task: str
    run: int
    ended: dict[str, Any] | None  # the end event, None while under way or interrupted

    @property
    def ok(self) -> bool:
        """Whether it ended with at least one usable volume."""
        return bool(self.ended and self.ended.get("ok"))


@dataclass(frozen=True)
class Step:
    """The next run of a participant."""

    subject: str
    session: str
    planned: PlannedRun
    run: int  # run number of the outputs (run-<n>)
    resume: bool  # continue a run a crash interrupted

    def describe(self, n_runs: int) -> str:
        """One line for the operator."""
        what = "resume (interrupted)" if self.resume else "next"
        return (f"{what}: sub-{self.subject} ses-{self.session}, run {self.planned.position + 1} of {n_runs}: "
                f"{self.planned.kind} (task-{self.planned.task} run-{self.run}), config {self.planned.config.name}")


def attempts(events: list[dict[str, Any]], subject: str | None = None) -> list[Attempt]:
    """The runs started, in order, each with its end event when it has one."""
    started: dict[tuple, dict[str, Any]] = {}
    ends: dict[tuple, dict[str, Any]] = {}
    for e in events:
        if e.get("event") not in ("start", "end") or (subject is not None and e["subject"] != subject):
            continue
        key = (e["subject"], e["session"], e["task"], e["run"])
        if e["event"] == "start":
            started.setdefault(key, e)
        else:
            ends[key] = e
    return [Attempt(s["subject"], s["session"], s["position"], s["task"], s["run"], ends.get(key))
            for key, s in started.items()]


def next_step(study: Study, events: list[dict[str, Any]], subject: str) -> Step | None:
    """The participant's next run, or None when every session is done."""
    mine = attempts(events, subject)
    for session in study.sessions:
        here = [a for a in mine if a.session == session]
        for planned in study.runs:
            tries = [a for a in here if a.position == planned.position]
            if any(a.ok for a in tries):
                continue
            if tries and tries[-1].ended is None:
                return Step(subject, session, planned, tries[-1].run, resume=True)
            used = [a.run for a in here if a.task == planned.task]
            return Step(subject, session, planned, max(used, default=0) + 1, resume=False)
    return None


def completed(events: list[dict[str, Any]], session: str, position: int) -> list[Attempt]:
    """Runs of every participant that ended usable at ``position`` of ``session``, earliest end first."""
    done = [a for a in attempts(events) if a.session == session and a.position == position and a.ok]
    return sorted(done, key=lambda a: a.ended["t"])
