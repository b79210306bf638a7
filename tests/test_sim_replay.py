"""scanner_sim faults (synthetic runs and replays) and replay of real series at TR pace."""

from __future__ import annotations

import csv
import hashlib
import os
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scanner_sim import cli
from scanner_sim.export import vanished_dir
from scanner_sim.phantom import make_phantom
from scanner_sim.replay import Replayer, ReplayError, load_source
from scanner_sim.spec import Faults, RunSpec, SpecError
from scanner_sim.synth import SyntheticRun
from scanner_sim.writer import ScannerWriter
from tests.helpers import SHARED_DATA, requires_shared_data, wait_until

pytestmark = pytest.mark.filterwarnings("ignore:The DICOM readers are highly experimental")

SHAPE = (24, 24, 10)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(SHAPE, 8.0)


def _tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _spec(**kw) -> RunSpec:
    d = dict(tr_s=1.0, n_volumes=10, shape=list(SHAPE), voxel_mm=8.0, seed=3, series=2)
    d.update(kw)
    return RunSpec.from_dict(d)


def _nominal(row: dict[str, str], speed: float) -> float:
    """When a files.tsv row's file was due without faults: its acquisition, then one period (TR 1 s, no recon)."""
    return float(row["t_acquired"]) + 1.0 / speed


# --------------------------------------------------------------------------- faults, synthetic
@pytest.fixture(scope="module")
def faulty(phantom, tmp_path_factory):
    """One run with every fault but jitter, watched by a poller that records what it sees."""
    tmp = tmp_path_factory.mktemp("faults")
    export = tmp / "export"
    faults = {"drop": [2], "late": [{"volume": 4, "delay_s": 2.5}], "duplicate": [5], "out_of_order": [6],
              "second_series": {"start_volume": 7, "series": 9, "n_volumes": 2},
              "vanish": [{"volume": 8, "duration_s": 1.5}]}
    spec = _spec(faults=faults)
    seen: list[tuple[float, bool, frozenset]] = []
    done = threading.Event()

    def poll():
        while not done.is_set():
            try:
                names = frozenset(os.listdir(export))
                seen.append((time.time(), True, names))
            except FileNotFoundError:
                seen.append((time.time(), False, frozenset()))
            time.sleep(0.005)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    speed = 5.0
    summary = ScannerWriter(export, spec, n_chunks=2, chunk_delay_s=0.002, speed=speed, recon_delay_s=0.0).write_run(
        SyntheticRun(spec, phantom=phantom), tmp / "truth")
    n_seen = len(seen)  # the poller sees the folder once more after the last event (the second look starts after it)
    assert wait_until(lambda: len(seen) >= n_seen + 2, 10)
    done.set()
    th.join()
    return spec, tmp, summary, seen, speed


def test_faults_tsv_lists_each_fault(faulty):
    spec, tmp, summary, _, _ = faulty
    rows = _tsv(tmp / "truth" / "faults.tsv")
    got = {(r["fault"], int(r["volume"])) for r in rows}
    assert got == {("drop", 2), ("late", 4), ("duplicate", 5), ("out_of_order", 6), ("second_series", 7),
                   ("vanish", 8)}
    assert next(r for r in rows if r["fault"] == "second_series")["series"] == "9"
    assert summary.n_written == 9 and not summary.aborted  # all but the dropped volume
    assert summary.n_files == 9 + 1 + 2  # + duplicate + second series


