"""Atlas ROIs (issue 18 point 1): Harvard-Oxford and HCP labels by name, hemispheres, unions, spheres, --within."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rtnf.apps import roidef
from rtnf.apps.roidef import RoiDefError
from rtnf.apps.roidef.atlases import atlas_region, find_label, load_atlas, normalise
from rtnf.scanner.volume import Grid
from tests.helpers import SHARED_DATA, requires_shared_data

ATLASES = SHARED_DATA / "atlases"
pytestmark = requires_shared_data("atlases")


def _world(shape, affine) -> np.ndarray:
    return (np.indices(shape, dtype=np.float64).reshape(3, -1).T @ affine[:3, :3].T + affine[:3, 3]).reshape(shape + (3,))


def _label_voxels(image: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(ATLASES / image)
    return np.rint(np.asarray(img.dataobj)).astype(int) == index, img.affine


def test_names_match_without_case_or_punctuation():
    ho = load_atlas("harvard-oxford", atlas_dir=ATLASES)
    assert find_label(ho, "Cingulate_Gyrus_anterior_division")[1:3] == (29, "Cingulate_Gyrus_anterior_division")
    assert find_label(ho, "cingulate gyrus, Anterior Division")[1] == 29  # nilearn's spelling
    # The subcortical file, as it is: value 10 is FSL's Left Amygdala (MNI x = -23 mm), which neuroparc's
    # table calls Right_Amygdala; load_atlas names the labels after the side their voxels lie on.
    assert find_label(ho, "Left_Amygdala")[1:] == (10, "Left_Amygdala", None)
    assert find_label(ho, "R_Amygdala")[1:] == (20, "Right_Amygdala", "right")
    hcp = load_atlas("hcp", atlas_dir=ATLASES)
    assert find_label(hcp, "L_Area_a24")[1:] == (61, "Area_a24", "left")
    assert normalise("Para-Insular_Area") == "para_insular_area"


def test_lateralised_labels_lie_on_their_side():
    """Every Left_/Right_ label of the subcortical atlas has its voxels on that side (MNI x < 0 is left)."""
    ho = load_atlas("harvard-oxford", atlas_dir=ATLASES)
    sub = ho[1]
    x = _world(sub.data.shape, sub.affine)[..., 0]
    sided = {name: index for name, index in sub.table.items() if name.startswith(("Left_", "Right_"))}
    assert len(sided) == 20
    for name, index in sided.items():
        assert (x[sub.data == index].mean() < 0) == name.startswith("Left_"), name
    right, _, picked = atlas_region(ho, ["R_Amygdala"])
    assert picked[0]["index"] == 20 and (x[right > 0] > 0).all()
    as_named, _, _ = atlas_region(ho, ["Right_Amygdala"])
    np.testing.assert_array_equal(as_named, right)


def test_atlas_roi_with_the_atlas_table_names_sides_as_roi_mni_does():
    """``rtnf roi atlas --labels --table`` reads the same swapped neuroparc table: its sides must agree with ``roi mni``."""
    image, table = ATLASES / "HarvardOxfordsub-maxprob-thr25_space-MNI152NLin6_res-2x2x2.nii.gz", \
        ATLASES / "HarvardOxfordsub-maxprob.csv"
    img = nib.load(image)
    grid = Grid(img.shape[:3], img.affine)
    roi = roidef.atlas_roi(image, table, "Right_Amygdala", grid, min_coverage=0.0)
    x = _world(img.shape[:3], img.affine)[..., 0]
    assert roi.mask.sum() > 100 and (x[roi.mask] > 0).all()


def test_unknown_label_names_the_closest():
    hcp = load_atlas("hcp", atlas_dir=ATLASES)
    with pytest.raises(RoiDefError, match="Closest: Area_a24") as err:
        find_label(hcp, "Area_a24x")
    assert err.value.param == "--label"


def test_union_hemisphere_and_sphere_against_the_atlas_file():
    hcp = load_atlas("hcp", atlas_dir=ATLASES)
    image = "Glasser_space-MNI152NLin6_res-2x2x2.nii.gz"
    a24, aff = _label_voxels(image, 61)
    p32, _ = _label_voxels(image, 64)
    x = _world(a24.shape, aff)[..., 0]
    union, _, picked = atlas_region(hcp, ["Area_a24", "area_p32"])
    np.testing.assert_array_equal(union > 0, a24 | p32)
    assert [p["voxels"] for p in picked] == [int(a24.sum()), int(p32.sum())]
    left, _, _ = atlas_region(hcp, ["Area_a24"], hemisphere="left")
    np.testing.assert_array_equal(left > 0, a24 & (x < 0))
    mixed, _, picked = atlas_region(hcp, ["R_Area_a24", "L_Area_p32"])
    np.testing.assert_array_equal(mixed > 0, (a24 & (x > 0)) | (p32 & (x < 0)))
    ball, _, _ = atlas_region(hcp, ["Area_a24", "Area_p32"], sphere_mm=(0.0, 40.0, 10.0, 8.0))
    inside = np.linalg.norm(_world(a24.shape, aff) - [0.0, 40.0, 10.0], axis=-1) <= 8.0
    np.testing.assert_array_equal(ball > 0, (a24 | p32) & inside)
    assert 0 < (ball > 0).sum() < (union > 0).sum()
    with pytest.raises(RoiDefError, match="does not meet"):
        atlas_region(hcp, ["Area_a24"], sphere_mm=(60.0, -80.0, 0.0, 5.0))


def test_missing_atlas_files_and_hcp_without_dir(tmp_path):
    with pytest.raises(RoiDefError, match="lacks") as err:
        load_atlas("hcp", atlas_dir=tmp_path)
    assert err.value.param == "--atlas-dir"
    with pytest.raises(RoiDefError, match="no fetcher"):
        load_atlas("hcp")


def _mni_reference(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    """A 3 mm 'EPI' on MNI coordinates and an identity registration (the atlas lands as it is)."""
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = [-90.0, -126.0, -72.0]
    shape = (61, 73, 61)
    ref = tmp_path / "ref.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random(shape).astype(np.float32), affine), ref)
    tfm = tmp_path / "identity_xfm.json"
    roidef.MniRegistration(np.eye(4)).save(tfm)
    return ref, tfm, affine


def test_cli_atlas_roi_lands_on_the_label_and_within_restricts(tmp_path, capsys):
    ref, tfm, affine = _mni_reference(tmp_path)
    out = tmp_path / "acc.nii.gz"
    code = roidef.main(["mni", "--atlas", "harvard-oxford", "--atlas-dir", str(ATLASES), "--label",
                        "cingulate_gyrus_anterior_division", "--hemisphere", "right", "-r", str(ref), "-o", str(out),
                        "--transform", str(tfm)])
    assert code == 0, capsys.readouterr().err
    roi = np.asarray(nib.load(out).dataobj) > 0
    world = _world(roi.shape, affine)[roi]
    label, aff = _label_voxels("HarvardOxfordcort-maxprob-thr25_space-MNI152NLin6_res-2x2x2.nii.gz", 29)
    lw = _world(label.shape, aff)[label]
    lw = lw[lw[:, 0] > 0]
    assert (world[:, 0] > 0).all()
    np.testing.assert_allclose(world.mean(axis=0), lw.mean(axis=0), atol=2.0)  # 3 mm grid vs 2 mm atlas
    assert abs(roi.sum() * 27 - len(lw) * 8) < 0.15 * len(lw) * 8  # same volume within 15 %
    assert "Cingulate_Gyrus_anterior_division (29, right)" in capsys.readouterr().out

    # --within: a localizer mask (here the front half) keeps only the overlap
    front = (_world(roi.shape, affine)[..., 1] > 30).astype(np.uint8)
    nib.save(nib.Nifti1Image(front, affine), tmp_path / "front.nii.gz")
    out2 = tmp_path / "acc_front.nii.gz"
    assert roidef.main(["mni", "--atlas", "harvard-oxford", "--atlas-dir", str(ATLASES), "--label",
                        "Cingulate_Gyrus_anterior_division", "--hemisphere", "right", "--within",
                        str(tmp_path / "front.nii.gz"), "-r", str(ref), "-o", str(out2), "--transform", str(tfm)]) == 0
    roi2 = np.asarray(nib.load(out2).dataobj) > 0
    np.testing.assert_array_equal(roi2, roi & (front > 0))
    assert 0 < roi2.sum() < roi.sum()


def test_cli_unknown_label_exits_2_with_closest(tmp_path, capsys):
    ref, tfm, _ = _mni_reference(tmp_path)
    code = roidef.main(["mni", "--atlas", "hcp", "--atlas-dir", str(ATLASES), "--label", "Anterior_Agranular_Insula",
                        "-r", str(ref), "-o", str(tmp_path / "x.nii.gz"), "--transform", str(tfm)])
    err = capsys.readouterr().err
    assert code == 2 and "Anterior_Agranular_Insula_Complex" in err and "Traceback" not in err
    assert not (tmp_path / "x.nii.gz").exists()


def test_cli_atlas_file_with_table(tmp_path, capsys):
    ref, tfm, _ = _mni_reference(tmp_path)
    out = tmp_path / "ins.nii.gz"
    code = roidef.main(["mni", "--atlas-file", str(ATLASES / "Glasser_space-MNI152NLin6_res-2x2x2.nii.gz"),
                        "--table", str(ATLASES / "Glasser.csv"), "--label", "R_Anterior_Agranular_Insula_Complex",
                        "--label", "R_Middle_Insular_Area", "-r", str(ref), "-o", str(out), "--transform", str(tfm)])
    assert code == 0, capsys.readouterr().err
    roi = np.asarray(nib.load(out).dataobj) > 0
    world = _world(roi.shape, nib.load(out).affine)[roi]
    assert (world[:, 0] > 20).all() and roi.sum() > 20  # right insula only
    assert json.loads((tmp_path / "identity_xfm.json").read_text())["ref_to_mni"] == np.eye(4).tolist()
