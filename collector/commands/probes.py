"""``vigil-collector probes add|list|revoke``: enrol and revoke probe keys.

    vigil-collector probes add <probe_id> <public_key_base64> --note "Tehran, volunteer 12"
    vigil-collector probes list [--json]
    vigil-collector probes revoke <probe_id>

The store comes from ``--store URL``, ``$VIGIL_STORE`` or ``[store] url`` in ``--config``.
``add`` checks that the probe id is the one derived from the key (agent.wire.probe_id_for),
so a typo or a swapped pair cannot enrol a key under someone else's id.  Revocation is
permanent for that key (a probe that lost its key gets a new identity); the ingest and the
control helper stop accepting it within seconds.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.errors import UsageError
from agent.wire import probe_id_for
from collector.config import STORE_ENV, store_url_from
from collector.store import ProbeRecord, Store, open_store

_store_option = click.option(
    "--store", "store_url", envvar=STORE_ENV, default=None, metavar="URL",
    help="sqlite:///path/to/collector.db or postgresql://user@host/db",
)
_config_option = click.option(
    "--config", "config_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
    help="collector.toml (its [store] url)",
)


def _open(store_url: str | None, config_path: Path | None) -> Store:
    url, cfg = store_url_from(store_url, config_path)
    return open_store(url, busy_timeout_ms=cfg.busy_timeout_ms,
                      connect_timeout=cfg.connect_timeout_s)


def parse_public_key(text: str) -> bytes:
    """Raw 32-byte Ed25519 public key from base64; UsageError with the reason otherwise."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise UsageError("public key is not valid base64") from None
    if len(raw) != 32:
        raise UsageError(f"public key is {len(raw)} bytes; an Ed25519 key is 32")
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise UsageError("not an Ed25519 public key") from None
    return raw


def _as_json(p: ProbeRecord) -> dict[str, object]:
    return {
        "probe_id": p.probe_id,
        "public_key": base64.b64encode(p.public_key).decode("ascii"),
        "note": p.note,
        "enrolled_at": p.enrolled_at.isoformat(),
        "revoked_at": None if p.revoked_at is None else p.revoked_at.isoformat(),
        "revoked": p.revoked,
    }


@click.group()
def probes() -> None:
    """Enrol, list and revoke probe keys."""


@probes.command("add")
@click.argument("probe_id")
@click.argument("public_key")
@click.option("--note", default="", help="free text: where, who, which hardware")
@_store_option
@_config_option
def add(probe_id: str, public_key: str, note: str, store_url: str | None,
        config_path: Path | None) -> None:
    """Enrol PROBE_ID with its base64 Ed25519 PUBLIC_KEY (as printed by `vigil-agent init`)."""
    raw = parse_public_key(public_key)
    derived = probe_id_for(raw)
    if derived != probe_id:
        raise UsageError(
            f"probe id {probe_id!r} does not match the key (the key's probe id is {derived})"
        )
    store = _open(store_url, config_path)
    try:
        record = store.add_probe(probe_id, raw, note)
    finally:
        store.close()
    click.echo(f"enrolled {record.probe_id}" + (f" ({record.note})" if record.note else ""))


@probes.command("list")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@_store_option
@_config_option
def list_(as_json: bool, store_url: str | None, config_path: Path | None) -> None:
    """List enrolled probes (revoked ones included, marked)."""
    store = _open(store_url, config_path)
    try:
        records = store.list_probes()
    finally:
        store.close()
    if as_json:
        for p in records:
            click.echo(json.dumps(_as_json(p), sort_keys=True))
        return
    if not records:
        click.echo("no probes enrolled")
        return
    click.echo(f"{'PROBE ID':<28}{'ENROLLED (UTC)':<22}{'STATE':<10}NOTE")
    for p in records:
        state = "revoked" if p.revoked else "active"
        when = p.enrolled_at.strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"{p.probe_id:<28}{when:<22}{state:<10}{p.note}")


@probes.command("revoke")
@click.argument("probe_id")
@_store_option
@_config_option
def revoke(probe_id: str, store_url: str | None, config_path: Path | None) -> None:
    """Revoke PROBE_ID's key: its messages are rejected (and quarantined) from now on."""
    store = _open(store_url, config_path)
    try:
        record = store.revoke_probe(probe_id)
    finally:
        store.close()
    when = record.revoked_at.isoformat() if record.revoked_at else "?"
    click.echo(f"revoked {record.probe_id} (since {when})")
