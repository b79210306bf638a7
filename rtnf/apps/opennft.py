"""``rtnf import-opennft``: an rtnf session config from an OpenNFT settings file and protocol.

OpenNFT keeps a run's settings in an INI file (section ``[General]``, keys
such as ``WatchFolder``, ``NrOfVolumes``, ``nrSkipVol``, ``TR`` in
milliseconds, ``FirstFileNameTxt``, ``RoiFilesFolder``, ``Type``, ``Prot``)
and its protocol in a JSON file: a list of conditions (``"ConditionIndex"``,
or ``"Cond"`` in older files), each with ``"OnOffsets"``, 1-based inclusive
volume ranges counted after the skipped volumes. This module turns the pair
into the dict of an rtnf config (:mod:`rtnf.config`) and writes it as TOML,
listing what has no rtnf equivalent. Pure functions except the file reading
and writing at the edges; nothing here needs OpenNFT or MATLAB.
"""

from __future__ import annotations

import configparser
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any

MASK_SUFFIXES = (".nii", ".nii.gz", ".img")  # OpenNFT reads NIfTI and Analyze ROI masks
DISPLAY_CONDITION_KEYS = ("nfbDisplayName", "DispName")  # intermittent feedback's display period
REGULATION_KEYS = ("RegulationName", "CondName")
# Settings keys the converter reads (others are listed as unmapped when they have a value).
_MAPPED = {
    "ProjectName", "SubjectID", "NFRunNr", "WatchFolder", "ImgSerNr", "DicomFirstImageNr", "FirstFileNameTxt",
    "FirstFileName", "NrOfVolumes", "nrSkipVol", "DataType", "TR", "WorkFolder", "StimulationProtocol",
    "RoiFilesFolder", "RoiAnatOperation", "MCTempl", "Prot", "Type", "DisplayFeedbackScreenID",
    "DisplayFeedbackFullscreen",
}
# Why some settings have no rtnf equivalent (others get a generic reason).
_REASONS = {
    "MaxFeedbackVal": "OpenNFT's display units (the bar's maximum); rtnf scales the signal to [0, 1] "
                      "with feedback.scaling and feedback.scale_range",
    "MinFeedbackVal": "OpenNFT's display units; see feedback.scale_range",
    "NegFeedback": "rtnf's bar is clipped at the bottom of feedback.scale_range",
    "FeedbackValDec": "display rounding; rtnf sends the unrounded value",
    "MatrixSizeX": "the series is selected by scanner.series_number; set scanner.expected_matrix if needed",
    "MatrixSizeY": "the series is selected by scanner.series_number; set scanner.expected_matrix if needed",
    "NrOfSlices": "read from the DICOM headers (set scanner.slices_per_volume for slice-per-file exports)",
    "UseUDPFeedback": "rtnf publishes on ZeroMQ ([publish]); `rtnf lsl` republishes on Lab Streaming Layer",
    "UseTCPData": "rtnf reads files from scanner.export_dir",
    "ShamFile": "rtnf's feedback.sham_from takes a recorded rtnf timeseries table, not an OpenNFT file",
    "RoiGroupFolder": "no ROI groups in rtnf",
    "WeightsFileName": "no weighted (SVM) ROIs in rtnf",
    "AnatBgFolder": "the console shows the functional volume",
    "StructBgFile": "the console shows the functional volume",
    "OfflineMode": "use `rtnf replay` for offline runs",
    "UsePTB": "the feedback screen is `rtnf-screen` (PsychoPy)",
}


class OpenNFTError(ValueError):
    """An OpenNFT file that cannot be read or converted; the message names the file and the problem."""


@dataclass
class Conversion:
    """An rtnf config built from OpenNFT files.

    Attributes
    ----------
    config : dict
        The config's tables, as :func:`rtnf.config.load_config` reads them.
    comments : dict
        Dotted key (``"scanner.tr_s"``) -> a comment written beside it.
    unmapped : list of str
        What could not be carried over, one line each.
    """

    config: dict[str, Any]
    comments: dict[str, str] = field(default_factory=dict)
    unmapped: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- reading


