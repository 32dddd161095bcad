"""``vigil-agent export --format ooni IN.jsonl > OUT.jsonl``: records in OONI's data format.

Input lines are Vigil records (``run --once --output``), DSSE envelopes holding one, or the
collector's export lines (``GET /api/v1/export``: ``{"measurement_id", "probe_id",
"received_at", "envelope"}``).  Payloads are decoded, not verified: verification needs the
probe's key and belongs to the collector (or to docs/researcher-guide.md).  A line that is
not a valid record, or cannot be converted, is reported as ``file:line: reason`` on stderr
and skipped; the others are still written, and the exit code is then 1.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import click

from agent.errors import VigilError, WireError
from agent.export.ooni import ExportError, to_ooni
from agent.wire.envelope import parse_envelope, validate_record

MAX_LINE = 2 * 1024 * 1024


def _record_from_line(line: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"not JSON: {exc}") from None
    if isinstance(obj, dict) and isinstance(obj.get("envelope"), dict):
        obj = obj["envelope"]  # a line of the collector's export
        line = json.dumps(obj).encode()
    if isinstance(obj, dict) and "payloadType" in obj:
        env = parse_envelope(line)
        try:
            obj = json.loads(env.payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise WireError(f"envelope payload is not JSON: {exc}") from None
    validate_record(obj)
    if not isinstance(obj, dict):  # validate_record already requires an object
        raise WireError("not a JSON object")
    return obj


def _lines(fh: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    for number, line in enumerate(fh, start=1):
        if line.strip():
            yield number, line


@click.command("export")
@click.option("--format", "fmt", type=click.Choice(["ooni"]), default="ooni", show_default=True,
              help="Output format (OONI data format, df-000 base keys).")
@click.argument("inputs", nargs=-1, required=True,
                type=click.Path(path_type=Path, dir_okay=False, allow_dash=True))
def export(fmt: str, inputs: tuple[Path, ...]) -> None:
    """Convert Vigil JSONL records to another format on standard output."""
    out = sys.stdout
    bad = 0
    written = 0
    for path in inputs:
        name = "-" if str(path) == "-" else str(path)
        try:
            fh: IO[bytes] = sys.stdin.buffer if name == "-" else open(path, "rb")  # noqa: SIM115
        except OSError as exc:
            raise VigilError(f"cannot read {path}: {exc.strerror}") from None
        try:
            for number, line in _lines(fh):
                if len(line) > MAX_LINE:
                    click.echo(f"{name}:{number}: line longer than {MAX_LINE} bytes", err=True)
                    bad += 1
                    continue
                try:
                    record = _record_from_line(line)
                    text = json.dumps(to_ooni(record), ensure_ascii=False, sort_keys=True)
                except (WireError, ExportError) as exc:
                    click.echo(f"{name}:{number}: {exc}", err=True)
                    bad += 1
                    continue
                except RecursionError:
                    click.echo(f"{name}:{number}: nested too deeply", err=True)
                    bad += 1
                    continue
                out.write(text + "\n")
                written += 1
        finally:
            if fh is not sys.stdin.buffer:
                fh.close()
    out.flush()
    if bad:
        raise VigilError(f"{bad} line(s) skipped as invalid; {written} exported")
