"""The wire is the only part of rtnf the screen and clients load; the core knows no screen.

Issue 14: ``stimulus`` imports nothing of rtnf outside ``rtnf.wire``, the modules
of ``rtnf.wire`` import nothing else of rtnf, and no module of ``rtnf`` imports
``stimulus`` (the demo starts the screen as a process).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REPORT = "import sys, json; print(json.dumps(sorted(m for m in sys.modules if m == 'rtnf' or m.startswith('rtnf.'))))"


def _rtnf_modules(code: str, prefix: list[str] | None = None) -> list[str]:
    """The rtnf modules loaded by ``python -c code`` in a fresh interpreter."""
    res = subprocess.run([*(prefix or []), sys.executable, "-c", f"{code}\n{REPORT}"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def _outside_wire(modules: list[str]) -> list[str]:
    return [m for m in modules if m not in ("rtnf", "rtnf.wire") and not m.startswith("rtnf.wire.")]


def test_screen_modules_without_psychopy_load_only_the_wire():
    """The screen's modules that need no display: only rtnf and rtnf.wire.* are loaded (and rtnf.wire is)."""
    modules = _rtnf_modules("import stimulus.cli, stimulus.link, stimulus.scene, stimulus.geometry, stimulus.timing")
    assert "rtnf.wire.topics" in modules and "rtnf.wire.messages" in modules  # the check sees the wire
    assert _outside_wire(modules) == [], modules


def _display_prefix() -> list[str] | None:
    """[] with a display, the xvfb-run prefix without one, None when PsychoPy cannot open a window here."""
    if importlib.util.find_spec("psychopy") is None:
        return None
    if os.environ.get("DISPLAY"):
        return []
    if shutil.which("xvfb-run") is None:
        return None
    return ["xvfb-run", "-a", "-s", "-screen 0 640x480x24"]


def test_whole_screen_with_psychopy_loads_only_the_wire():
    """``import stimulus.cli, stimulus.link, stimulus.scene, stimulus.screen, stimulus.geometry`` (PsychoPy's window)."""
    prefix = _display_prefix()
    if prefix is None:
        pytest.skip("PsychoPy is not installed, or there is no display and no xvfb-run")
    modules = _rtnf_modules("import stimulus.cli, stimulus.link, stimulus.scene, stimulus.screen, stimulus.geometry",
                            prefix)
    assert "rtnf.wire.topics" in modules
    assert _outside_wire(modules) == [], modules


def test_every_module_of_the_wire_loads_no_other_rtnf_module():
    code = ("import importlib, pkgutil, rtnf.wire\n"
            "names = [m.name for m in pkgutil.iter_modules(rtnf.wire.__path__)]\n"
            "assert {'messages', 'topics', 'schema', 'subscription', 'pubsocket', 'keys', 'display'} <= set(names), names\n"
            "for name in names: importlib.import_module('rtnf.wire.' + name)")
    modules = _rtnf_modules(code)
    assert "rtnf.wire.schema" in modules and "rtnf.wire.keys" in modules
    assert _outside_wire(modules) == [], modules


def _imports(path: Path) -> list[tuple[int, str]]:
    """Absolute names of every import in ``path`` (relative imports resolved), with their line."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((node.lineno, name))
    return out


def test_sources_import_across_the_boundary_only_through_the_wire():
    """Also the lazy imports inside functions, which the import checks above cannot see."""
    bad = []
    for path in sorted((ROOT / "stimulus").rglob("*.py")):
        for line, name in _imports(path):
            if (name == "rtnf" or name.startswith("rtnf.")) and not (name == "rtnf.wire" or name.startswith("rtnf.wire.")):
                bad.append(f"{path.relative_to(ROOT)}:{line}: {name}")
    for path in sorted((ROOT / "rtnf" / "wire").rglob("*.py")):
        for line, name in _imports(path):
            if (name == "rtnf" or name.startswith("rtnf.")) and not name.startswith("rtnf.wire"):
                bad.append(f"{path.relative_to(ROOT)}:{line}: {name}")
    for path in sorted((ROOT / "rtnf").rglob("*.py")):  # the core knows no screen
        for line, name in _imports(path):
            if name == "stimulus" or name.startswith("stimulus."):
                bad.append(f"{path.relative_to(ROOT)}:{line}: {name}")
    assert bad == []


def test_demo_starts_the_screen_as_a_process_without_importing_it(monkeypatch, tmp_path):
    from rtnf.apps import demo

    monkeypatch.setenv("DISPLAY", ":99")
    cmd = demo.screen_command("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", tmp_path)
    assert cmd[:3] == [sys.executable, "-m", "stimulus"]
    monkeypatch.delenv("DISPLAY")
    monkeypatch.setattr(demo.shutil, "which", lambda name: "/usr/bin/xvfb-run")
    assert demo.screen_command("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", tmp_path)[:5] == [
        "xvfb-run", "-a", "-s", "-screen 0 1280x1024x24", sys.executable]
    monkeypatch.setattr(demo.shutil, "which", lambda name: None)
    with pytest.raises(demo.DemoError, match="xvfb"):
        demo.screen_command("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", tmp_path)
