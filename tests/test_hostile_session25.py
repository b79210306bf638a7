"""Hostile tests of session 25's changes (numba realignment kernels, atlas sides, run kinds): one per finding."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from tests.helpers import ROOT

# Finding 1: a NaN mapped coordinate (NaN pose, NaN point, or the Gauss-Newton iterate after a volume
# with a NaN voxel in the brain) floored to INT64_MIN in the numba kernel and read memory outside the
# volume: a segfault when the volume ends at a page boundary (the NumPy sampler raised IndexError).
_GUARD_PAGE = textwrap.dedent("""
    import ctypes, mmap
    import numpy as np
    from rtnf.analysis._kernels import trilinear
    page = mmap.PAGESIZE
    buf = mmap.mmap(-1, 2 * page)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    libc = ctypes.CDLL(None)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(addr + page, page, 0) == 0  # the page after the volume: any read faults
    flat = np.frombuffer(buf, dtype=np.float32, count=8, offset=page - 32)
    flat[:] = np.arange(8)
    for point in ([np.nan, 0.5, 0.5], [0.5, np.nan, 0.5], [0.5, 0.5, np.nan], [np.inf, 0.0, 0.0]):
        values, inside, n_in = trilinear(flat, (2, 2, 2), np.eye(4), np.array(point)[:, None])
        assert np.isnan(values[0]) and not inside[0] and n_in == 0, (point, values, inside)
    nan_pose = np.full((4, 4), np.nan)
    values, inside, n_in = trilinear(flat, (2, 2, 2), nan_pose, np.array([[0.5], [0.5], [0.5]]))
    assert np.isnan(values[0]) and n_in == 0
    print("ok")
""")


def test_trilinear_with_nan_coordinates_reads_no_memory_outside_the_volume():
    proc = subprocess.run([sys.executable, "-c", _GUARD_PAGE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", (proc.returncode, proc.stderr[-2000:])


def test_realigner_sample_with_nan_pose_is_nan_not_a_crash():
    from rtnf.analysis.motion import Realigner

    x, y, z = np.indices((20, 22, 16))
    ref = (1000 * np.exp(-((x - 10) ** 2 + (y - 11) ** 2 + (z - 8) ** 2) / 40.0)).astype(np.float32)
    r = Realigner().fit(ref, np.diag([3.0, 3.0, 3.5, 1.0]))
    assert np.isnan(r.sample(ref, [np.nan] * 6, r.brain_indices_)).all()
    assert np.isnan(r.sample(ref, [0.0] * 6, np.array([[np.nan, 1.0, 1.0]] * 70))).all()
    vol = ref.copy()
    vol[10, 11, 8] = np.nan  # in the brain: the iterate turns NaN, the recovery samples through it
    r.estimate(vol)
    assert np.all(np.isfinite(r.params_))
    np.testing.assert_allclose(r.estimate(ref), 0.0, atol=1e-3)  # the next good volume realigns


# Finding 2: numba's cache=True raised at import ("cannot cache function '_trilinear': no locator
# available") when neither the package folder nor the user's cache folder is writable (a read-only
# install and no writable home): importing rtnf.analysis.motion, hence `rtnf run`, failed.
def test_kernels_import_and_realign_without_a_writable_cache_folder(tmp_path):
    pkg = tmp_path / "site"
    shutil.copytree(ROOT / "rtnf", pkg / "rtnf", ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "rtnf" / "analysis" / "__pycache__").write_text("not a folder")  # no in-tree cache, even as root
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    env.update(PYTHONPATH=str(pkg), HOME=str(blocker / "home"), XDG_CACHE_HOME=str(blocker / "cache"),
               PYTHONDONTWRITEBYTECODE="1")
    code = textwrap.dedent("""
        import numpy as np
        import rtnf.analysis.motion as motion
        import rtnf.run.session  # what `rtnf run` imports
        assert motion.__file__.startswith(%r), motion.__file__
        x, y, z = np.indices((20, 22, 16))
        ref = (1000 * np.exp(-((x - 10) ** 2 + (y - 11) ** 2 + (z - 8) ** 2) / 40.0)).astype(np.float32)
        r = motion.Realigner().fit(ref, np.eye(4))
        print(np.abs(r.estimate(ref)).max() < 1e-3)
    """ % str(pkg))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr[-2000:]


# Finding 3: `rtnf roi atlas --labels --table` reads a label image in the reference's world (a
# participant's aseg/aparc in scanner space), where x = 0 mm need not be the midline; the session's
# side check took x < 0 as left there too. With the head 30 mm right of the isocentre, Left-Thalamus
# (x = +19 mm) was "on the right", and as Right-Thalamus was taken the valid table was refused; an
# unpaired Left-Amygdala (x = +7 mm) was silently renamed Right-Amygdala, so --name Right-Amygdala
# gave the left amygdala. In any space only a pair's relative position tells the sides.
def _scanner_space_labels(tmp_path: Path, names: dict[int, str]) -> tuple[tuple[np.ndarray, np.ndarray], Path]:
    data = np.zeros((40, 16, 16), np.int32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [30.0 - 40.0, -16.0, -16.0]  # the head's midline at x = +30 mm (voxel i = 20)
    def at(x_mm: float) -> int:
        return int(round((x_mm - affine[0, 3]) / 2.0))
    for index, x_mm in {1: 30 - 11, 2: 30 + 11, 3: 30 - 23}.items():  # left/right thalamus, left amygdala
        data[at(x_mm) - 1:at(x_mm) + 2, 6:10, 6:10] = index
    table = tmp_path / "aseg.tsv"
    table.write_text("index\tname\n" + "".join(f"{i}\t{n}\n" for i, n in names.items()))
    return (data, affine), table


def test_atlas_roi_in_scanner_space_keeps_the_sides_of_an_off_centre_head(tmp_path):
    from rtnf.apps import roidef
    from rtnf.scanner.volume import Grid

    (data, affine), table = _scanner_space_labels(tmp_path, {1: "Left-Thalamus", 2: "Right-Thalamus",
                                                           3: "Left-Amygdala"})
    grid = Grid(data.shape, affine)
    for name, index in (("Left-Thalamus", 1), ("Right-Thalamus", 2), ("Left-Amygdala", 3)):
        roi = roidef.atlas_roi((data, affine), table, name, grid, min_coverage=0.0)
        np.testing.assert_array_equal(roi.mask, data == index)
    # a swapped table (neuroparc's kind) is still named after the voxels: the pair's left label lies left
    (data, affine), table = _scanner_space_labels(tmp_path, {1: "Right-Thalamus", 2: "Left-Thalamus"})
    roi = roidef.atlas_roi((data, affine), table, "Left-Thalamus", grid, min_coverage=0.0)
    np.testing.assert_array_equal(roi.mask, data == 1)


# Finding 4: the side check counted voxels with np.bincount over the label values: one voxel of
# value 2e9 in an --atlas-file (a float image passed by mistake) asked for two 16 GB arrays
# (MemoryError with a traceback, or the machine's memory), where the label lookup needs none.
_HUGE_LABEL = textwrap.dedent("""
    import resource, sys
    import nibabel as nib
    import numpy as np
    from rtnf.apps.roidef.atlases import load_atlas
    folder = sys.argv[1]
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    data = np.zeros((10, 10, 10), np.int32)
    data[2, 5, 5], data[7, 5, 5], data[5, 5, 5] = 1, 2, 2_000_000_000
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -10.0
    nib.save(nib.Nifti1Image(data, affine), folder + "/atlas.nii.gz")
    open(folder + "/atlas.csv", "w").write("index,name\\n1,Left_X\\n2,Right_X\\n")
    print(load_atlas(atlas_file=folder + "/atlas.nii.gz", table=folder + "/atlas.csv")[0].table)
