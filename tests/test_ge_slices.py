"""GE slice series whose header miscounts its slices (issue 15, point 6), on the real GE MR750 series.

A GE Signa HDxt run of 29 slices x 139 volumes gave 0 processed volumes:
its ImagesInAcquisition holds the file count of the whole series (4031),
which was taken as slices per volume. The real MR750 series (18 slices x 60
volumes, NumberOfTemporalPositions 60, LocationsInAcquisition 18) is
rewritten that way here, into tmp_path, and replayed.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rtnf.config import load_config
from rtnf.apps.demo import read_tsv
from rtnf.scanner.export import ExportReader
from rtnf.scanner.nifti import VolumeReadError
from tests.helpers import make_config, pattern, requires_shared_data
from tests.test_dicom_support import PYNEAL, ge_pyneal_volume

GE = PYNEAL / "ge-mr750-slices"

CONFIG = {"session.subject": "ge", "session.task": "rest", "scanner.export_dir": "unused", "scanner.tr_s": 1.0,
          "scanner.n_volumes": 60, "scanner.dummy_volumes": 0, "protocol.pattern": pattern(task=10, rest=10, onset=10),
          "rois": {"center": {"center_mm": [0.0, 0.0, 0.0], "radius_mm": 10.0}}, "feedback.roi": "center"}


def _series_counting(dest: Path, drop_locations: bool) -> Path:
    """The GE series with ImagesInAcquisition = 1080 (the whole series), optionally without
    GE LocationsInAcquisition (0021,104F) and NumberOfTemporalPositions (then nothing in the header can
    tell the count is wrong)."""
    import pydicom

    dest.mkdir(parents=True)
    for f in GE.iterdir():
        ds = pydicom.dcmread(f)
        ds.ImagesInAcquisition = 1080
        if drop_locations:
            for tag in ((0x0021, 0x104F), (0x0020, 0x0105)):
                if tag in ds:
                    del ds[tag]
        ds.save_as(dest / f.name)
    return dest


def _replay(tmp_path: Path, folder: Path, name: str, overrides: dict | None = None) -> tuple[list[dict[str, str]], str]:
    out = tmp_path / f"out-{name}"
    cfg = make_config(tmp_path, {**CONFIG, **(overrides or {}), "output.dir": out}, name=f"{name}.toml")
    proc = subprocess.run([sys.executable, "-m", "rtnf", "replay", str(cfg), str(folder)],
                          capture_output=True, text=True, timeout=600)
    tables = sorted(out.rglob("sub-ge_ses-01_task-rest_run-*_desc-rtnf_timeseries.tsv"))  # wherever replay writes
    assert len(tables) == 1, proc.stdout + proc.stderr
    return read_tsv(tables[0]), proc.stderr


@requires_shared_data("pyneal-series/ge-mr750-slices")
def test_series_count_in_images_in_acquisition_is_caught_by_the_header(tmp_path):
    """ImagesInAcquisition 1080 = 18 LocationsInAcquisition x 60 temporal positions: it counts the series;
    18 slices per volume are used without any config, said once, and every volume is processed."""
    rows, stderr = _replay(tmp_path, _series_counting(tmp_path / "ge", drop_locations=False), "header")
    assert [int(r["index"]) for r in rows] == list(range(60))
    assert all(r["missing"] == "0" for r in rows), [r for r in rows if r["missing"] != "0"][:3]
    notes = [line for line in stderr.splitlines() if "ImagesInAcquisition 1080" in line]
    assert len(notes) == 1 and "18 slices per volume used" in notes[0], notes


@requires_shared_data("pyneal-series/ge-mr750-slices")
def test_configured_slices_per_volume_wins_over_an_implausible_header(tmp_path):
    """Without LocationsInAcquisition and NumberOfTemporalPositions, only the config knows:
    scanner.slices_per_volume = 18 wins over ImagesInAcquisition 1080 (and the volume numbers derived
    from it); every volume is processed."""
    rows, stderr = _replay(tmp_path, _series_counting(tmp_path / "ge", drop_locations=True), "config",
                           {"scanner.slices_per_volume": 18})
    assert [int(r["index"]) for r in rows] == list(range(60))
    assert all(r["missing"] == "0" for r in rows), [r for r in rows if r["missing"] != "0"][:3]
    notes = [line for line in stderr.splitlines() if "slices_per_volume = 18 used" in line]
    assert len(notes) == 1 and "1080" in notes[0], notes
    assert sum("WARNING" in line for line in stderr.splitlines()) < 5, stderr[-3000:]


@requires_shared_data("pyneal-series/ge-mr750-slices")
def test_volumes_that_never_complete_are_reported_missing_with_the_reason(tmp_path, caplog):
    """One slice file of volume 3 and one of volume 60 never arrive: volume 3 comes out (when volume 4 is
    complete) as an arrival that reads as missing with the reason; volume 60 is named at the run's end."""
    cfg_path = make_config(tmp_path, {**CONFIG, "scanner.slices_per_volume": 18, "output.dir": tmp_path / "out"},
                           name="ge.toml")
    reader = ExportReader(load_config(cfg_path).scanner, t_start=time.time(), accept_old=True)
    lost = {ge_pyneal_volume(3)[7], ge_pyneal_volume(60)[0]}
    arrivals = []
    with caplog.at_level(logging.WARNING, logger="rtnf"):
        for v in range(1, 61):
            for f in ge_pyneal_volume(v):
                if f not in lost:
                    arrivals += reader.accept(reader.check(f), time.time())
        getattr(reader, "close", lambda: None)()  # the run's end
    assert [a.number for a in arrivals] == list(range(1, 60))
    with pytest.raises(VolumeReadError, match=r"volume 3 of series 6 never completed: 17 of 18 slice files"):
        arrivals[2].load()
    assert arrivals[3].load().data.shape == (64, 64, 18)
    ends = [r.getMessage() for r in caplog.records if "never completed" in r.getMessage()]
    assert ends == ["volume 60 never completed: 17 of 18 slice files arrived; treated as missing"], ends


@requires_shared_data("pyneal-series/ge-mr750-slices")
def test_series_count_checked_against_temporal_positions_alone(tmp_path):
    """Without LocationsInAcquisition, ImagesInAcquisition 1080 = 18 x NumberOfTemporalPositions 60 (and far
    more slices than one volume has) is read as the series count: 18 slices, volume numbers from 1 to 60."""
    import pydicom

    from rtnf.scanner.dicom import probe

    infos = []
    for k, f in enumerate((ge_pyneal_volume(1)[0], ge_pyneal_volume(2)[0], ge_pyneal_volume(60)[17])):
        ds = pydicom.dcmread(f)
        ds.ImagesInAcquisition = 1080
        del ds[(0x0021, 0x104F)]
        ds.save_as(tmp_path / f"{k}.dcm")
        infos.append(probe(tmp_path / f"{k}.dcm"))
    assert [(i.n_slices, i.volume_number) for i in infos] == [(18, 1), (18, 2), (18, 60)]
    assert "18 slices x 60 temporal positions" in infos[0].note
