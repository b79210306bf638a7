"""Harvard-Oxford through nilearn's fetcher, offline (issue 18 point 1): a cached copy, and neither cache nor network.

nilearn keeps ``fetch_atlas_harvard_oxford``'s files as FSL lays them out, under
``<data dir>/fsl/data/atlases``: ``HarvardOxford/HarvardOxford-<name>.nii.gz`` and the label
files ``HarvardOxford-Cortical.xml`` / ``HarvardOxford-Subcortical.xml`` (``<label index="i">``,
0-based: image value i + 1). The test builds that cache in tmp_path from the neuroparc files in
``../shared/data/atlases`` (images symlinked, label files written from the CSV tables with FSL's
names: neuroparc's subcortical table swaps Left and Right), points nilearn at it through
``NILEARN_DATA``, and makes every download fail at once through a proxy on a closed port.
"""

from __future__ import annotations

import csv
from pathlib import Path
from xml.sax.saxutils import escape

import nibabel as nib
import numpy as np
import pytest

from rtnf.apps import roidef
from rtnf.apps.roidef.atlases import ATLAS_FILES, load_atlas
from tests.helpers import SHARED_DATA, requires_shared_data

ATLASES = SHARED_DATA / "atlases"
pytestmark = requires_shared_data("atlases")

#: FSL's file names in nilearn's cache for each neuroparc image / table pair of ATLAS_FILES["harvard-oxford"].
FSL_NAMES = (("HarvardOxford-cort-maxprob-thr25-2mm.nii.gz", "HarvardOxford-Cortical.xml"),
             ("HarvardOxford-sub-maxprob-thr25-2mm.nii.gz", "HarvardOxford-Subcortical.xml"))
CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, a connection is refused at once


def _fsl_name(name: str) -> str:
    """FSL's spelling of a neuroparc label: spaces, and the subcortical sides the right way round."""
    words = name.split("_")
    if words[0] in ("Left", "Right"):
        words[0] = "Right" if words[0] == "Left" else "Left"
    return " ".join(words)


def _nilearn_cache(root: Path) -> Path:
    """nilearn's data folder holding Harvard-Oxford's 2 mm max-probability maps (thr 25 %)."""
    atlases = root / "fsl" / "data" / "atlases"
    (atlases / "HarvardOxford").mkdir(parents=True)
    for (image, table), (fsl_image, fsl_xml) in zip(ATLAS_FILES["harvard-oxford"], FSL_NAMES):
        (atlases / "HarvardOxford" / fsl_image).symlink_to(ATLASES / image)
        with open(ATLASES / table, newline="") as f:
            rows = [(int(i), name) for i, name in csv.reader(f) if int(i) > 0]
        labels = "\n".join(f'<label index="{i - 1}" x="0" y="0" z="0">{escape(_fsl_name(n))}</label>' for i, n in rows)
        (atlases / fsl_xml).write_text('<?xml version="1.0" encoding="ISO-8859-1"?>\n<atlas version="1.0">\n'
                                       f"<header><name>{fsl_xml[:-4]}</name></header>\n<data>\n{labels}\n</data>\n"
                                       "</atlas>\n", encoding="iso-8859-1")
    return root


@pytest.fixture
def offline(monkeypatch) -> None:
    """No network: every HTTP(S) request goes to a proxy that refuses the connection."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(var, CLOSED)
    for var in ("NO_PROXY", "no_proxy", "NILEARN_SHARED_DATA"):
        monkeypatch.delenv(var, raising=False)


def _mni_reference(tmp_path: Path) -> tuple[Path, Path]:
    """A 3 mm 'EPI' on MNI coordinates and an identity registration (the atlas lands as it is)."""
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = [-90.0, -126.0, -72.0]
    ref = tmp_path / "ref.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((61, 73, 61)).astype(np.float32), affine), ref)
    tfm = tmp_path / "identity_xfm.json"
    roidef.MniRegistration(np.eye(4)).save(tfm)
    return ref, tfm


def test_cached_fetcher_gives_the_atlas_dir_roi(tmp_path, monkeypatch, offline, capsys):
    cache = _nilearn_cache(tmp_path / "nilearn_data")
    monkeypatch.setenv("NILEARN_DATA", str(cache))
    before = sorted(p.relative_to(cache) for p in cache.rglob("*"))
    images = load_atlas("harvard-oxford")
    assert [img.source for img in images] == [
        "nilearn fetch_atlas_harvard_oxford('cort-maxprob-thr25-2mm')",
        "nilearn fetch_atlas_harvard_oxford('sub-maxprob-thr25-2mm')"]
    assert images[1].table["Right Amygdala"] == 20  # FSL's index 19, read from the cached label file

    ref, tfm = _mni_reference(tmp_path)
    labels = ["--label", "Cingulate_Gyrus_anterior_division", "--label", "R_Amygdala", "--label", "Left_Putamen"]
    fetched, local = tmp_path / "fetched.nii.gz", tmp_path / "local.nii.gz"
    code = roidef.main(["mni", "--atlas", "harvard-oxford", *labels, "-r", str(ref), "-o", str(fetched),
                        "--transform", str(tfm)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "Right Amygdala (20, right)" in out.out and "Left Putamen (6, both)" in out.out
    assert roidef.main(["mni", "--atlas", "harvard-oxford", "--atlas-dir", str(ATLASES), *labels, "-r", str(ref),
                        "-o", str(local), "--transform", str(tfm)]) == 0
    a, b = nib.load(fetched), nib.load(local)
    np.testing.assert_array_equal(a.affine, b.affine)
    roi = np.asarray(a.dataobj) > 0
    np.testing.assert_array_equal(roi, np.asarray(b.dataobj) > 0)
    # nilearn flips the image to a positive x axis: the voxels agree where they lie, not only in count
    x = (np.argwhere(roi) @ a.affine[:3, :3].T + a.affine[:3, 3])[:, 0]
    assert roi.sum() > 100 and (x > 0).any() and (x < 0).any()
    assert sorted(p.relative_to(cache) for p in cache.rglob("*")) == before  # nothing downloaded


def test_neither_cached_nor_reachable_exits_2_with_one_message(tmp_path, monkeypatch, offline, capsys):
    monkeypatch.setenv("NILEARN_DATA", str(tmp_path / "nilearn_data"))
    ref, tfm = _mni_reference(tmp_path)
    out = tmp_path / "acc.nii.gz"
    code = roidef.main(["mni", "--atlas", "harvard-oxford", "--label", "Cingulate_Gyrus_anterior_division",
                        "-r", str(ref), "-o", str(out), "--transform", str(tfm)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "not in nilearn's data folder and could not be downloaded" in err and "--atlas-dir" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()
