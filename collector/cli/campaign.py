"""``vigil-collector campaign``: create, sign and publish operator campaigns.

    vigil-collector campaign keygen --key /etc/vigil/operator.key
    vigil-collector campaign create --key ... --cc IR --url https://news.example/ \\
        --urls-file extra.txt --interval 300 --start 2026-06-18T00:00:00Z --hours 48 \\
        --note "election day" --out election.json
    vigil-collector campaign publish election.json --host broker.example --port 8885 \\
        --username vigil-collector --password-file /etc/vigil/mqtt-collector.pass --ca-file ca.pem
    vigil-collector campaign cancel --key ... --cc IR --campaign-id <id> --out cancel.json
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from agent.errors import UsageError
from agent.wire.commands import Audience, format_time
from collector.campaigns import (
    BrokerTarget,
    CampaignSpec,
    build_campaign,
    build_cancel,
    create_operator_key,
    load_operator_key,
    public_key_b64,
    publish_command,
    read_signed,
    sign_command,
    topic_for,
)


def _parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"bad time {value!r}: use e.g. 2026-06-18T00:00:00Z") from None
    if t.tzinfo is None:
        raise UsageError(f"time {value!r} needs a zone: end it with Z for UTC")
    return t.astimezone(UTC)


def _audience(probe: str | None, cc: str | None) -> Audience:
    if (probe is None) == (cc is None):
        raise UsageError("name exactly one audience: --probe PROBE_ID or --cc COUNTRY")
    return Audience(probe_id=probe) if probe else Audience(cc=(cc or "").upper())


def _read_urls(urls: tuple[str, ...], urls_file: Path | None) -> list[tuple[str, str | None]]:
    """URLs from flags and a file (one per line, optional ``,CATEGORY``; # comments)."""
    out: list[tuple[str, str | None]] = [(u, None) for u in urls]
    if urls_file is not None:
        try:
            lines = urls_file.read_text("utf-8").splitlines()
        except OSError as exc:
            raise UsageError(f"cannot read {urls_file}: {exc.strerror}") from None
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            url, _, cat = line.partition(",")
            out.append((url.strip(), cat.strip() or None))
    unique: dict[str, str | None] = {}
    for u, c in out:
        unique.setdefault(u, c)
    return list(unique.items())


def _emit(envelope: bytes, out: Path | None) -> None:
    if out is None:
        sys.stdout.buffer.write(envelope + b"\n")
    else:
        out.write_bytes(envelope + b"\n")


@click.group()
def campaign() -> None:
    """Operator campaigns: signed extra tests for a probe or a country."""


@campaign.command()
@click.option("--key", "key_path", type=click.Path(path_type=Path), required=True)
def keygen(key_path: Path) -> None:
    """Create the operator signing key; print the public key for agents' config."""
    key = create_operator_key(key_path)
    click.echo(f"operator key written to {key_path} (keep it offline if you can)")
    click.echo("add this to every agent's config:\n")
    click.echo(f'[campaigns]\noperator_keys = ["{public_key_b64(key)}"]')


@campaign.command()
@click.option("--key", "key_path", type=click.Path(path_type=Path), required=True)
@click.option("--probe", help="one probe id")
@click.option("--cc", help="every probe in this country (two letters)")
@click.option("--url", "urls", multiple=True, help="a URL to test (repeatable)")
@click.option("--urls-file", type=click.Path(path_type=Path), help="file of URL[,CATEGORY] lines")
@click.option("--test", "test_name", default="web_connectivity", show_default=True)
@click.option("--also", "extra", multiple=True, help="another test without inputs (throttling...)")
@click.option("--interval", type=float, default=600.0, show_default=True, help="seconds")
@click.option("--start", help="RFC 3339 time (default: now)")
@click.option("--end", help="RFC 3339 time (default: start + --hours)")
@click.option("--hours", type=float, default=24.0, show_default=True)
@click.option("--note", default="")
@click.option("--out", type=click.Path(path_type=Path), help="write here (default: stdout)")
def create(
    key_path: Path,
    probe: str | None,
    cc: str | None,
    urls: tuple[str, ...],
    urls_file: Path | None,
    test_name: str,
    extra: tuple[str, ...],
    interval: float,
    start: str | None,
    end: str | None,
    hours: float,
    note: str,
    out: Path | None,
) -> None:
    """Build and sign a campaign (publish it with `campaign publish`)."""
    now = datetime.now(UTC).replace(microsecond=0)
    t0 = _parse_time(start) or now
    t1 = _parse_time(end) or t0 + timedelta(hours=hours)
    url_list = _read_urls(urls, urls_file)
    if test_name == "web_connectivity" and not url_list:
        raise UsageError("a web_connectivity campaign needs --url or --urls-file")
    spec = CampaignSpec(
        audience=_audience(probe, cc),
        urls=url_list,
        interval=interval,
        test_name=test_name,
        start=t0,
        end=t1,
        note=note,
        extra_tests=extra,
    )
    key = load_operator_key(key_path)
    cmd = build_campaign(spec, now)
    _emit(sign_command(cmd, key), out)
    click.echo(
        f"campaign {cmd.command_id}: {len(url_list)} URL(s) every {interval:.0f}s, "
        f"{format_time(cmd.not_before)} .. {format_time(cmd.not_after)}, "
        f"topic {topic_for(cmd.audience)}",
        err=True,
    )


@campaign.command()
@click.option("--key", "key_path", type=click.Path(path_type=Path), required=True)
@click.option("--probe")
@click.option("--cc")
@click.option("--campaign-id", required=True)
@click.option("--hours", type=float, default=24.0 * 7, show_default=True, help="validity")
@click.option("--out", type=click.Path(path_type=Path))
def cancel(
    key_path: Path,
    probe: str | None,
    cc: str | None,
    campaign_id: str,
    hours: float,
    out: Path | None,
) -> None:
    """Sign a command that stops a campaign early."""
    now = datetime.now(UTC).replace(microsecond=0)
    cmd = build_cancel(_audience(probe, cc), campaign_id, now, timedelta(hours=hours))
    _emit(sign_command(cmd, load_operator_key(key_path)), out)
    click.echo(f"cancel {cmd.command_id} for campaign {campaign_id}", err=True)


@campaign.command()
@click.argument("signed_file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8885, show_default=True, help="collector listener")
@click.option("--username", default="vigil-collector", show_default=True)
@click.option("--password-file", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--ca-file", type=click.Path(path_type=Path, exists=True))
@click.option("--timeout", type=float, default=15.0, show_default=True)
def publish(
    signed_file: Path,
    host: str,
    port: int,
    username: str,
    password_file: Path,
    ca_file: Path | None,
    timeout: float,
) -> None:
    """Publish a signed command (retained, QoS 1) on its probe's or country's topic."""
    envelope = signed_file.read_bytes().strip()
    cmd = read_signed(envelope)
    if cmd.not_after <= datetime.now(UTC):
        raise UsageError(f"command {cmd.command_id} expired at {format_time(cmd.not_after)}")
    topic = topic_for(cmd.audience)
    target = BrokerTarget(
        host=host,
        port=port,
        username=username,
        password=password_file.read_text("utf-8").strip(),
        ca_file=ca_file,
        timeout=timeout,
    )
    asyncio.run(publish_command(envelope, topic, target))
    click.echo(f"published {cmd.kind} {cmd.command_id} on {topic}")
