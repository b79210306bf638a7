"""What the tests share: paths, skip markers, one session config with overrides, waiting on a condition.

Fixtures and pytest hooks live in ``tests/conftest.py``; everything else a
test imports from here (``from tests.helpers import make_config``).

Session configs are built from one default, :data:`DEFAULT_CONFIG`, with
dotted overrides checked against :class:`rtnf.config.Config`, so a typo in a
test fails loudly instead of silently testing the default::

    cfg_path = make_config(tmp_path, {"scanner.n_volumes": 24, "protocol.pattern": pattern(rest=6, regulate=6),
                                      "feedback.scaling": "fixed", "rois.ins.mask": "ins.nii.gz"})
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "config"
SHARED_DATA = ROOT.parent / "shared" / "data"


def requires_shared_data(sub: str = "") -> pytest.MarkDecorator:
    """Skip with a clear reason when ../shared/data (real scanner files) is absent."""
    path = SHARED_DATA / sub
    return pytest.mark.skipif(
        not path.exists(), reason=f"real scanner data not found at {path} (present beside the checkout in CI only)"
    )


def requires_display() -> pytest.MarkDecorator:
    """Skip when neither a display nor xvfb-run is available, or PsychoPy is missing."""
    import importlib.util
    import os

    if importlib.util.find_spec("psychopy") is None:
        return pytest.mark.skip(reason="PsychoPy is not installed (pip install -e '.[display]')")
    if not os.environ.get("DISPLAY") and shutil.which("xvfb-run") is None:
        return pytest.mark.skip(reason="no display and no xvfb-run (apt-get install xvfb xauth)")
    return pytest.mark.display


def wait_until(predicate: Callable[[], Any], timeout_s: float, interval_s: float = 0.02) -> Any:
    """Call ``predicate`` every ``interval_s`` until it returns something true or ``timeout_s`` has passed.

    Returns its last value: true when the condition was met (``assert wait_until(...)``), false on timeout.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval_s)


def drain(listener: Any, quiet_s: float = 0.5) -> None:
    """Read what a :class:`rtnf.apps.demo.Listener` still has coming, until ``quiet_s`` seconds pass without a message.

    For after the publishers exited: one ``listener.poll`` returns the first batch only, and on a loaded machine
    a run's last messages (its alarms, the run's end) may still be on their way in the listener's I/O thread.
    """
    while listener.poll(quiet_s):
        pass


# ---------------------------------------------------------------- session configs


def pattern(*, repeat: int = 2, onset: float | None = None, **steps: float) -> dict[str, Any]:
    """A ``protocol.pattern``: ``pattern(rest=6, regulate=6)`` is rest 6, regulate 6, twice (durations in order)."""
    out: dict[str, Any] = {"steps": [{"condition": c, "duration": d} for c, d in steps.items()], "repeat": repeat}
    if onset is not None:
        out = {"onset": onset, **out}
    return out


DEFAULT_CONFIG: dict[str, Any] = {
    "session": {"subject": "01", "task": "test"},
    "scanner": {"export_dir": "export", "tr_s": 2.0, "n_volumes": 42, "dummy_volumes": 2},
    "protocol": {"baseline": "rest", "pattern": pattern(rest=10, regulate=10)},
    "rois": {"acc": {"center_mm": [0.0, 30.0, 15.0], "radius_mm": 8.0}},
    "feedback": {"roi": "acc"},
    "output": {"dir": "out"},
}
"""The one default session config of the tests (paths relative to the config file's folder)."""


def config_dict(overrides: Mapping[str, Any] | None = None, unknown_keys: Mapping[str, Any] | None = None) -> dict:
    """:data:`DEFAULT_CONFIG` with dotted ``overrides`` applied (a value of None removes the key).

    Every key of ``overrides`` (and of any table given as a value) must be one
    :class:`rtnf.config.Config` defines; ``unknown_keys`` are set unchecked,
    for the tests of the loader's own message about unknown keys.
    """
    data = copy.deepcopy(DEFAULT_CONFIG)
    for key, value in (overrides or {}).items():
        _check_key(key, value)
        _set_dotted(data, key, value)
    for key, value in (unknown_keys or {}).items():
        _set_dotted(data, key, value)
    return data


