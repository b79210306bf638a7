"""Helpers of the ``rtnf study`` tests (``tests/test_study.py``, ``tests/test_study_full.py``).

The run configs a simulated study uses, ``rtnf study next`` with a replayed
source, where a run's outputs land in the study's derivatives dataset, a
simulated run seen through a repositioned head, and the text normalisation
the blinding checks compare with.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rtnf.cli import main
from tests.helpers import pattern

ARM_WORDS = re.compile(r"\b(real(?!-time)|sham|yoked|control|none)\b")
"""The arms' names as a study file writes them: none may show in a blinded output ("real-time" is every arm's)."""


def run_config(address: str, n_volumes: int = 40) -> dict[str, Any]:
    """Overrides of a study's run config: TR 0.5 s, rest/regulate blocks of 8 volumes, no dummies."""
    return {"session.subject": "x", "scanner.n_volumes": n_volumes, "scanner.dummy_volumes": 0, "scanner.tr_s": 0.5,
            "protocol.pattern": pattern(rest=8, regulate=8), "publish.preview": False, "publish.address": address,
            "output.dir": "unused", "scanner.export_dir": "export"}


def next_run(capsys, study: Path, subject: str, source: Path, pace_s: float = 0.0) -> str:
    """``rtnf study next SUBJECT --replay SOURCE`` in this process; asserts exit 0 and returns what it printed."""
    code = main(["study", "next", subject, "--study", str(study), "--replay", str(source), "--pace-s", str(pace_s)])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    return out.out + out.err


def func_dir(root: Path, subject: str, session: str) -> Path:
    """The ``func`` folder of a participant's session in the study's dataset (``root / "derivatives"``)."""
    return root / "derivatives" / f"sub-{subject}" / f"ses-{session}" / "func"


def table_path(root: Path, subject: str, session: str, task: str = "nf", run: int = 1) -> Path:
    """A run's recorded table in the study's dataset."""
    name = f"sub-{subject}_ses-{session}_task-{task}_run-{run}_desc-rtnf_timeseries.tsv"
    return func_dir(root, subject, session) / name


def neutral(text: str, subject: str) -> str:
    """A line with the participant's label, run ids' random part and every number taken out."""
    text = re.sub(r"_[0-9a-f]{6}\b", "_RANDOM", text.replace(subject, "SUBJECT"))
    return re.sub(r"\d+(\.\d+)?(e-?\d+)?", "#", text)


def repositioned(source: Path, out: Path, pose: list[float]) -> Path:
    """The simulated run ``source`` (an export folder of 3D NIfTI files) as a 4D NIfTI of a head moved by ``pose``."""
    import nibabel as nib
    import numpy as np

    from scanner_sim.synth import apply_motion

    files = sorted(source.glob("*.nii*"))
    first = nib.load(files[0])
    data = np.stack([apply_motion(np.asarray(nib.load(f).dataobj, dtype=np.float32), first.affine, pose, order=1)
                     for f in files], axis=-1).astype(np.float32)
    nib.save(nib.Nifti1Image(data, first.affine), out)
    return out
