"""``vigil-agent init``: create the probe's identity and print its enrolment request.

The key is created once (agent.identity: Ed25519, ``probe.key`` mode 0600 in the state
directory) and never printed nor logged; only the public half and the probe id derived from it
leave the machine, in the one line the operator pastes on the collector::

    vigil-collector probes add <probe_id> <public key, base64>

Running it again prints the same request (the existing key is loaded, never replaced), so a
volunteer who lost the message just runs it again.  ``--json`` prints the same as one JSON
object for scripts (``make run`` enrols an agent on the fly with it).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from agent import identity
from agent.config import load as load_config
from agent.identity import enrolment_command


@click.command()
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the key lives (default: from the config file, $VIGIL_STATE_DIR, "
    "/var/lib/vigil as root, ~/.local/state/vigil otherwise).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Agent config file (only its state_dir is used here).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the request as one JSON object.")
def init(state_dir: Path | None, config_file: Path | None, as_json: bool) -> None:
    """Create this probe's signing key (once) and print its enrolment request."""
    if state_dir is None:
        state_dir = load_config(config_file).state_dir
    ident, created = identity.load_or_create(state_dir)
    command = enrolment_command(ident.probe_id, ident.public_key_b64)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "probe_id": ident.probe_id,
                    "public_key": ident.public_key_b64,
                    "key_file": str(identity.key_path(state_dir)),
                    "created": created,
                    "enrol_command": command,
                }
            )
        )
        return
    what = "created" if created else "already existed, unchanged"
    click.echo(f"Probe key {identity.key_path(state_dir)} ({what}).")
    click.echo(f"Probe id:   {ident.probe_id}")
    click.echo(f"Public key: {ident.public_key_b64}")
    click.echo("")
    click.echo("Enrolment request: send this line to your collector's operator, who runs it:")
    click.echo("")
    click.echo(f"    {command}")
    click.echo("")
    click.echo("The private key never leaves this machine and is never printed. Keep a backup")
    click.echo("of the key file: a new key is a new probe, and needs a new enrolment.")
