"""Patient privacy (issue 8, item 8): identifying DICOM fields never reach outputs, logs or the wire.

A live ``rtnf run`` processes DICOM files that carry identifying fields
(scanner_sim's fake patient; and, when ../shared/data is present, a real
Siemens series whose headers still hold a name, ID, birth date and
institution). Afterwards every output file (recursively, text and binary,
gzip streams decompressed), every published message and rtnf's log are
searched for those values.
"""

from __future__ import annotations

import gzip
import logging
import json
import sys
import time
import zlib
from pathlib import Path

import pytest

from tests.helpers import SHARED_DATA, make_config, pattern, requires_shared_data

IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName",
               "InstitutionAddress", "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName",
               "OtherPatientIDs", "PatientAddress", "PatientTelephoneNumbers")
RTCLOUD = SHARED_DATA / "dicom-zoo" / "siemens_mosaic_skyra_E11_rtcloud"

CONFIG = {"session.subject": "priv", "session.task": "nf", "scanner.n_volumes": 16, "scanner.missing_timeout_s": 1.0,
          "protocol.pattern": pattern(rest=6, regulate=6, repeat=1), "output.dir": "outputs"}


def _variants(value: str) -> set[bytes]:
    """Spellings of a value that would still identify: as stored, with the PN caret as a space, dates with dashes."""
    value = value.strip()
    out = {value, value.replace("^", " "), value.replace("^", ", ")}
    if len(value) == 8 and value.isdigit():  # DA
        out.add(f"{value[:4]}-{value[4:6]}-{value[6:]}")
    for part in value.split("^"):  # PN components long enough not to match by chance
        if len(part) >= 6:
            out.add(part)
    return {v.lower().encode("utf-8") for v in out if len(v) >= 4}


def identifying_values(fields: dict[str, str]) -> dict[str, set[bytes]]:
    """``{field: spellings}`` for the non-empty identifying fields (values shorter than 4 characters are skipped)."""
    return {k: _variants(str(v)) for k, v in fields.items() if str(v).strip() not in ("", "None") and _variants(str(v))}


def _blobs(path: Path) -> list[bytes]:
    data = path.read_bytes()
    blobs = [data]
    if data[:2] == b"\x1f\x8b":
        try:
            blobs.append(gzip.decompress(data))
        except (OSError, EOFError, zlib.error):
            pass
    return blobs


def find_leaks(values: dict[str, set[bytes]], files: list[Path], messages: list[tuple[str, dict]]) -> list[str]:
    """Where any spelling of any value appears (case-insensitive)."""
    leaks = []
    haystacks = [(str(p), blob) for p in files for blob in _blobs(p)]
    haystacks += [(f"message {i} ({topic})", json.dumps(body, ensure_ascii=False).encode("utf-8"))
                  for i, (topic, body) in enumerate(messages)]
    for where, blob in haystacks:
        low = blob.lower()
        for field, spellings in values.items():
            for s in spellings:
                if s in low:
                    i = low.index(s)
                    leaks.append(f"{field} {s!r} in {where}: ...{blob[max(0, i - 60): i + 60]!r}...")
    return leaks


def live_run(tmp_path: Path, config: dict, sim_command: list[str], timeout_s: float = 180.0):
    """``rtnf run`` plus one scanner_sim command (synth or replay) as real processes; return (cfg, listener, logs)."""
    from rtnf.config import load_config
    from rtnf.apps.demo import Listener, Processes, free_address, wait_ready

    address = free_address()
    cfg_path = make_config(tmp_path, config)
    cfg = load_config(cfg_path, {"publish.address": address})
    listener = Listener([address])
    procs = Processes()
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    try:
        procs.start("rtnf", [sys.executable, "-m", "rtnf", "run", str(cfg_path), "--create-export-dir", "--publish-address", address], logs)
        wait_ready(listener, procs, no_screen=True)
        procs.start("scanner_sim", [sys.executable, "-m", "scanner_sim", *sim_command,
                                    "--export-dir", str(cfg.scanner.export_dir), "--truth-dir", str(tmp_path / "truth")],
                    logs)
        rtnf = procs.procs["rtnf"]
        deadline = time.time() + timeout_s
        while rtnf.poll() is None:
            listener.poll(0.2)
            if time.time() > deadline:
                raise AssertionError("rtnf run did not finish:\n" + (logs / "rtnf.log").read_text()[-3000:])
        assert rtnf.returncode == 0, (logs / "rtnf.log").read_text()
        procs.procs["scanner_sim"].wait(30)
        listener.poll(0.5)
    finally:
        listener.close()
        procs.stop_all()
    return cfg, listener, logs