def test_faults_on_disk_and_in_files_tsv(faulty):
    spec, tmp, _, _, speed = faulty
    export = tmp / "export"
    files = _tsv(tmp / "truth" / "files.tsv")
    main = [r for r in files if r["series"] == "2"]
    # dropped: no file, no row
    assert not (export / spec.filename(2)).exists() and "2" not in {r["volume"] for r in main}
    # duplicate: two rows, same name and bytes, the second with fault=duplicate
    dup = [r for r in main if r["volume"] == "5"]
    assert len(dup) == 2 and dup[0]["sha256"] == dup[1]["sha256"] and dup[1]["fault"] == "duplicate"
    # Judged from each file's nominal time (acquired + one period): the writer waits for a due time and a loaded
    # machine only wakes it later, never earlier (a two-sided 50 ms window around the gap between two wake-ups,
    # each of which may be late, left the outcome to the machine's load)
    assert 0.5 / speed - 0.005 <= float(dup[1]["t_write_start"]) - _nominal(dup[1], speed) < 0.5 / speed + 0.2
    assert _nominal(dup[1], speed) == _nominal(dup[0], speed)
    # late: written 2.5 s (scanner time) after its nominal time, so after volume 5
    late = next(r for r in main if r["volume"] == "4")
    assert late["fault"] == "late"
    assert 2.5 / speed - 0.005 <= float(late["t_write_start"]) - _nominal(late, speed) < 2.5 / speed + 0.2
    first_rows = [r["volume"] for r in main if r["fault"] != "duplicate"]
    assert first_rows[:6] == ["0", "1", "3", "5", "4", "7"]
    # out of order: 7 before 6
    assert first_rows.index("7") < first_rows.index("6")
    assert next(r for r in main if r["volume"] == "6")["fault"] == "out_of_order"
    # second series: its own series number in the name, in the same folder
    second = [r for r in files if r["series"] == "9"]
    assert [Path(r["path"]).name for r in second] == ["rtsim_009_00001.nii", "rtsim_009_00002.nii"]
    assert all("second_series" in r["fault"] for r in second)
    assert nib.load(second[0]["path"]).shape == SHAPE
    # every row's file exists with its content at the end (duplicates identical)
    for r in files:
        blob = Path(r["path"]).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == r["sha256"]


def test_vanish_renames_folder_away_and_back(faulty):
    spec, tmp, _, seen, speed = faulty
    export = tmp / "export"
    assert export.is_dir() and not vanished_dir(export).exists()
    t_first = min(t for t, present, _ in seen if present)  # the writer creates the folder
    away = [t for t, present, _ in seen if not present and t > t_first]
    assert away, "the poller never saw the export folder missing"
    # 0.3 s away, as the poller saw it: a loaded machine delays the poller's first and last look and the
    # writer's two wake-ups (a 0.08 s window was tight); a folder away for 0 s or for 1.5 s is far outside
    assert max(away) - min(away) == pytest.approx(1.5 / speed, abs=0.15)
    files = _tsv(tmp / "truth" / "files.tsv")
    meanwhile = [r for r in files if "vanish" in r["fault"]]
    assert meanwhile and meanwhile[0]["volume"] == "8"
    names = {Path(r["path"]).name for r in meanwhile}
    # written while away: invisible in the export path until the folder came back, then all there at once
    before = [n for t, present, n in seen if present and t < min(away)]
    after = [n for t, present, n in seen if present and t > max(away)]
    assert not names & before[-1]
    assert names <= after[0]
    detail = next(r for r in _tsv(tmp / "truth" / "faults.tsv") if r["fault"] == "vanish")["detail"]
    assert all(n in detail for n in names) and "export.vanished" in detail


def test_jitter_is_bounded_seeded_and_recorded(phantom, tmp_path):
    spec = _spec(n_volumes=6, faults={"jitter_s": 0.5, "seed": 11})
    ScannerWriter(tmp_path / "e", spec, n_chunks=1, chunk_delay_s=0.0, speed=5.0, recon_delay_s=0.0).write_run(
        SyntheticRun(spec, phantom=phantom), tmp_path / "t")
    rows = _tsv(tmp_path / "t" / "files.tsv")
    delays = {int(r["volume"]): float(r["detail"].split("=")[1])
              for r in _tsv(tmp_path / "t" / "faults.tsv") if r["fault"] == "jitter"}
    assert sorted(delays) == list(range(6)) and all(0 <= d < 0.5 for d in delays.values())
    assert len(set(delays.values())) == 6
    expected = np.random.default_rng([11, 3]).uniform(0, 0.5, 6)
    np.testing.assert_allclose([delays[v] for v in range(6)], expected, atol=1e-4)
    # each file written its jitter after its nominal time: never earlier (the writer waits for a due time),
    # later by a loaded machine's wake-up delay only (30 ms for each of six files was tight)
    late_by = [float(r["t_write_start"]) - (float(r["t_acquired"]) + 0.2) - delays[int(r["volume"])] / 5.0
               for r in rows]
    assert all(-0.005 <= d < 0.2 for d in late_by), late_by
    assert np.median(late_by) < 0.02, late_by  # jitter not applied twice, nor in scanner seconds