""")


def test_atlas_side_check_with_a_huge_label_value_allocates_no_huge_array(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _HUGE_LABEL, str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "{'Left_X': 1, 'Right_X': 2}"


# Finding 5: a table name with leading punctuation (``_Left_X``) is lateralised for matching
# (normalise() drops the "_") but _swap_side() found no prefix in it: the label on the right was
# logged as renamed yet kept its name, and --label Left_X picked the right-side voxels.
def test_side_prefix_after_leading_punctuation_is_swapped(tmp_path):
    import nibabel as nib

    from rtnf.apps.roidef.atlases import find_label, load_atlas

    data = np.zeros((21, 10, 10), np.int32)
    data[15, 5, 5] = 1  # x = +10 mm
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-20.0, -10.0, -10.0]
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "atlas.nii.gz")
    (tmp_path / "atlas.csv").write_text("index,name\n1,_Left_X\n", encoding="utf-8")
    images = load_atlas(atlas_file=tmp_path / "atlas.nii.gz", table=tmp_path / "atlas.csv")
    assert images[0].table == {"_Right_X": 1}
    assert find_label(images, "Right_X")[1] == 1


# Finding 6: a provenance whose run_kind says "transfer" (or "localizer") while its recorded config
# showed feedback was counted as a transfer run (a study forces feedback off in those runs, so the
# provenance was edited): the feedback actually shown is what the run was.
def test_run_kind_does_not_hide_feedback_that_was_shown():
    from types import SimpleNamespace

    from rtnf.apps.report.longitudinal import run_role

    def run(kind: object, enabled: object) -> SimpleNamespace:
        prov = {"run_kind": kind, "config": {"feedback": {"enabled": enabled}}}
        return SimpleNamespace(provenance=prov, prefix="sub-01_task-x", setting=lambda *a: True)

    assert run_role(run("transfer", True), "x") == "feedback"
    assert run_role(run("localizer", True), "x") == "feedback"
    assert run_role(run("transfer", False), "x") == "transfer"
    assert run_role(run("localizer", False), "transfer") == "no feedback"
    assert run_role(run(5, False), "transfer") == "transfer"  # unknown kind: guessed from the task
    assert run_role(run("x" * 10**6, False), "rest") == "no feedback"


# Finding 7: a tissue mask path with a NUL byte or a name longer than the file system allows made
# `rtnf check` (and `rtnf run`) end with a traceback (ValueError/OSError from pathlib) instead of
# one config error line and exit 2.
def test_tissue_mask_path_that_is_no_path_is_one_config_error(tmp_path):
    from tests.helpers import make_config

    for n, path in enumerate(("a\x00b.nii.gz", "x" * 5000)):
        config = make_config(tmp_path, {"confounds.tissue.signals": ["white_matter"],
                                        "confounds.tissue.wm_mask": path}, name=f"c{n}.toml")
        proc = subprocess.run([sys.executable, "-m", "rtnf.cli", "check", str(config)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, lines[-3:]
        assert "confounds.tissue.wm_mask" in lines[0]
