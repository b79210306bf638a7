"""`rtnf import-opennft`: an OpenNFT settings/protocol pair becomes an equivalent rtnf config."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import nibabel as nib
import numpy as np

from rtnf.config import load_config
from rtnf.apps.opennft import import_opennft

# Modelled on OpenNFT's opennft/configs/NF_PSC_int_155.ini (paths made local).
SETTINGS = """[General]
ProjectName=PSC
SubjectID=foo
WatchFolder={root}/rtData/NF_Run_1
NFRunNr=2
ImgSerNr=7
DicomFirstImageNr=1
FirstFileNameTxt=001_{{Image Series No:06}}_{{#:06}}.dcm
FirstFileName=001_000007_000001.dcm
NrOfVolumes=155
nrSkipVol=5
DataType=DICOM
TR=1970
MatrixSizeX=74
MatrixSizeY=74
NrOfSlices=36
WorkFolder={root}/rtData
StimulationProtocol={root}/Settings/NF_PSC_int_155.json
RoiFilesFolder={root}/rtData/ROIs_D1
RoiAnatOperation=median(norm_percValues)
RoiGroupFolder=
WeightsFileName=
MCTempl={root}/rtData/EPI_Template_D1/fanon-0007-00006-000006-01.nii
TaskFolder=
Prot=Inter
OfflineMode=false
UseTCPData=false
TCPDataIP=127.0.0.1
TCPDataPort=1234
Type=PSC
MaxFeedbackVal=10
FeedbackValDec=1
NegFeedback=false
UsePTB=false
DisplayFeedbackScreenID=1
DisplayFeedbackFullscreen=true
UseUDPFeedback=false
UDPFeedbackIP=127.0.0.1
MinFeedbackVal=-100
RestingState=false
"""

# The current protocol format ("ConditionIndex", "ContrastActivation"), as in OpenNFT's examples.
PROTOCOL = {
    "ContrastActivation": "+1*NFBREG;0*NFBDISP",
    "ConditionIndex": [
        {"ConditionName": "BAS", "OnOffsets": [[1, 10], [23, 30], [43, 50]]},
        {"ConditionName": "NFBREG", "OnOffsets": [[11, 20], [31, 40], [141, 150]]},
        {"ConditionName": "NFBDISP", "OnOffsets": [[21, 22], [41, 42]]},
    ],
}


def _nifti(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([3.0, 3.0, 3.0, 1.0])), path)


def _opennft_files(root: Path) -> tuple[Path, Path]:
    settings = root / "Settings" / "NF_PSC_int_155.ini"
    protocol = root / "Settings" / "NF_PSC_int_155.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(SETTINGS.format(root=root.as_posix()))
    protocol.write_text(json.dumps(PROTOCOL, indent=1))
    (root / "rtData" / "NF_Run_1").mkdir(parents=True)
    _nifti(root / "rtData" / "EPI_Template_D1" / "fanon-0007-00006-000006-01.nii", np.ones((8, 8, 6)))
    for name, x in (("ACC_left.nii", 2), ("ACC_right.nii", 5)):
        mask = np.zeros((8, 8, 6))
        mask[x : x + 2, 3:5, 2:4] = 1
        _nifti(root / "rtData" / "ROIs_D1" / name, mask)
    return settings, protocol


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rtnf", *args], capture_output=True, text=True, timeout=120)


def test_opennft_settings_and_protocol_become_an_equivalent_config(tmp_path):
    settings, protocol = _opennft_files(tmp_path)
    out = tmp_path / "psc_int.toml"
    proc = _cli("import-opennft", str(settings), str(protocol), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    cfg = load_config(out)

    sc = cfg.scanner
    assert (sc.tr_s, sc.n_volumes, sc.dummy_volumes) == (1.97, 155, 5)
    assert sc.filename_template == "001_{series:06d}_{volume:06d}.dcm"
    assert (sc.series_number, sc.first_volume_number, sc.format) == (7, 1, "dicom")
    assert sc.export_dir == tmp_path / "rtData" / "NF_Run_1"
    assert (cfg.session.subject, cfg.session.run) == ("foo", 2)

    # OnOffsets are 1-based, inclusive and counted after the skipped volumes:
    # [11, 20] is rtnf's 0-based onset 10 for 10 volumes; [141, 150] ends the 150 kept volumes.
    pc = cfg.protocol
    assert pc.units == "volumes" and pc.baseline == "BAS"
    assert [(b.condition, b.onset, b.duration) for b in pc.blocks] == [
        ("NFBREG", 10, 10), ("NFBREG", 30, 10), ("NFBREG", 140, 10),
    ]
    labels = cfg.make_protocol().labels()
    assert labels[9] == "BAS" and labels[10] == "NFBREG" and labels[19] == "NFBREG" and labels[20] == "BAS"
    assert labels[149] == "NFBREG"

    assert list(cfg.rois) == ["ACCleft", "ACCright"]
    assert cfg.rois["ACCleft"].mask == tmp_path / "rtData" / "ROIs_D1" / "ACC_left.nii"
    fb = cfg.feedback
    assert fb.targets == ["ACCleft", "ACCright"] and fb.combine == "median"
    assert (fb.kind, fb.signal) == ("intermittent", "psc")
    assert abs(fb.intermittent_display_s - 2 * 1.97) < 1e-9  # NFBDISP blocks are 2 volumes
    assert cfg.model.contrast == "NFBREG"
    assert Path(cfg.motion.reference) == tmp_path / "rtData" / "EPI_Template_D1" / "fanon-0007-00006-000006-01.nii"
    assert (cfg.display.screen, cfg.display.fullscreen) == (1, True)
    assert cfg.output.dir == tmp_path / "rtData" / "rtnf"

    # What has no rtnf equivalent is printed and kept as comments at the end of the file.
    text = out.read_text()
    for key in ("MaxFeedbackVal = 10", "MinFeedbackVal = -100", "MatrixSizeX = 74", "'NFBDISP'"):
        assert key in proc.stdout, key
        assert f"#   - {key}" in text or key in text.split("# Not carried over")[1], key
    assert "TCPDataIP" not in text  # the settings of a switched-off option are not noise
    assert "to fix before a session" not in proc.stdout  # it loads as written

    check = _cli("check", str(out))
    assert check.returncode == 0, check.stderr
    assert "volumes   11-  20  NFBREG" in check.stdout  # OpenNFT's 1-based [11, 20], as rtnf check counts too


def test_older_protocol_format_and_an_explicit_first_file_name(tmp_path):
    """OpenNFT's older files: "Cond" with BaselineName/CondName, and a first file name without variables."""
    settings, _ = _opennft_files(tmp_path)
    text = settings.read_text().replace("FirstFileNameTxt=001_{Image Series No:06}_{#:06}.dcm",
                                        "FirstFileNameTxt=001_000007_000001").replace("Prot=Inter", "Prot=Cont")
    settings.write_text(text.replace("RoiAnatOperation=median(norm_percValues)",
                                     "RoiAnatOperation=norm_percValues(2) - norm_percValues(1)"))
    protocol = tmp_path / "old.json"
    protocol.write_text(json.dumps({
        "BaselineName": "Bas", "CondName": "NF", "Contrast": "+1*NF;-1*Bas",
        "Cond": [{"ConditionName": "Bas", "OnOffsets": [[1, 10], [21, 30]]},
                 {"ConditionName": "NF", "OnOffsets": [[11, 20], [31, 40]]}],
    }))
    toml_text, conv = import_opennft(settings, protocol)
    raw = tomllib.loads(toml_text)
    assert raw["scanner"]["filename_template"] == "001_{series:06d}_{volume:06d}.dcm"
    assert raw["protocol"]["baseline"] == "Bas"
    assert raw["protocol"]["blocks"] == [{"condition": "NF", "onset": 10, "duration": 10},
                                         {"condition": "NF", "onset": 30, "duration": 10}]
    fb = raw["feedback"]
    assert (fb["kind"], fb["roi"], fb["reference_roi"]) == ("continuous", "ACCright", "ACCleft")
    assert not any("intermittent feedback display" in u for u in conv.unmapped)


def test_garbled_or_missing_files_exit_2_with_one_message(tmp_path):
    settings, protocol = _opennft_files(tmp_path)
    garbled = tmp_path / "garbled.ini"
    garbled.write_bytes(b"\x00\x9f\xff[General\nTR=\x81\x82 this is not ini\n")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"ConditionIndex": [{"ConditionName": "NFBREG", "OnOffsets": [[11, 20]')
    wrong_shape = tmp_path / "shape.json"
    wrong_shape.write_text('{"ConditionIndex": [{"ConditionName": "NFBREG", "OnOffsets": [[20, 11]]}]}')
    for args, words in (
        ((str(garbled), str(protocol)), "garbled.ini"),
        ((str(settings), str(bad_json)), "not valid JSON"),
        ((str(settings), str(wrong_shape)), "OnOffsets"),
        ((str(tmp_path / "nowhere.ini"),), "not found"),
    ):
        proc = _cli("import-opennft", *args, "-o", str(tmp_path / "out.toml"))
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert words in proc.stderr, proc.stderr
        assert not (tmp_path / "out.toml").exists()
