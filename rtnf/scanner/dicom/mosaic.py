"""Siemens mosaic DICOM (VB/VD/VE, CMRR multiband): one file per volume, slices tiled in one image.

nibabel's ``MosaicWrapper`` does the untiling, the CSA slice-normal sign
(which also covers the head-to-foot slice order) and the mosaic
ImagePositionPatient correction; this module adds rtnf's checks, the
RAS affine, the acquisition time and the slice times (``MosaicRefAcqTimes``, one per tile).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from rtnf.scanner.volume import Volume
from ._common import LPS_TO_RAS, DicomReadError, acquisition_time, dicomwrappers
from .pixels import check_pixel_length
from .slicetimes import mosaic_slice_times


def read_mosaic(path: Path, ds: Any, csa: Any) -> Volume:
    """Decode one Siemens mosaic file (``ds`` parsed with its pixel data, ``csa`` its CSA image header)."""
    check_pixel_length(ds, path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            wrapper = dicomwrappers.MosaicWrapper(ds, csa)
            data = np.asarray(wrapper.get_data(), dtype=np.float32)
            affine = LPS_TO_RAS @ wrapper.affine
    except Exception as exc:  # WrapperError, CSA errors, pixel decoding errors
        raise DicomReadError(f"{path}: cannot decode Siemens mosaic ({type(exc).__name__}: {exc})") from exc
    return Volume(data=data, affine=affine, t_acquired=acquisition_time(ds), path=path,
                  slice_times_s=mosaic_slice_times(ds, csa, data.shape[2]))