def test_fault_spec_errors_and_cli_flags(tmp_path, capsys):
    with pytest.raises(SpecError, match="'faults.drop\\[0\\]'.*\\[0, 9\\]"):
        _spec(faults={"drop": [10]})
    with pytest.raises(SpecError, match="'faults.out_of_order'.*v \\+ 1"):
        _spec(faults={"out_of_order": [9]})
    with pytest.raises(SpecError, match="'faults.late'.*dropped"):
        _spec(faults={"drop": [3], "late": [{"volume": 3, "delay_s": 1}]})
    with pytest.raises(SpecError, match="Unknown key.*'faults'.*drop"):
        _spec(faults={"dropped": [3]})
    spec = _spec(faults={"drop": [1], "vanish": [{"volume": 3, "duration_s": 2.0}],
                         "second_series": {"start_volume": 2, "series": 7, "n_volumes": 1}})
    assert RunSpec.from_dict(spec.to_dict()) == spec
    toml = tmp_path / "s.toml"
    toml.write_text("tr_s = 0.5\nn_volumes = 4\nshape = [16, 16, 6]\nvoxel_mm = 10.0\n")
    rc = cli.main(["synth", str(toml), "--export-dir", str(tmp_path / "e"), "--truth-dir", str(tmp_path / "t"),
                   "--speed", "20", "--chunk-delay-s", "0", "--drop", "1", "--duplicate", "2", "--late", "3:0.5"])
    assert rc == 0, capsys.readouterr().err
    assert sorted(r["fault"] for r in _tsv(tmp_path / "t" / "faults.tsv")) == ["drop", "duplicate", "late"]
    rc = cli.main(["synth", str(toml), "--export-dir", str(tmp_path / "e2"), "--truth-dir", str(tmp_path / "t2"),
                   "--late", "3"])
    assert rc == 2 and "'--late'" in capsys.readouterr().err


# --------------------------------------------------------------------------- replay: NIfTI
def test_replay_4d_nifti_at_tr_pace(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 1000, size=(12, 10, 8, 6)).astype(np.int16)
    aff = np.diag([3.0, 3.0, 4.0, 1.0])
    img = nib.Nifti1Image(data, aff)
    img.header.set_xyzt_units("mm", "msec")
    img.header["pixdim"][4] = 800.0  # ms
    src = tmp_path / "bold.nii.gz"
    nib.save(img, src)
    source = load_source(src)
    assert source.kind == "nifti4d" and source.n_volumes == 6 and source.tr_s == pytest.approx(0.8)
    summary = Replayer(tmp_path / "e", source, n_chunks=1, chunk_delay_s=0.0, speed=4.0, recon_delay_s=0.0).replay(
        tmp_path / "t", faults=Faults(out_of_order=(2,)))
    assert summary.n_written == 6
    rows = _tsv(tmp_path / "t" / "files.tsv")
    assert [r["volume"] for r in rows] == ["0", "1", "3", "2", "4", "5"]
    for r in rows:
        v = int(r["volume"])
        assert Path(r["path"]).name == f"bold_001_{v + 1:05d}.nii"
        out = nib.load(r["path"])
        np.testing.assert_array_equal(np.asarray(out.dataobj), data[..., v])
        np.testing.assert_allclose(out.affine, aff)
    starts = {int(r["volume"]): float(r["t_write_start"]) for r in rows}
    np.testing.assert_allclose(np.diff([starts[v] for v in (0, 1, 3, 4, 5)]), [0.2, 0.4, 0.2, 0.2], atol=0.03)


def test_replay_errors(tmp_path, capsys):
    with pytest.raises(ReplayError, match="does not exist"):
        load_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not dicom")
    with pytest.raises(ReplayError, match="no DICOM files"):
        load_source(tmp_path / "empty")
    rc = cli.main(["replay", str(tmp_path / "empty"), "--export-dir", str(tmp_path / "e"), "--truth-dir",
                   str(tmp_path / "t")])
    assert rc == 2 and "no DICOM files" in capsys.readouterr().err