def read_settings(path: Path) -> dict[str, str]:
    """Read an OpenNFT settings (INI) file into ``{key: value}``.

    Keys keep their case; every section is read (OpenNFT writes ``[General]``).
    QSettings' doubled backslashes (``C:\\\\_RT``) are undone.

    Raises
    ------
    OpenNFTError
        The file is missing, unreadable, not INI, or has no keys.
    """
    text = _read_text(path, "settings")
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # OpenNFT keys are case-sensitive
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as exc:
        raise OpenNFTError(f"{path}: not an OpenNFT settings (INI) file: {_first_line(exc)}") from None
    values = {k: v.strip().replace("\\\\", "\\") for s in parser.sections() for k, v in parser.items(s)}
    if "NrOfVolumes" not in values and "nrOfVolumes" in values:  # some hand-written files
        values["NrOfVolumes"] = values.pop("nrOfVolumes")
    missing = [k for k in ("NrOfVolumes", "TR") if not values.get(k)]
    if missing:
        raise OpenNFTError(f"{path}: not an OpenNFT settings file: no {' or '.join(missing)} key")
    return values


def read_protocol(path: Path) -> dict[str, Any]:
    """Read an OpenNFT protocol (JSON) and check the shape of its conditions.

    Returns
    -------
    dict
        The JSON object; its conditions are under ``"ConditionIndex"`` or ``"Cond"``.

    Raises
    ------
    OpenNFTError
        The file is missing, unreadable, not JSON, or has no valid condition list.
    """
    text = _read_text(path, "protocol")
    try:
        prot = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OpenNFTError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(prot, dict):
        raise OpenNFTError(f"{path}: expected a JSON object with a 'ConditionIndex' list")
    conds = prot.get("ConditionIndex", prot.get("Cond"))
    if not isinstance(conds, list) or not conds:
        raise OpenNFTError(f"{path}: no 'ConditionIndex' (or 'Cond') list of conditions")
    for k, cond in enumerate(conds):
        ok = isinstance(cond, dict) and isinstance(cond.get("ConditionName"), str)
        offsets = cond.get("OnOffsets") if ok else None
        if isinstance(offsets, list) and offsets and all(isinstance(x, (int, float)) for x in offsets):
            offsets = [offsets]  # jsonlab writes a single block as a flat pair
            cond["OnOffsets"] = offsets
        if not ok or not isinstance(offsets, list) or not all(_is_range(r) for r in offsets):
            raise OpenNFTError(
                f"{path}: condition {k + 1} needs 'ConditionName' and 'OnOffsets' as a list of "
                "[first, last] volume numbers (1-based, last >= first)"
            )
    return prot


