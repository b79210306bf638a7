"""Fixtures and hooks shared by rtnf's tests (pytest loads this file itself: never import it).

Paths, skip markers, the session-config builder and other helpers that tests
import live in :mod:`tests.helpers`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

# liblsl's configuration for every test and every process a test starts (they inherit the environment):
# discovery in the "machine" scope, 127.0.0.1 as the only multicast/broadcast address and known peer, IPv6 off
# and a session id of its own, so other LSL streams on the machine are invisible and no packet leaves the loopback
# interface. Set before any test runs: liblsl reads its configuration once per process, at its first use, whichever
# test that is.
LSL_API_CFG = """\
[ports]
IPv6 = disable

[multicast]
ResolveScope = machine
MachineAddresses = {{127.0.0.1}}
AddressesOverride = {{127.0.0.1}}
TTLOverride = 0
ListenAddress = 127.0.0.1

[lab]
KnownPeers = {{127.0.0.1}}
SessionID = {session}

[log]
level = -2
"""


def pytest_configure(config) -> None:
    folder = Path(tempfile.mkdtemp(prefix="rtnf-test-lsl-"))
    (folder / "lsl_api.cfg").write_text(LSL_API_CFG.format(session=f"rtnf-test-{uuid.uuid4().hex[:12]}"))
    config.rtnf_lsl_folder = folder
    os.environ["LSLAPICFG"] = str(folder / "lsl_api.cfg")


def pytest_unconfigure(config) -> None:
    folder = getattr(config, "rtnf_lsl_folder", None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
