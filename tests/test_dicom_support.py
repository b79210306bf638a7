"""Real-data cases for the DICOM reader tests (paths under ../shared/data) and the dcm2niix harness."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np

from tests.helpers import SHARED_DATA

ZOO = SHARED_DATA / "dicom-zoo"
PYNEAL = SHARED_DATA / "pyneal-series"
FORREST = SHARED_DATA / "studyforrest-localizer" / "dicom"
PARTIAL = SHARED_DATA / "partial-write"


def _sorted_by_number(folder: Path, pattern: str = "*") -> list[Path]:
    return sorted(folder.glob(pattern), key=lambda p: int("".join(c for c in p.name.split(".")[-1] if c.isdigit()) or 0))


def forrest_volume(volume: int = 1) -> list[Path]:
    """The 35 studyforrest slice files of one temporal position (by header)."""
    from rtnf.scanner.dicom import probe

    return [p for p in sorted(FORREST.iterdir()) if probe(p).volume_number == volume]


def ge_pyneal_volume(volume: int = 1) -> list[Path]:
    """The 18 GE slice files of one volume (files are numbered 1..1080 in acquisition order)."""
    files = _sorted_by_number(PYNEAL / "ge-mr750-slices")
    return files[(volume - 1) * 18 : volume * 18]


# name -> (files of one volume, index of this volume in a multi-volume file or dcm2niix output)
def volume_cases() -> dict[str, list[Path]]:
    """Every readable variant: the files of one volume."""
    return {
        "pyneal_siemens_e11_mosaic": [PYNEAL / "siemens-prisma-e11-mosaic" / "001_000013_000001.dcm"],
        "siemens_vd13_ep2d_mosaic": [ZOO / "siemens_mosaic_prisma_VD13_ep2d" / "IM-0001-0001.dcm"],
        "siemens_vd13_ep2d_HF_mosaic": [ZOO / "siemens_mosaic_prisma_VD13_ep2d_HF" / "IM-0009-0001.dcm"],
        "siemens_vd13_cmrr_multiband": [ZOO / "siemens_mosaic_prisma_VD13_cmrr_multiband" / "IM-0005-0001.dcm"],
        "siemens_skyra_e11_rtcloud": [ZOO / "siemens_mosaic_skyra_E11_rtcloud" / "001_000013_000001.dcm"],
        "siemens_trio_b17_dwi_gz": [ZOO / "siemens_mosaic_dwi_trio_B17_nibabel" / "siemens_dwi_1000.dcm.gz"],
        "partial_write_complete": [PARTIAL / "001_000013_000005.dcm"],
        "siemens_xa30_enhanced_fmri": sorted((ZOO / "siemens_enhanced_XA30_fmri_noCSA").glob("0001_*.dcm")),
        "siemens_xa10_enhanced": [ZOO / "siemens_enhanced_XA10_noCSA" / "6_1.dcm"],
        "philips_enhanced_fmap_2vol": [ZOO / "philips_enhanced_multiframe" / "IM_0027_fMAP.dcm"],
        "philips_enhanced_mprage_gz": [ZOO / "philips_enhanced_multiframe" / "philips_mprage.dcm.gz"],
        "studyforrest_philips_slices": "forrest",  # resolved lazily (needs probe)
        "ge_zoo_slices": sorted((ZOO / "ge_discovery_mr750_epi_slices").glob("*.dcm"))[:15],
        "ge_pyneal_slices": "ge_pyneal",
        "philips_classic_single": [ZOO / "philips_classic" / "MR2_UNCR.dcm"],
        "siemens_classic_decimal_rescale": [ZOO / "siemens_classic_noCSA" / "decimal_rescale.dcm"],
        "siemens_classic_overlays": [ZOO / "siemens_classic_noCSA" / "MR-SIEMENS-DICOM-WithOverlays.dcm"],
        "toshiba_explicit_le": [ZOO / "toshiba_classic" / "MR_small.dcm"],
        "toshiba_implicit_le": [ZOO / "toshiba_classic" / "MR_small_implicit.dcm"],
        "toshiba_explicit_be": [ZOO / "toshiba_classic" / "MR_small_bigendian.dcm"],
        "philips_parrec_zoo": [ZOO / "philips_parrec" / "Dump-0000.par"],
        "philips_parrec_pyneal": [PYNEAL / "philips-parrec" / "Dump-0000.par"],
    }


def resolve(files) -> list[Path]:
    if files == "forrest":
        return forrest_volume(1)
    if files == "ge_pyneal":
        return ge_pyneal_volume(1)
    return list(files)


def stage(files: list[Path], folder: Path) -> Path:
    """Put one volume's files (decompressed, REC beside PAR) in a fresh folder for dcm2niix."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        if f.name.endswith(".gz"):
            with gzip.open(f, "rb") as src, open(folder / f.name[:-3], "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            (folder / f.name).symlink_to(f)
            if f.suffix.lower() == ".par":
                for rec in (f.with_suffix(".rec"), f.with_suffix(".REC")):
                    if rec.exists():
                        (folder / rec.name).symlink_to(rec)
    return folder


def dcm2niix(files: list[Path], tmp: Path) -> list[nib.Nifti1Image]:
    """Run ``dcm2niix -b n -z n -f %s_%r`` on a folder holding just ``files``; the NIfTI images it writes."""
    src = stage(files, tmp / "in")
    out = tmp / "out"
    out.mkdir()
    proc = subprocess.run(["dcm2niix", "-b", "n", "-z", "n", "-f", "%s_%r", "-o", str(out), str(src)],
                          capture_output=True, text=True, timeout=120)
    images = [nib.load(p) for p in sorted(out.glob("*.nii"))]
    assert images, f"dcm2niix wrote nothing:\n{proc.stdout}\n{proc.stderr}"
    return images


def canonical(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Data and affine reoriented to the closest RAS+ axes (voxel values unchanged)."""
    img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine))
    return np.asarray(img.dataobj), img.affine


def reference_volumes(images: list[nib.Nifti1Image]):
    """Every 3D volume dcm2niix wrote, as (canonical data, canonical affine, name)."""
    for img in images:
        data = np.asarray(img.get_fdata(dtype=np.float32))
        if data.ndim == 2:
            data = data[:, :, None]
        vols = [data] if data.ndim == 3 else [data[..., i] for i in range(data.shape[3])]
        for i, v in enumerate(vols):
            d, a = canonical(v, img.affine)
            yield d, a, f"{Path(img.get_filename()).name}[{i}]"