def _read_text(path: Path, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise OpenNFTError(f"{what} file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not a text file"
        raise OpenNFTError(f"cannot read {what} file {path}: {reason}") from None


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0]


def _is_range(r: Any) -> bool:
    return (
        isinstance(r, list) and len(r) == 2 and all(isinstance(x, (int, float)) and float(x).is_integer() for x in r)
        and 1 <= r[0] <= r[1]
    )


# ---------------------------------------------------------------- converting


def convert(settings: dict[str, str], protocol: dict[str, Any], base: Path) -> Conversion:
    """Build the rtnf config from OpenNFT settings and protocol.

    Parameters
    ----------
    settings : dict
        From :func:`read_settings`.
    protocol : dict
        From :func:`read_protocol`.
    base : Path
        Folder relative paths in the settings are relative to (the settings file's).

    Returns
    -------
    Conversion
    """
    out = Conversion(config={})
    tr_s = _number(settings, "TR") / 1000.0  # OpenNFT's TR is in milliseconds
    n_volumes = int(_number(settings, "NrOfVolumes"))
    dummies = int(_number(settings, "nrSkipVol", 0))
    out.config["session"] = _session(settings, out)
    out.config["scanner"] = _scanner(settings, base, tr_s, n_volumes, dummies, out)
    out.config["protocol"], regulation, display_vols = _protocol(protocol, settings, n_volumes - dummies, out)
    out.config["rois"], names = _rois(settings, base, out)
    if regulation is not None:
        out.config["model"] = {"contrast": regulation}
        out.comments["model.contrast"] = "OpenNFT's regulation condition"
    mc_template = settings.get("MCTempl", "")
    if mc_template:
        out.config["motion"] = {"reference": _path(mc_template, base, "MCTempl", out)}
        out.comments["motion.reference"] = "OpenNFT's MCTempl: the realignment template"
    out.config["feedback"] = _feedback(settings, names, tr_s, display_vols, out)
    tasks = list(dict.fromkeys(b["condition"] for b in out.config["protocol"]["blocks"]))
    if out.config["feedback"]["kind"] == "intermittent" and len(tasks) > 1:
        out.unmapped.append(
            f"intermittent feedback: rtnf gives a score after every block of {', '.join(tasks)}, "
            f"OpenNFT only after regulation blocks ({regulation or tasks[0]})"
        )
    display = _display(settings)
    if display:
        out.config["display"] = display
    work = settings.get("WorkFolder", "")
    work_dir = _path(work, base, "WorkFolder", out) if work else ""
    sep = "\\" if "\\" in work_dir else "/"  # a Windows path stays one
    out.config["output"] = {"dir": f"{work_dir.rstrip(sep)}{sep}rtnf" if work else "derivatives"}
    out.comments["output.dir"] = "BIDS derivatives (under OpenNFT's WorkFolder)" if work else "BIDS derivatives"
    switched_off = {prefix for prefix, switch in (("TCPData", "UseTCPData"), ("UDP", "UseUDPFeedback"))
                    if settings.get(switch, "").lower() != "true"}
    for key, value in settings.items():
        if any(key.startswith(p) for p in switched_off):
            continue  # the settings of a switched-off option: nothing to carry over
        if key not in _MAPPED and value and value.lower() not in ("false", "0"):
            out.unmapped.append(f"{key} = {value}: {_REASONS.get(key, 'no rtnf equivalent')}")
    return out


def _number(settings: dict[str, str], key: str, default: float | None = None) -> float:
    text = settings.get(key, "")
    if not text:
        if default is None:
            raise OpenNFTError(f"no value for {key}")
        return default
    try:
        value = float(text)
    except ValueError:
        raise OpenNFTError(f"{key} = {text!r} is not a number") from None
    if not math.isfinite(value):  # nan, inf, 1e400: never a count or a time
        raise OpenNFTError(f"{key} = {text!r} is not a finite number")
    return value


def _label(text: str) -> str:
    """A BIDS label (alphanumeric) from free text."""
    return re.sub(r"[^A-Za-z0-9]", "", text)


def _session(settings: dict[str, str], out: Conversion) -> dict[str, Any]:
    subject = _label(settings.get("SubjectID", "")) or "01"
    if subject != settings.get("SubjectID", ""):
        out.unmapped.append(
            f"SubjectID = {settings.get('SubjectID', '')!r}: written as {subject!r} (BIDS labels are alphanumeric)"
        )
    session: dict[str, Any] = {"subject": subject, "task": _label(settings.get("ProjectName", "")).lower() or "nf"}
    run = settings.get("NFRunNr", "")
    if run.isdigit() and int(run) >= 1:
        session["run"] = int(run)
    return session


def _scanner(
    settings: dict[str, str], base: Path, tr_s: float, n_volumes: int, dummies: int, out: Conversion
) -> dict[str, Any]:
    watch = settings.get("WatchFolder", "")
    export_dir = _path(watch, base, "WatchFolder", out) if watch else "export"
    scanner: dict[str, Any] = {"export_dir": export_dir}
    data_type = settings.get("DataType", "").upper()
    fmt = {"DICOM": "dicom", "NII": "nifti", "NIFTI": "nifti"}.get(data_type)
    if fmt is not None:
        scanner["format"] = fmt
    elif data_type:
        out.unmapped.append(f"DataType = {settings['DataType']}: no rtnf reader of that name; format left to \"auto\"")
    scanner.update(tr_s=tr_s, n_volumes=n_volumes, dummy_volumes=dummies)
    out.comments["scanner.tr_s"] = f"OpenNFT TR = {settings['TR']} ms"
    out.comments["scanner.dummy_volumes"] = "OpenNFT nrSkipVol"
    series = settings.get("ImgSerNr", "")
    first = settings.get("DicomFirstImageNr", "")
    template = first_file_template(settings, out)
    if template is not None:
        folder, _, name = template.rpartition("/")
        if folder:  # OpenNFT's template may name sub-folders of the watch folder
            scanner["export_dir"] = f"{export_dir.rstrip('/')}/{folder}"
        scanner["filename_template"] = name
        out.comments["scanner.filename_template"] = f"OpenNFT FirstFileNameTxt = {settings['FirstFileNameTxt']}"
    if first.isdigit():
        scanner["first_volume_number"] = int(first)
    if series.isdigit():
        scanner["series_number"] = int(series)
        out.comments["scanner.series_number"] = "OpenNFT ImgSerNr"
    return scanner


def first_file_template(settings: dict[str, str], out: Conversion) -> str | None:
    """rtnf's ``filename_template`` from OpenNFT's ``FirstFileNameTxt``.

    ``{Image Series No:06}`` becomes ``{series:06d}``, ``{#:06}`` becomes
    ``{volume:06d}``; other variables (``{Subject ID}``, ``{Project Name}``,
    ``{NR Run No:03}``) are filled in from the settings. An explicit first
    file name (``001_000007_000001.dcm``) is turned into a template by
    finding the series and first image numbers in it. The extension OpenNFT
    adds for the data type is added when missing. Returns None (and says
    why in ``out.unmapped``) when no template can be made.
    """
    text = settings.get("FirstFileNameTxt", "") or settings.get("FirstFileName", "")
    if not text:
        return None
    text = text.replace("\\", "/")
    if "{" in text:
        template = _fill_template(text, settings, out)
    else:
        template = _template_from_name(text, settings)
    if template is None:
        out.unmapped.append(f"FirstFileNameTxt = {text}: no series and volume numbers found; every file in "
                            "scanner.export_dir is considered (set scanner.filename_template)")
        return None
    ext = {"DICOM": ".dcm", "NII": ".nii"}.get(settings.get("DataType", "").upper(), "")
    if ext and "." not in template.rpartition("/")[2]:
        template += ext
    return template


_VARIABLES = {"subjectid": "SubjectID", "projectname": "ProjectName", "nrrunno": "NFRunNr", "nfrunnr": "NFRunNr"}


def _fill_template(text: str, settings: dict[str, str], out: Conversion) -> str | None:
    def field_(m: re.Match[str]) -> str:
        name = re.sub(r"\s+", "", m.group(1)).lower()
        width = m.group(2)
        if name == "#":
            return f"{{volume:0{int(width)}d}}" if width else "{volume}"
        if name == "imageseriesno":
            return f"{{series:0{int(width)}d}}" if width else "{series}"
        key = _VARIABLES.get(name)
        if key is None or not settings.get(key):
            raise _Unknown(m.group(0))
        value = settings[key]
        return value.zfill(int(width)) if width and value.isdigit() else value

    try:
        return re.sub(r"\{([^{}:]+)(?::0?(\d+))?\}", field_, text)
    except _Unknown as exc:
        out.unmapped.append(f"FirstFileNameTxt = {text}: unknown variable {exc}")
        return None


class _Unknown(Exception):
    """A template variable the settings give no value for."""


def _template_from_name(name: str, settings: dict[str, str]) -> str | None:
    """``001_000007_000001`` -> ``001_{series:06d}_{volume:06d}``: the last number equal to
    ``DicomFirstImageNr`` is the volume, a number before it equal to ``ImgSerNr`` the series."""
    series, first = settings.get("ImgSerNr", ""), settings.get("DicomFirstImageNr", "1") or "1"
    groups = list(re.finditer(r"\d+", name))
    if not (series.isdigit() and first.isdigit()):
        return None
    vol = next((g for g in reversed(groups) if int(g.group()) == int(first)), None)
    if vol is None:
        return None
    ser = next((g for g in reversed(groups) if g.start() < vol.start() and int(g.group()) == int(series)), None)
    parts, pos = [], 0
    for g, fieldname in ((ser, "series"), (vol, "volume")):
        if g is not None:
            parts += [name[pos:g.start()], f"{{{fieldname}:0{len(g.group())}d}}"]
            pos = g.end()
    return "".join(parts) + name[pos:]


def _path(value: str, base: Path, key: str, out: Conversion) -> str:
    """A settings path as a string for the TOML file: absolute, or as given for a Windows path."""
    if re.match(r"^[A-Za-z]:[\\/]", value) or "\\" in value:
        out.unmapped.append(f"{key} = {value}: a Windows path, written as given; edit it for this machine")
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _protocol(
    prot: dict[str, Any], settings: dict[str, str], n_kept: int, out: Conversion
) -> tuple[dict[str, Any], str | None, int | None]:
    """``[protocol]``, the regulation condition (for the contrast) and the display period in volumes."""
    conds = prot.get("ConditionIndex", prot.get("Cond"))
    names = [c["ConditionName"] for c in conds]
    baseline = _baseline(prot, names)
    intermittent = settings.get("Prot", "").lower().startswith("inter")
    display = next((prot[k] for k in DISPLAY_CONDITION_KEYS if isinstance(prot.get(k), str)), None)
    if display is None and intermittent:
        display = next((n for n in names if n.upper() in ("NFBDISP", "DISP", "FB")), None)
    display_vols: int | None = None
    blocks: list[dict[str, Any]] = []
    for cond in conds:
        name = cond["ConditionName"]
        ranges = [(int(a), int(b)) for a, b in cond["OnOffsets"]]
        if name == baseline:
            continue  # volumes no block covers belong to the baseline, as in OpenNFT
        if intermittent and name == display:
            display_vols = ranges[0][1] - ranges[0][0] + 1
            out.unmapped.append(
                f"condition {name!r} (intermittent feedback display, {len(ranges)} "
                f"block{'s' if len(ranges) != 1 else ''}): not a condition in "
                f"rtnf; its volumes are baseline and the score is shown for feedback.intermittent_display_s "
                "after each regulation block (and its hemodynamic lag)"
            )
            continue
        for first, last in ranges:
            block = opennft_range_to_block(name, first, last, n_kept)
            if block is None:
                out.unmapped.append(
                    f"{name} block [{first}, {last}]: starts after the run's {n_kept} kept volumes; dropped"
                )
                continue
            if block["onset"] + block["duration"] < last:
                out.unmapped.append(f"{name} block [{first}, {last}]: clipped to the run's {n_kept} kept volumes")
            blocks.append(block)
    blocks.sort(key=lambda b: b["onset"])
    table: dict[str, Any] = {"units": "volumes", "baseline": baseline}
    if baseline not in names:
        out.comments["protocol.baseline"] = "volumes no OpenNFT condition covers"
    table["blocks"] = blocks
    out.comments["protocol.blocks"] = "OpenNFT OnOffsets [first, last] (1-based, inclusive, after nrSkipVol) -> " \
                                      "onset = first - 1, duration = last - first + 1"
    weights = _contrast(prot)
    regulation = next((prot[k] for k in REGULATION_KEYS if isinstance(prot.get(k), str)), None)
    if regulation is None:
        regulation = next((c for c, w in weights.items() if w > 0 and c != baseline), None)
    tasks = {b["condition"] for b in blocks}
    if regulation not in tasks:
        regulation = None
    extra = [c for c, w in weights.items() if w != 0 and c not in (baseline, regulation)]
    if extra:
        out.unmapped.append(
            f"contrast weights on {', '.join(extra)}: rtnf's t-map tests one condition (model.contrast)"
        )
    for key in ("SignalPreprocessingBasis", "dcmdef"):
        if key in prot:
            out.unmapped.append(f"protocol {key}: no rtnf equivalent")
    return table, regulation, display_vols


def opennft_range_to_block(condition: str, first: int, last: int, n_kept: int) -> dict[str, Any] | None:
    """One OpenNFT ``OnOffsets`` range as an rtnf block in volumes.

    Parameters
    ----------
    condition : str
        Condition name.
    first, last : int
        1-based, inclusive volume numbers counted after the skipped volumes.
    n_kept : int
        Volumes after the skipped ones (``NrOfVolumes - nrSkipVol``).

    Returns
    -------
    dict or None
        ``{"condition", "onset", "duration"}`` with a 0-based onset and a
        duration in volumes, clipped to the run; None when the range starts
        after the run.
    """
    onset = first - 1
    if onset >= n_kept:
        return None
    return {"condition": condition, "onset": onset, "duration": min(last, n_kept) - onset}


def _baseline(prot: dict[str, Any], names: list[str]) -> str:
    """The protocol's ``BaselineName``, else a condition called ``BAS``, else ``"BAS"`` (uncovered volumes)."""
    named = prot.get("BaselineName")
    if isinstance(named, str) and named:
        return named
    return next((n for n in names if n.upper() == "BAS"), "BAS")


def _contrast(prot: dict[str, Any]) -> dict[str, float]:
    """``"+1*NFBREG;-1*BAS"`` -> ``{"NFBREG": 1.0, "BAS": -1.0}`` (``ContrastActivation`` or ``Contrast``)."""
    text = prot.get("ContrastActivation", prot.get("Contrast", ""))
    weights: dict[str, float] = {}
    for term in str(text).split(";"):
        m = re.match(r"^\s*([+-]?\s*\d*\.?\d*)\s*\*\s*(\S+)\s*$", term)
        if m:
            w = m.group(1).replace(" ", "")
            weights[m.group(2)] = float(w) if w not in ("", "+", "-") else (-1.0 if w == "-" else 1.0)
    return weights


def _rois(settings: dict[str, str], base: Path, out: Conversion) -> tuple[dict[str, Any], list[str]]:
    """One ``[rois.<name>]`` mask per NIfTI/Analyze file in ``RoiFilesFolder`` (sorted, as OpenNFT reads them)."""
    folder_text = settings.get("RoiFilesFolder", "")
    folder = _path(folder_text, base, "RoiFilesFolder", out) if folder_text else ""
    files = []
    if folder and Path(folder).is_dir():
        files = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.name.lower().endswith(MASK_SUFFIXES))
    if not files:
        placeholder = f"{folder.rstrip('/')}/roi1.nii" if folder else "roi1.nii"
        out.unmapped.append(f"RoiFilesFolder = {folder_text}: no ROI masks found there; [rois.roi1] points at "
                            f"{placeholder}: replace it with your mask or a sphere")
        return {"roi1": {"mask": placeholder}}, ["roi1"]
    rois: dict[str, Any] = {}
    for path in files:
        stem = re.sub(r"\.(nii\.gz|nii|img)$", "", path.name, flags=re.IGNORECASE)
        name = re.sub(r"[^A-Za-z0-9]", "", stem)
        name = name if name[:1].isalpha() else f"roi{name}"
        while name in rois:
            name += "b"
        rois[name] = {"mask": str(path)}
    return rois, list(rois)