# --------------------------------------------------------------------------- replay: real DICOM
@requires_shared_data("studyforrest-localizer/dicom")
def test_replay_studyforrest_slices_spread_over_tr(tmp_path):
    import pydicom

    src_dir = SHARED_DATA / "studyforrest-localizer" / "dicom"
    # the first 70 file names (sorted) are temporal positions 1 and 2: link them, so the
    # replay reads 70 headers instead of 2730 (about 4 s)
    subset = tmp_path / "src"
    subset.mkdir()
    for f in sorted(src_dir.iterdir())[:70]:
        (subset / f.name).symlink_to(f)
    speed = 8.0
    rc = cli.main(["replay", str(subset), "--export-dir", str(tmp_path / "e"), "--truth-dir", str(tmp_path / "t"),
                   "--speed", str(speed), "--n-chunks", "1", "--chunk-delay-s", "0",
                   "--recon-delay-s", "0", "--drop", "0"])
    assert rc == 0
    rows = _tsv(tmp_path / "t" / "files.tsv")
    assert len(rows) == 35 and {r["volume"] for r in rows} == {"1"}  # volume 0 dropped
    assert [int(r["slice"]) for r in rows] == list(range(35))
    period = 2.0 / speed
    starts = np.array([float(r["t_write_start"]) for r in rows])
    # Spread evenly, one slice every period / 35 (7 ms): how far each slice came after an even schedule
    # started by the earliest-relative one. The writer waits for each slice's due time, so a loaded machine
    # only makes slices late, and a late one is followed by a catch-up (under two busy loops the gaps went
    # 15, 0.5, 7, 16, 0.4 ms: the median of |gap - 7 ms| was 6 ms against a bound of 5 ms). All slices at
    # once, or spread over two periods, put the last slice 0.24 s off that schedule.
    behind = starts - np.arange(35) * period / 35
    behind -= behind.min()
    assert behind.max() < 0.1, behind.round(3)
    assert starts[-1] - starts[0] == pytest.approx(period * 34 / 35, abs=0.12)
    positions = []
    for r in rows:
        path = Path(r["path"])
        assert (src_dir / path.name).read_bytes() == path.read_bytes()  # copied unchanged, name kept
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.TemporalPositionIdentifier == 2 and ds.SeriesNumber == 401
        positions.append([float(x) for x in ds.ImagePositionPatient])
    normal = np.cross(*np.array([float(x) for x in ds.ImageOrientationPatient]).reshape(2, 3))
    along = np.array(positions) @ normal
    assert np.all(np.diff(along) > 0)  # written in slice order (same AcquisitionTime for all slices)
    assert sorted(os.listdir(tmp_path / "e")) == sorted(Path(r["path"]).name for r in rows)


@requires_shared_data("pyneal-series/siemens-prisma-e11-mosaic")
def test_replay_mosaic_one_file_per_tr_with_second_series(tmp_path):
    import pydicom
    from nibabel.nicom.dicomwrappers import MosaicWrapper, wrapper_from_file

    src_dir = SHARED_DATA / "pyneal-series" / "siemens-prisma-e11-mosaic"
    source = load_source(src_dir)
    assert source.kind == "dicom-volumes" and source.n_volumes == 60 and source.tr_s == pytest.approx(1.0)
    Replayer(tmp_path / "e", source, n_chunks=2, chunk_delay_s=0.001, speed=10.0, recon_delay_s=0.0,
             n_volumes=4).replay(tmp_path / "t", faults=Faults(second_series=(1, 14, 2), duplicate=(3,)))
    rows = _tsv(tmp_path / "t" / "files.tsv")
    main = [r for r in rows if r["series"] == "13"]
    assert [Path(r["path"]).name for r in main] == [f"001_000013_{k:06d}.dcm" for k in (1, 2, 3, 4, 4)]
    assert main[-1]["fault"] == "duplicate"
    starts = [float(r["t_write_start"]) for r in main[:4]]
    np.testing.assert_allclose(np.diff(starts), 0.1, atol=0.03)
    for r in main[:4]:
        assert Path(r["path"]).read_bytes() == (src_dir / Path(r["path"]).name).read_bytes()
    second = [r for r in rows if r["series"] == "14"]
    assert [Path(r["path"]).name for r in second] == ["001_000014_000001.dcm", "001_000014_000002.dcm"]
    orig = pydicom.dcmread(src_dir / "001_000013_000001.dcm")
    ds = pydicom.dcmread(second[0]["path"])
    assert ds.SeriesNumber == 14 and ds.SeriesInstanceUID != orig.SeriesInstanceUID
    w = wrapper_from_file(second[0]["path"])
    assert isinstance(w, MosaicWrapper)
    np.testing.assert_array_equal(w.get_data(), wrapper_from_file(src_dir / "001_000013_000001.dcm").get_data())
