"""``vigil-agent trace URL``: where on the path is this URL blocked (censor_trace, on demand).

Runs the opt-in ``censor_trace`` test once on the URL, through the same runner as ``run
--once`` (the record is signed, written and, with a broker configured, published), then prints
the conclusion.  Needs the packet process (``[packets]``: the vigil-packets service, or
``spawn = true`` when run as root) and the control helper for the hops' networks.
"""

from __future__ import annotations

import asyncio
import csv
import json
import sys
import tempfile
from pathlib import Path

import click

from agent import config as agent_config
from agent.cli.run import _setup_logging, _with_overrides, default_output, run_once
from agent.errors import UsageError, VigilError


def _print_conclusion(output: Path, url: str) -> None:
    lines = output.read_text(encoding="utf-8").splitlines()
    for line in reversed(lines):
        record = json.loads(line)
        record = record.get("record", record)
        if record.get("test_name") == "censor_trace" and record.get("input") == url:
            keys = record.get("test_keys", {})
            if keys.get("status") != "ok":
                click.echo(f"censor_trace: not available: {keys.get('reason')}")
                return
            click.echo(f"censor_trace {url}: {keys.get('conclusion')}")
            for trace in keys.get("traces", []):
                click.echo(f"  {trace['protocol']} to {trace['address']}:{trace['port']}"
                           f" ({trace['stopped']})")
                for hop in trace["hops"]:
                    trig = ",".join(p["outcome"] for p in hop["trigger"])
                    twin = ",".join(p["outcome"] for p in hop["twin"])
                    asn = f" {hop['asn']}" if hop.get("asn") else ""
                    click.echo(f"    {hop['ttl']:>2}  {hop['address'] or '*':<39}{asn}  "
                               f"trigger={trig} twin={twin}")
            return
    click.echo("censor_trace: no record was written", err=True)


@click.command("trace")
@click.argument("url")
@click.option("--output", type=click.Path(path_type=Path, dir_okay=False),
              help="JSONL output, appended (default: <state>/results/run-<time>.jsonl).")
@click.option("--control-url", help="The control helper, e.g. https://helper.example.org")
@click.option("--ca-file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Extra trust anchors (PEM) for private deployments and labs.")
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False),
              help="Config file (default $VIGIL_CONFIG or /etc/vigil/agent.toml).")
def trace(url: str, output: Path | None, control_url: str | None, ca_file: Path | None,
          config_file: Path | None) -> None:
    """Find the hop at which URL is blocked (TTL-limited trace with a benign twin)."""
    if not url.lower().startswith(("http://", "https://")):
        raise UsageError(f"trace needs an http(s) URL, not {url!r}")
    config = _with_overrides(agent_config.load(config_file), ca_file=ca_file,
                             control_url=control_url, concurrency=None, max_runtime=None,
                             data_budget=None)
    out = output if output is not None else default_output(config.state_dir)
    tty = sys.stderr.isatty()
    _setup_logging(sys.stderr, tty)
    with tempfile.TemporaryDirectory(prefix="vigil-trace-") as tmp:
        listing = Path(tmp) / "trace.csv"
        with listing.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["url", "category_code", "category_description", "date_added", "source",
                        "notes"])
            w.writerow([url, "MISC", "", "", "vigil-agent trace", ""])
        summary = asyncio.run(run_once(config, [listing], ("censor_trace",), out, sys.stderr,
                                       tty))
    if summary.errors or not summary.measured:
        raise VigilError(f"the trace could not run (see log); results in {out}")
    _print_conclusion(out, url)
