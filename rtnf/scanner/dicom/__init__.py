"""Scanner DICOM (and Philips PAR/REC) to :class:`rtnf.scanner.volume.Volume`.

One small module per variant behind one dispatcher, in the shape of
nibabel's ``nicom.dicomwrappers``:

==================  ===========================================================
``probe``           header only: kind, series, volume number, slice position,
                    completeness (the watcher's hook; never raises)
``mosaic``          Siemens mosaic with CSA header (VB/VD/VE, CMRR multiband)
``enhanced``        enhanced multi-frame MR (Siemens XA, Philips)
``slices``          classic one-file-per-slice (GE, Philips, Siemens, Toshiba)
``parrec``          Philips PAR/REC (real-time dumps)
``assembler``       :class:`SliceAssembler`: slice files -> complete volumes
``fast``            :class:`SeriesReader`: per-series cached decoding, checked
                    against the generic path
==================  ===========================================================
"""

from __future__ import annotations

from ._common import DicomInfo, DicomReadError, UnsupportedDicomError
from .assembler import SliceAssembler
from .fast import SeriesReader
from .probe import probe
from .reader import read_volume, read_volumes

__all__ = [
    "DicomInfo",
    "DicomReadError",
    "UnsupportedDicomError",
    "SliceAssembler",
    "SeriesReader",
    "probe",
    "read_volume",
    "read_volumes",
]