def config_text(overrides: Mapping[str, Any] | None = None, unknown_keys: Mapping[str, Any] | None = None) -> str:
    """The TOML text of :func:`config_dict`."""
    return toml_text(config_dict(overrides, unknown_keys))


def make_config(folder: Path, overrides: Mapping[str, Any] | None = None, *, name: str = "session.toml",
                unknown_keys: Mapping[str, Any] | None = None) -> Path:
    """Write :func:`config_text` to ``folder / name`` and return its path (load it with ``load_config``)."""
    path = Path(folder) / name
    path.write_text(config_text(overrides, unknown_keys), encoding="utf-8")
    return path


def _set_dotted(data: dict, key: str, value: Any) -> None:
    *tables, last = key.split(".")
    for part in tables:
        data = data.setdefault(part, {})
    if value is None:
        data.pop(last, None)
    else:
        data[last] = copy.deepcopy(value)


def _schema(annotation: Any) -> Any:
    """The pydantic model, ``dict`` or ``list`` (with its item type) behind a field's type; None for a value."""
    from pydantic import BaseModel

    origin = get_origin(annotation)
    if origin is Annotated:
        return _schema(get_args(annotation)[0])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if origin in (dict, list):
        return origin, get_args(annotation)[-1]
    if origin in (Union, types.UnionType):
        return next((s for s in map(_schema, get_args(annotation)) if s is not None), None)
    return None


def _check_key(key: str, value: Any) -> None:
    from rtnf.config import Config

    annotation: Any = Config
    parts = key.split(".")
    for i, part in enumerate(parts):
        annotation = _child(annotation, part, ".".join(parts[:i]), key)
    _check_value(annotation, value, key)


def _child(annotation: Any, part: str, where: str, key: str) -> Any:
    schema = _schema(annotation)
    if isinstance(schema, type):
        if part not in schema.model_fields:
            raise ValueError(f"unknown config key {key!r}: {where or 'the config'} has no {part!r} "
                             f"(rtnf.config allows: {', '.join(schema.model_fields)})")
        return schema.model_fields[part].annotation
    if schema is not None and schema[0] is dict:
        return schema[1]
    raise ValueError(f"unknown config key {key!r}: {where} is a value, not a table")


def _check_value(annotation: Any, value: Any, key: str) -> None:
    schema = _schema(annotation)
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_value(_child(annotation, k, key, f"{key}.{k}"), v, f"{key}.{k}")
    elif isinstance(value, list) and isinstance(schema, tuple) and schema[0] is list:
        for item in value:
            _check_value(schema[1], item, key)


def toml_text(data: Mapping[str, Any]) -> str:
    """TOML of nested dicts (tables; inline inside lists), lists, strings, paths, numbers and booleans."""
    lines: list[str] = []
    _toml_table(data, [], lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_table(table: Mapping[str, Any], path: list[str], lines: list[str]) -> None:
    values = {k: v for k, v in table.items() if not isinstance(v, Mapping)}
    if path and (values or not table):
        lines += ["", f"[{'.'.join(path)}]"]
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in values.items()]
    for k, v in table.items():
        if isinstance(v, Mapping):
            _toml_table(v, path + [_toml_key(k)], lines)


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() and key.isascii() else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_toml_value, value)) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def replay_func_dir(cfg, label: str = "replay") -> Path:
    """Folder of a run's files written by ``rtnf replay`` (its own derivatives folder ``<output.dir>/<label>``)."""
    from rtnf.run.record import func_dir

    return Path(cfg.output.dir) / label / Path(func_dir(cfg)).relative_to(cfg.output.dir)