def _assert_no_leak(cfg, listener, logs: Path, values: dict[str, set[bytes]]) -> None:
    export = Path(cfg.scanner.export_dir)
    exported = [p for p in export.iterdir() if p.is_file()]
    assert exported, "scanner_sim wrote no files"
    # the test would prove nothing if the inputs did not carry the values
    assert find_leaks(values, exported[:1], []), "the exported files do not hold the identifying values"
    outputs = [p for p in Path(cfg.output.dir).rglob("*") if p.is_file()]
    assert any(p.name.endswith("_timeseries.tsv") for p in outputs), outputs
    assert any(t == "volume" and not b["flags"]["missing"] for t, b in listener.messages), "no volume was processed"
    rtnf_logs = [p for p in logs.iterdir() if p.is_file() and not p.name.startswith("scanner_sim")]
    leaks = find_leaks(values, outputs + rtnf_logs, listener.messages)
    assert not leaks, "identifying values leaked:\n" + "\n".join(leaks[:20])


def test_fake_patient_of_simulated_mosaic_never_leaks(tmp_path):
    """scanner_sim's Siemens mosaic files carry FAKE_PATIENT; none of it reaches outputs, logs or messages."""
    from rtnf.config import load_config
    from rtnf.apps.demo import sim_spec, write_toml
    from scanner_sim.dicom_writer import FAKE_PATIENT

    spec = sim_spec(load_config(make_config(tmp_path, CONFIG)), amplitude_pct=1.5, noise_pct=1.0, seed=3)
    write_toml(spec, tmp_path / "spec.toml")
    # faults give the logs and the log topic something to say about files and series
    cfg, listener, logs = live_run(tmp_path, CONFIG, [
        "synth", str(tmp_path / "spec.toml"), "--format", "siemens-mosaic", "--speed", "8",
        "--drop", "7", "--duplicate", "9", "--second-series", "12:9:2",
    ])
    values = identifying_values({k: v for k, v in FAKE_PATIENT.items() if k != "PatientSex"})
    assert {"PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName"} <= set(values)
    _assert_no_leak(cfg, listener, logs, values)
    assert any(t == "log" for t, _ in listener.messages), "the faults produced no log message to search"


@requires_shared_data("dicom-zoo/siemens_mosaic_skyra_E11_rtcloud")
def test_real_identified_series_never_leaks(tmp_path):
    """A real Siemens Skyra series (rt-cloud test data) still holds a patient name, ID, birth date and
    institution; replayed live by scanner_sim, none of them reaches outputs, logs or messages."""
    import pydicom

    files = sorted(RTCLOUD.glob("*.dcm"))
    fields: dict[str, str] = {}
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        for key in IDENTIFYING:
            if str(ds.get(key, "")).strip() not in ("", "None"):
                fields.setdefault(key, str(ds.get(key)))
    values = identifying_values(fields)
    if not values:
        pytest.skip(f"{RTCLOUD} holds no identifying values (de-identified)")
    config = {**CONFIG, "scanner.tr_s": 1.5, "scanner.n_volumes": len(files), "scanner.dummy_volumes": 0,
              "scanner.filename_template": "rt_{series:03d}_{volume:05d}.dcm",
              "protocol.pattern": pattern(rest=0.75, regulate=0.75, repeat=1), "rois.acc.center_mm": [0.0, 0.0, 0.0]}
    cfg, listener, logs = live_run(tmp_path, config, [
        "replay", str(RTCLOUD), "--speed", "4", "--filename-template", "rt_{series:03d}_{volume:05d}.dcm",
    ])
    _assert_no_leak(cfg, listener, logs, values)


