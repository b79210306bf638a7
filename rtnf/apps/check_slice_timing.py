"""What ``rtnf check`` says about slice timing: on or off, the slice times the run will use and the reference time.

The slice times are chosen by the run's own rule
(:func:`rtnf.analysis.slicetiming_source.choose_slice_times`): the config's
list or order, else the first volume's header. Without a volume of the series
(``rtnf check --volume FILE``) only what the config says is known; with one,
the times are read from it as the run will read them from its first volume,
and a series the run would stop on (no slice times, the wrong number) is the
check's config error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from rtnf.analysis.slicetiming import METHOD_POINTS, SliceTimer
from rtnf.analysis.slicetiming_source import choose_slice_times
from rtnf.config import Config, SliceTimingConfig
from rtnf.scanner.volume import Volume


def read_series_volume(paths: Sequence[Path], configured_format: str, slices_per_volume: int | None = None) -> Volume:
    """One volume of the series, read as the run reads its files (the config's ``scanner.format``).

    Parameters
    ----------
    paths : sequence of Path
        One file (NIfTI, Siemens mosaic, enhanced DICOM, PAR), or every slice file of one volume.
    configured_format : str
        ``scanner.format`` ("auto" guesses from the file name, as the run does).
    slices_per_volume : int, optional
        ``scanner.slices_per_volume``: slice files per volume when the headers do not say.

    Raises
    ------
    rtnf.scanner.nifti.VolumeReadError
        The files hold no volume the run could read, more than one volume's files, or some of a
        volume's slice files (the message names the file).
    OSError
        A file cannot be opened.
    """
    from rtnf.scanner.export import file_format
    from rtnf.scanner.nifti import VolumeReadError

    paths = [Path(p) for p in paths]
    if file_format(paths[0], configured_format) == "nifti":
        from rtnf.scanner.nifti import read_nifti

        if len(paths) > 1:
            raise VolumeReadError(f"{paths[1]}: a NIfTI file holds the whole volume; give --volume one file")
        return read_nifti(paths[0])
    from rtnf.scanner.dicom import read_volume

    _check_one_whole_volume(paths, slices_per_volume)
    return read_volume(paths)


def _check_one_whole_volume(paths: list[Path], slices_per_volume: int | None) -> None:
    """Refuse files of several volumes, or some of a volume's slice files: the slice count would be wrong.

    The files are probed as the run probes them (:func:`rtnf.scanner.dicom.probe`): slice files must
    share series and volume number, and there must be as many as the volume has slices
    (``scanner.slices_per_volume``, else ImagesInAcquisition, GE LocationsInAcquisition or Philips
    NumberOfSlicesMR; without any, a single slice file is refused: one slice is no EPI volume).
    """
    from rtnf.scanner.dicom import probe
    from rtnf.scanner.nifti import VolumeReadError

    infos = [probe(p) for p in paths]
    slices = [i for i in infos if i.kind == "slice"]
    if not slices:
        if len(paths) > 1:
            raise VolumeReadError(f"{paths[1]}: a {infos[0].kind} file holds the whole volume; give --volume one file")
        return
    volumes = {(i.series_uid, i.volume_number) for i in slices}
    if len(slices) < len(infos) or len(volumes) > 1:
        raise VolumeReadError(f"{paths[0]}: the files given are of {max(len(volumes), 2)} volumes or kinds; give all "
                              "the slice files of one volume to --volume")
    expected = slices_per_volume or slices[0].n_slices
    if expected is not None and expected != len(paths):
        raise VolumeReadError(f"{paths[0]}: {len(paths)} of the {expected} slice files of a volume; give all the "
                              "slice files of one volume to --volume")
    if expected is None and len(paths) == 1:
        raise VolumeReadError(f"{paths[0]}: a single slice file; give all the slice files of one volume to --volume")


def header_tr_warning(paths: Sequence[Path], tr_s: float) -> str | None:
    """A warning when the volume's own repetition time differs from ``scanner.tr_s`` (s), else None.

    DICOM ``RepetitionTime`` (ms; an enhanced file's shared timing group), or a 4D NIfTI's time step in
    seconds; nothing when the header has none. Slice timing weighs its interpolation with the config's TR.
    """
    tr = _header_tr_s(Path(paths[0]))
    if tr is None or abs(tr - tr_s) <= 1e-3 * max(tr, tr_s):
        return None
    return (f"{Path(paths[0]).name} says its repetition time is {tr:g} s, scanner.tr_s is {tr_s:g} s: the run "
            "(its timing, slice-timing interpolation, protocol) uses scanner.tr_s")


def _header_tr_s(path: Path) -> float | None:
    """The repetition time the file's header gives, in seconds, or None (none, or unreadable)."""
    if path.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        try:
            hdr = nib.load(path).header
            zooms = hdr.get_zooms()
            unit = hdr.get_xyzt_units()[1]
        except Exception:  # noqa: BLE001 - an unreadable header gives no TR; reading the volume says why
            return None
        if len(zooms) < 4 or not zooms[3] > 0:
            return None
        return float(zooms[3]) / {"msec": 1e3, "usec": 1e6}.get(unit, 1.0)
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ms = ds.get("RepetitionTime")
        if ms is None and "SharedFunctionalGroupsSequence" in ds:
            timing = ds.SharedFunctionalGroupsSequence[0].get("MRTimingAndRelatedParametersSequence")
            ms = timing[0].get("RepetitionTime") if timing else None
        return float(ms) / 1000.0 if ms is not None and float(ms) > 0 else None
    except Exception:  # noqa: BLE001 - as above
        return None


def printable(text: str) -> str:
    """``text`` on one line without control characters (a file name with a newline or an escape sequence would
    break the line or drive the operator's terminal): each such character becomes ``?``."""
    return "".join(c if c.isprintable() else "?" for c in text)


def seconds(t: float) -> str:
    """``t`` seconds to the microsecond, without trailing zeros (``1.0575``, ``0``)."""
    return f"{t:.6f}".rstrip("0").rstrip(".")


def describe_times(times_s: Sequence[float]) -> str:
    """``N slices, D distinct times from A to B s: t0, t1, ...`` (slice index order)."""
    distinct = len({round(t, 6) for t in times_s})
    return (f"{len(times_s)} slices, {distinct} distinct time{'' if distinct == 1 else 's'} from "
            f"{seconds(min(times_s))} to {seconds(max(times_s))} s, by slice index: "
            f"{', '.join(seconds(t) for t in times_s)}")


def slice_timing_report(cfg: Config, volume: Volume | None) -> tuple[list[str], list[str]]:
    """The check's lines on slice timing, and its warnings.

    Parameters
    ----------
    cfg : Config
    volume : Volume, optional
        A volume of the series (its header's slice times, its slice count); None: the config only.

    Returns
    -------
    lines : list of str
        ``slice timing: ...`` (on or off, method, reference time) and ``slice times: ...`` (how many, how
        many distinct, their range and values in seconds from the volume's start, and their source).
    warnings : list of str
        Configured slice times that differ from the volume's header.

    Raises
    ------
    ConfigError
        Slice timing on and the volume shows the run would stop at its first volume.
    """
    st = cfg.slice_timing
    if not st.enabled:
        lines = ["slice timing: off (slice_timing.enabled = false)"]
        if volume is not None:
            header = volume.slice_times_s
            found = ("none (no slice times in its header)" if header is None
                     else f"{describe_times(header)} (along axis {volume.slice_axis})")
            lines.append(f"slice times in the header of {volume.path.name}: {found}")
        return lines, []
    if volume is None:
        return _from_config(st), []
    return _from_volume(st, cfg.scanner.tr_s, volume)


def _method(st: SliceTimingConfig) -> str:
    return f"{st.method} interpolation through the last {METHOD_POINTS[st.method]} volumes"


def _from_volume(st: SliceTimingConfig, tr_s: float, volume: Volume) -> tuple[list[str], list[str]]:
    """Slice timing on, with a volume of the series: the times and reference time the run will use."""
    chosen = choose_slice_times(st, tr_s, volume)
    timer = SliceTimer(chosen.times_s, tr_s, axis=chosen.axis,
                       reference_s=None if st.reference == "first" else float(st.reference), method=st.method)
    note = " (the earliest slice's time)" if st.reference == "first" else ""
    lines = [f"slice timing: on, {_method(st)}; every slice moved to {seconds(timer.reference_s)} s{note}",
             f"slice times from {chosen.source}: {describe_times(chosen.times_s)} (along axis {chosen.axis})"]
    warnings = [] if chosen.header_difference_s is None else [
        f"{chosen.source} differ from the slice times in the header of {volume.path.name} by up to "
        f"{seconds(chosen.header_difference_s)} s; the run uses {chosen.source}"]
    return lines, warnings


def _from_config(st: SliceTimingConfig) -> list[str]:
    """Slice timing on, without a volume: what the config alone says (the header's times are not known yet)."""
    if st.reference != "first":
        target = f"{seconds(float(st.reference))} s"
    else:  # a named order starts at 0; the header's earliest time is known at the first volume
        earliest = min(st.slice_times_s) if st.slice_times_s is not None else 0.0 if st.order is not None else None
        target = ("the earliest slice's time" if earliest is None
                  else f"{seconds(earliest)} s (the earliest slice's time)")
    lines = [f"slice timing: on, {_method(st)}; every slice moved to {target}"]
    if st.slice_times_s is not None:
        lines.append(f"slice times from slice_timing.slice_times_s: {describe_times(st.slice_times_s)} "
                     "(their count is checked against the first volume's slices)")
    elif st.order is not None:
        lines.append(f"slice times from slice_timing.order ({st.order}): TR / slices apart, the slices counted "
                     "at the first volume (--volume FILE shows the times)")
    else:
        lines.append("slice times from the first volume's header (--volume FILE reads them from a volume of "
                     "the series now)")
    return lines
