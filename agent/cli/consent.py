"""``vigil-agent consent``: what the probe measures, publishes and risks; accept or withdraw.

    vigil-agent consent              print the text and whether it is accepted; on a terminal,
                                     ask when it is not
    vigil-agent consent --accept     record acceptance of the current version (scripted installs:
                                     whoever runs this has read the text)
    vigil-agent consent --withdraw   remove the acceptance: the agent refuses to run again
    vigil-agent consent --check      exit 0 when accepted, 1 when not (for install scripts)
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from agent import consent as agreement
from agent.config import load as load_config


@click.command("consent")
@click.option("--accept", is_flag=True, help="Record that you accept the current text.")
@click.option("--withdraw", is_flag=True, help="Remove your acceptance; the agent stops measuring.")
@click.option("--check", is_flag=True, help="Only say whether it is accepted (exit 0 or 1).")
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False))
def consent(accept: bool, withdraw: bool, check: bool, config_file: Path | None) -> None:
    """Show what the probe measures, publishes and risks; accept or withdraw."""
    if sum((accept, withdraw, check)) > 1:
        raise click.UsageError("--accept, --withdraw and --check exclude each other")
    config = load_config(config_file)
    text = agreement.load_text()
    if check:
        current = agreement.status(config, text)
        click.echo(current.message)
        if not current.accepted:
            raise click.exceptions.Exit(1)
        return
    if withdraw:
        removed = agreement.withdraw(config.state_dir)
        click.echo("consent withdrawn: the agent measures nothing until it is accepted again"
                   if removed else "there was no recorded consent")
        if config.consent_version is not None:
            click.echo("note: the config's [agent] consent_version still accepts it for this "
                       "probe; remove that line too")
        click.echo("a running agent stops within a minute (or: sudo systemctl stop vigil-agent)")
        return
    if accept:
        found = agreement.accept(config.state_dir, text, "command")
        click.echo(f"consent text version {found.version} accepted "
                   f"(recorded in {agreement.record_path(config.state_dir)})")
        return
    current = agreement.status(config, text)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    if current.accepted or not interactive:
        click.echo(text.text)
        click.echo(f"status: {current.message}")
        if not current.accepted:
            click.echo("accept with: vigil-agent consent --accept")
        return
    if agreement.ask(text, click.echo, click.prompt):
        found = agreement.accept(config.state_dir, text, "prompt")
        click.echo(f"consent text version {found.version} accepted")
        return
    click.echo("not accepted: the probe will not measure")
    raise click.exceptions.Exit(1)
