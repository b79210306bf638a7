"""A shortened soak: random faults over 240 volumes, nothing lost or doubled (the full one is `rtnf bench soak`)."""

from __future__ import annotations

import argparse

from rtnf.apps.bench import soak


def test_short_soak_loses_nothing(tmp_path):
    parser = argparse.ArgumentParser()
    soak.add_arguments(parser)
    args = parser.parse_args(["--volumes", "240", "--speed", "4", "--fault-rate", "0.03", "--seed", "1",
                              "--folder", str(tmp_path)])
    result = soak.run(args)
    assert sum(len(v) for v in result["faults"].values()) >= 10  # faults were really injected
    assert result["checks"]["every_volume_once_in_order"], result["text"]
    assert result["checks"]["missing_equals_dropped"], result["text"]
