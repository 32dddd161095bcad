"""``vigil-collector probes add|list|revoke``: enrol and revoke probe keys, everywhere.

    vigil-collector probes add <probe_id> <public_key_base64> --note "Tehran, volunteer 12"
    vigil-collector probes list [--json]
    vigil-collector probes revoke <probe_id>

The store comes from ``--store URL``, ``$VIGIL_STORE`` or ``[store] url`` in ``--config``.
``add`` checks that the probe id is the one derived from the key (agent.wire.envelope.probe_id_for),
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
from agent.wire.envelope import probe_id_for
from collector.cli.storeargs import config_option, open_command_store, store_option
from collector.config import load_config
from collector.enrolment import enrol_everywhere, new_broker_password
from collector.revocation import revoke_everywhere
from collector.store import ProbeRecord


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
@store_option
@config_option
def add(probe_id: str, public_key: str, note: str, store_url: str | None,
        config_path: Path | None) -> None:
    """Enrol PROBE_ID with its base64 Ed25519 PUBLIC_KEY (as printed by `vigil-agent init`)
    everywhere: its key in the store, a broker login (password file, broker reloaded) and the
    helper's probes file, as ``[revocation]`` in --config names them.  Prints the probe's
    broker password once."""
    raw = parse_public_key(public_key)
    derived = probe_id_for(raw)
    if derived != probe_id:
        raise UsageError(
            f"probe id {probe_id!r} does not match the key (the key's probe id is {derived})"
        )
    files = load_config(config_path).revocation
    store = open_command_store(store_url, config_path)
    try:
        if store.get_probe(probe_id) is not None:
            raise UsageError(f"probe {probe_id} is already enrolled (see: probes list)")
        # Broker and helper first (each step idempotent): a failure there leaves the store
        # untouched, so the same command can simply be run again.
        password = new_broker_password()
        steps = enrol_everywhere(files, probe_id, raw, password)
        record = store.add_probe(probe_id, raw, note)
    finally:
        store.close()
    click.echo(f"enrolled {record.probe_id}" + (f" ({record.note})" if record.note else ""))
    for line in steps:
        click.echo(line)
    if files.broker_password_file:
        click.echo(f"broker login for the probe: username {probe_id}  password {password}")
        click.echo("(shown once: put it in the probe's [mqtt] password_file)")
    else:
        click.echo("warning: no [revocation] broker_password_file in the config: give the "
                   "probe a broker login by hand", err=True)


@probes.command("list")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@store_option
@config_option
def list_(as_json: bool, store_url: str | None, config_path: Path | None) -> None:
    """List enrolled probes (revoked ones included, marked)."""
    store = open_command_store(store_url, config_path)
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
@store_option
@config_option
def revoke(probe_id: str, store_url: str | None, config_path: Path | None) -> None:
    """Revoke PROBE_ID everywhere: its key in the store (measurements rejected from now on),
    its broker login (removed from the password file, broker reloaded: disconnected) and the
    helper's probes file, as ``[revocation]`` in --config names them."""
    revocation = load_config(config_path).revocation
    store = open_command_store(store_url, config_path)
    try:
        record = store.revoke_probe(probe_id)
    finally:
        store.close()
    when = record.revoked_at.isoformat() if record.revoked_at else "?"
    click.echo(f"revoked {record.probe_id} in the store (since {when})")
    for line in revoke_everywhere(revocation, record.probe_id, record.public_key):
        click.echo(line)
    if not (revocation.broker_password_file and revocation.broker_pid_file):
        click.echo("warning: no [revocation] broker_password_file and broker_pid_file in the "
                   "config: the probe can still log in to the broker", err=True)
