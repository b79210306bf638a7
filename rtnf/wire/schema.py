"""JSON Schema of every topic, generated from the typed messages of :mod:`rtnf.wire.topics`.

``python -m rtnf.wire.schema OUTDIR`` writes one ``<topic>.schema.json`` per
topic (JSON Schema draft 2020-12, ``$id`` ``rtnf.<topic>/1``). The files
shipped in ``docs/wire/`` are made this way, for clients in other languages
(MATLAB, jsPsych, Unity, ...): they describe the JSON frame of each message,
``schema`` and ``run_id`` included. Unknown properties are allowed
everywhere, since receivers ignore fields they do not know.

Imports only the standard library, pydantic and :mod:`rtnf.wire`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .messages import TOPICS, schema_for
from .topics import MAX_RUN_ID, MESSAGE_TYPES

DIALECT = "https://json-schema.org/draft/2020-12/schema"
EXIT_USAGE = 2


def topic_schema(topic: str) -> dict[str, Any]:
    """The JSON Schema of the messages of ``topic``.

    Parameters
    ----------
    topic : str
        One of :data:`rtnf.wire.messages.TOPICS`.

    Returns
    -------
    dict
        A JSON Schema (draft 2020-12) with ``$id`` ``rtnf.<topic>/1``; its
        ``required`` list holds ``schema``, ``run_id`` and the fields without
        which receivers refuse the message.
    """
    cls = MESSAGE_TYPES[topic]
    generated = cls.model_json_schema(mode="validation")
    properties = dict(generated["properties"])
    properties.pop("run_id", None)
    schema_id = schema_for(topic)
    out: dict[str, Any] = {
        "$schema": DIALECT,
        "$id": schema_id,
        "title": f"rtnf {topic} message",
        "description": generated.get("description", ""),
        "type": "object",
        "properties": {
            "schema": {"const": schema_id, "description": "Schema identifier: rtnf.<topic>/<version>."},
            "run_id": {"type": "string", "maxLength": MAX_RUN_ID,
                       "description": "The run the message belongs to; empty outside any run."},
            **properties,
        },
        "required": ["schema", "run_id", *[f for f in generated.get("required", []) if f != "run_id"]],
        "additionalProperties": True,
    }
    if "$defs" in generated:
        out["$defs"] = generated["$defs"]
    return out


def schema_text(topic: str) -> str:
    """:func:`topic_schema` as the text of its file (two-space indent, final newline)."""
    return json.dumps(topic_schema(topic), indent=2, ensure_ascii=False) + "\n"


def write_schemas(folder: Path) -> list[Path]:
    """Write ``<topic>.schema.json`` for every topic into ``folder`` (created if needed); return the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for topic in TOPICS:
        path = folder / f"{topic}.schema.json"
        path.write_text(schema_text(topic), encoding="utf-8")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m rtnf.wire.schema OUTDIR``."""
    parser = argparse.ArgumentParser(
        prog="python -m rtnf.wire.schema",
        description="Write the JSON Schema of every rtnf wire topic (<topic>.schema.json) into OUTDIR.",
    )
    parser.add_argument("outdir", type=Path, help="folder to write into (created if needed)")
    args = parser.parse_args(argv)
    try:
        paths = write_schemas(args.outdir)
    except OSError as exc:
        print(f"rtnf.wire.schema: cannot write into {args.outdir}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