def _feedback(
    settings: dict[str, str], names: list[str], tr_s: float, display_vols: int | None, out: Conversion
) -> dict[str, Any]:
    fb: dict[str, Any] = {"roi": names[0] if len(names) == 1 else names}
    operation = re.sub(r"\s+", "", settings.get("RoiAnatOperation", ""))
    diff = re.fullmatch(r"norm_percValues\((\d+)\)-norm_percValues\((\d+)\)", operation)
    combine = re.fullmatch(r"(mean|median)\(norm_percValues\)", operation)
    if diff and all(1 <= int(k) <= len(names) for k in diff.groups()) and diff.group(1) != diff.group(2):
        fb["roi"], fb["reference_roi"] = names[int(diff.group(1)) - 1], names[int(diff.group(2)) - 1]
        out.comments["feedback.reference_roi"] = f"OpenNFT RoiAnatOperation = {settings['RoiAnatOperation']}"
    elif combine:
        if len(names) > 1:
            fb["combine"] = combine.group(1)
            out.comments["feedback.combine"] = f"OpenNFT RoiAnatOperation = {settings['RoiAnatOperation']}"
    elif operation:
        out.unmapped.append(f"RoiAnatOperation = {settings['RoiAnatOperation']}: not a mean, median or difference "
                            "of ROIs; feedback.roi takes the mean of every ROI")
    kind_text = settings.get("Type", "PSC")
    if kind_text.upper() != "PSC":
        out.unmapped.append(f"Type = {kind_text}: rtnf computes percent signal change (feedback.signal = \"psc\"), "
                            "not DCM, SVM or connectivity feedback")
    fb["signal"] = "psc"
    prot = settings.get("Prot", "Cont")
    fb["kind"] = "intermittent" if prot.lower().startswith("inter") else "continuous"
    out.comments["feedback.kind"] = f"OpenNFT Prot = {prot}"
    if prot not in ("Cont", "Inter"):
        out.unmapped.append(f"Prot = {prot}: treated as continuous feedback")
    if fb["kind"] == "intermittent" and display_vols:
        fb["intermittent_display_s"] = round(display_vols * tr_s, 6)
        out.comments["feedback.intermittent_display_s"] = "the display condition's block length"
    # OpenNFT's PSC pipeline always despikes with its modified Kalman filter
    # and scales by the range seen so far: the closest rtnf settings.
    fb["despike"] = True
    fb["scaling"] = "dynamic"
    out.comments["feedback.scaling"] = "OpenNFT scales PSC by the range seen so far"
    return fb


