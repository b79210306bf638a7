"""A shortened soak: random faults over 240 volumes, nothing lost or doubled (the full one is `rtnf bench soak`)."""

from __future__ import annotations

import argparse

from rtnf.apps.bench import soak


def test_short_soak_loses_nothing(tmp_path):
    parser = argparse.ArgumentParser()
    soak.add_arguments(parser)
    # Speed 2, not 4: at 4 a duplicate export is rewritten 0.125 s after its first copy, and a run that a loaded
    # machine kept from reading the first copy that long read it half rewritten and recorded it missing (the
    # missing count then exceeded the dropped count: a local CI run with two busy loops beside it).
    args = parser.parse_args(["--volumes", "240", "--speed", "2", "--fault-rate", "0.03", "--seed", "1",
                              "--folder", str(tmp_path)])
    result = soak.run(args)
    assert sum(len(v) for v in result["faults"].values()) >= 10  # faults were really injected
    assert result["checks"]["every_volume_once_in_order"], result["text"]
    assert result["checks"]["missing_equals_dropped"], result["text"]