def run_processes(
    tmp_path: Path,
    config: Mapping[str, Any] | str,
    with_screen: bool = False,
    speed: float = 4.0,
    sim_args: list[str] | None = None,
    silent_rois: list[str] | None = None,
    mode: str = "reopen",
    timeout_s: float = 240.0,
    spec_changes: Mapping[str, Any] | None = None,
):
    """Run scanner-sim, `rtnf run` (and the screen) as real processes; return (cfg, listener).

    ``spec_changes``: top-level keys set in the simulator's run spec (e.g. ``{"multiecho": {}}``).

    ``config`` holds the overrides of :data:`DEFAULT_CONFIG` (or a whole TOML
    text), written to ``tmp_path / "session.toml"``. The listener has every
    message rtnf (and the screen) published. The simulator starts only once
    rtnf (and the screen) publish heartbeats.
    """
    import sys

    from rtnf.config import load_config
    from rtnf.apps.demo import Listener, Processes, wait_ready, free_address, screen_command, sim_spec, write_toml

    address, ack_address = free_address(), free_address()
    if isinstance(config, str):
        cfg_path = tmp_path / "session.toml"
        cfg_path.write_text(config, encoding="utf-8")
    else:
        cfg_path = make_config(tmp_path, config)
    cfg = load_config(cfg_path, {"publish.address": address})
    spec = sim_spec(cfg, amplitude_pct=1.5, noise_pct=1.0, seed=3)
    spec["regions"] = [r for r in spec["regions"] if r["name"] not in (silent_rois or [])]
    spec_path = tmp_path / "spec.toml"
    if spec_changes:
        spec.update(copy.deepcopy(dict(spec_changes)))
        spec_path.write_text(toml_text(spec), encoding="utf-8")
    else:
        write_toml(spec, spec_path)
    listener = Listener([address] + ([ack_address] if with_screen else []))
    procs = Processes()
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    try:
        if with_screen:
            procs.start("screen", screen_command(address, ack_address, tmp_path, exit_after_end_s=1.0), logs)
        screen_set = ["--set", f'publish.screen_address="{ack_address}"'] if with_screen else []
        procs.start("rtnf", [sys.executable, "-m", "rtnf", "run", str(cfg_path), "--create-export-dir", "--publish-address", address,
                             *screen_set], logs)
        wait_ready(listener, procs, no_screen=not with_screen)
        procs.start(
            "scanner_sim",
            [sys.executable, "-m", "scanner_sim", "synth", str(spec_path), "--export-dir", str(cfg.scanner.export_dir),
             "--truth-dir", str(tmp_path / "truth"), "--speed", str(speed), "--mode", mode, *(sim_args or [])],
            logs,
        )
        rtnf = procs.procs["rtnf"]
        deadline = time.time() + timeout_s
        while rtnf.poll() is None:
            listener.poll(0.2)
            if time.time() > deadline:
                raise AssertionError("rtnf run did not finish:\n" + (logs / "rtnf.log").read_text()[-3000:])
        assert rtnf.returncode == 0, (logs / "rtnf.log").read_text()
        if with_screen:
            procs.procs["screen"].wait(30)
            assert procs.procs["screen"].returncode == 0, (logs / "screen.log").read_text()
        procs.procs["scanner_sim"].wait(30)
        drain(listener)
    finally:
        listener.close()
        procs.stop_all()
    return cfg, listener


def synthetic_run_4d(path: Path, n_volumes: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Write a synthetic run (scanner_sim, no activation) as one 4D NIfTI; return (data, affine).

    ``data`` has shape (nx, ny, nz, n_volumes), float32; volume 0 is motion-free.
    """
    import nibabel as nib

    from scanner_sim.spec import RunSpec
    from scanner_sim.synth import SyntheticRun

    spec = RunSpec.from_dict({"tr_s": 2.0, "n_volumes": n_volumes, "seed": seed, "noise_pct": 1.0,
                              "blocks": [], "regions": []})
    run = SyntheticRun(spec)
    data = np.stack([run.volume(i) for i in range(n_volumes)], axis=-1).astype(np.float32)
    nib.save(nib.Nifti1Image(data, run.affine), path)
    return data, run.affine