def _display(settings: dict[str, str]) -> dict[str, Any]:
    display: dict[str, Any] = {}
    screen = settings.get("DisplayFeedbackScreenID", "")
    if screen.isdigit():
        display["screen"] = int(screen)
    full = settings.get("DisplayFeedbackFullscreen", "").lower()
    if full in ("true", "false"):
        display["fullscreen"] = full == "true"
    return display


# ---------------------------------------------------------------- writing


def to_toml(conv: Conversion, sources: list[Path]) -> str:
    """The config as TOML text, with comments and the unmapped list at the end.

    A small writer for this config's shape (tables of scalars and lists,
    ``[rois.<name>]`` sub-tables and ``[[protocol.blocks]]``): ``tomli_w`` is
    not a dependency of rtnf, and it writes no comments.
    """
    lines = ["# rtnf session config converted from OpenNFT by `rtnf import-opennft`:"]
    lines += [f"#   {p}" for p in sources]
    lines.append("# Check it with `rtnf check` before a session.")
    for name, table in conv.config.items():
        lines += _table(name, table, conv.comments)
    if conv.unmapped:
        lines += ["", "# Not carried over from OpenNFT, or to check:"] + [f"#   - {u}" for u in conv.unmapped]
    return "\n".join(lines) + "\n"


def _table(name: str, table: dict[str, Any], comments: dict[str, str]) -> list[str]:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict) and not _is_table_list(v)}
    lines: list[str] = []
    if scalars or not any(isinstance(v, dict) for v in table.values()):
        lines += ["", f"[{name}]"]
        for key, value in scalars.items():
            comment = comments.get(f"{name}.{key}")
            lines.append(f"{key} = {_value(value)}" + (f"  # {comment}" if comment else ""))
    for key, value in table.items():
        if isinstance(value, dict):
            lines += _table(f"{name}.{key}", value, comments)
        elif _is_table_list(value) or (isinstance(value, list) and not value and key == "blocks"):
            if comments.get(f"{name}.{key}"):
                lines += ["", f"# {comments[f'{name}.{key}']}"]
            for item in value:
                lines.append(f"[[{name}.{key}]]")
                lines += [f"{k} = {_value(v)}" for k, v in item.items()]
    return lines


def _is_table_list(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


# ---------------------------------------------------------------- the command


def import_opennft(settings_path: Path, protocol_path: Path | None = None) -> tuple[str, Conversion]:
    """Read an OpenNFT settings file (and its protocol) and return the TOML text and the conversion.

    Without ``protocol_path`` the settings' ``StimulationProtocol`` is used,
    or a file of the same name beside the settings file (OpenNFT configs
    often carry the Windows path of another machine).
    """
    settings_path = Path(settings_path)
    settings = read_settings(settings_path)
    if protocol_path is None:
        named = settings.get("StimulationProtocol", "")
        if not named:
            raise OpenNFTError(
                f"{settings_path}: no StimulationProtocol; pass the protocol JSON as the second argument"
            )
        candidates = [Path(named), settings_path.parent / named, settings_path.parent / PureWindowsPath(named).name]
        protocol_path = next((p for p in candidates if p.is_file()), candidates[0])
    protocol = read_protocol(Path(protocol_path))
    try:
        conv = convert(settings, protocol, settings_path.resolve().parent)
    except OpenNFTError as exc:
        raise OpenNFTError(f"{settings_path}: {exc}") from None
    return to_toml(conv, [settings_path, Path(protocol_path)]), conv