def test_find_leaks_sees_text_binary_gzip_and_messages(tmp_path):
    """The scanner itself: a value is found in binary files, gzip streams and messages, in any case."""
    values = identifying_values({"PatientName": "Doe^Janette", "PatientBirthDate": "19660101"})
    (tmp_path / "a.bin").write_bytes(b"\x00\x01JANETTE\x00")
    (tmp_path / "b.gz").write_bytes(gzip.compress(b"born 1966-01-01"))
    (tmp_path / "clean.tsv").write_text("nothing here\n")
    leaks = find_leaks(values, sorted(tmp_path.iterdir()), [("log", {"message": "doe janette"})])
    text = "\n".join(leaks)
    assert "a.bin" in text and "b.gz" in text and "message 0" in text and "clean.tsv" not in text, leaks


def test_reading_invalid_identifying_values_warns_nothing_about_them(tmp_path, caplog):
    """pydicom warns with the value when an element is invalid (``Invalid value for VR DA: '...'``) -- but only
    when the element is accessed. rtnf's probe and readers never touch the identifying elements, so even
    invalid ones reach no warning and no log record."""
    import io
    import warnings

    import pydicom
    from pydicom import config as pydicom_config

    pytest.importorskip("hypothesis", reason="tests.fuzz (the seed files) needs hypothesis, a dev dependency")
    from tests import fuzz
    from rtnf.scanner.dicom import SeriesReader, read_volume
    from rtnf.scanner.dicom import probe

    seed = {s.name: s for s in fuzz.sim_seeds()}["sim_mosaic.dcm"]
    old = pydicom_config.settings.writing_validation_mode
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(seed.data))
            ds.PatientName = "Secretname^Person" + "Q" * 70
            ds.InstitutionName = "Hospital of Secrets " + "Z" * 60
            ds.PatientBirthDate = "1970-01-0"
            ds.PatientID = "ID\\with\\backslashes-SECRET"
            buf = io.BytesIO()
            ds.save_as(buf)
    finally:
        pydicom_config.settings.writing_validation_mode = old
    path = tmp_path / "001_000001_000001.dcm"
    path.write_bytes(buf.getvalue())
    caplog.clear()  # pydicom logged the invalid values while this test wrote them
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        info = probe(path)
        read_volume(path)
        reader = SeriesReader()
        reader.read(path)
        reader.read(path)
    assert info.usable
    text = " ".join(str(w.message) for w in caught) + " ".join(r.getMessage() for r in caplog.records)
    text += repr(info)
    for secret in ("secretname", "hospital of secrets", "1970-01-0", "secret"):
        assert secret not in text.lower(), text


def test_file_names_with_the_patient_name_never_leak_with_hashed_file_names(tmp_path):
    """Issue 15 point 16: some sites name exported files after the patient. With ``[output] file_names = "hash"``
    the table's file column, the volume messages, the log topic, rtnf's log and every output show the volume
    number and a salted hash instead: no trace of the name anywhere."""
    from tests.helpers import synthetic_run_4d

    synthetic_run_4d(tmp_path / "series.nii", 16)
    # faults make the watcher, the sequencer and the log topic talk about files
    cfg, listener, logs = live_run(tmp_path, {**CONFIG, "output.file_names": "hash"}, [
        "replay", str(tmp_path / "series.nii"), "--speed", "8", "--filename-template", "Doe^Janette_{volume:04d}.nii",
        "--drop", "7", "--duplicate", "9",
    ])
    exported = [p.name for p in Path(cfg.scanner.export_dir).iterdir()]
    assert exported and all("Janette" in n for n in exported), exported  # the inputs do carry the name
    values = identifying_values({"PatientName": "Doe^Janette"})
    outputs = [p for p in Path(cfg.output.dir).rglob("*") if p.is_file()]
    rtnf_logs = [p for p in logs.iterdir() if p.is_file() and not p.name.startswith("scanner_sim")]
    leaks = find_leaks(values, outputs + rtnf_logs, listener.messages)
    assert not leaks, "the patient's name leaked through file names:\n" + "\n".join(leaks[:20])
    files = [b["file"] for t, b in listener.messages if t == "volume" and not b["flags"]["missing"]]
    assert files and all(f.startswith("vol-") and len(f) == len("vol-000001_") + 8 for f in files), files
    assert any(t == "log" for t, _ in listener.messages), "the faults produced no log message to search"
