"""``vigil-agent``: the probe's command line.

Exit codes: 0 done, 1 runtime failure, 2 usage or configuration error (one-line reason).
Each subcommand lives in ``agent/commands/<name>.py`` and is imported only when used.
"""

from __future__ import annotations

import sys

import click

from agent import __version__
from agent.cli.lazy import LazyGroup
from agent.errors import UsageError, VigilError

COMMANDS = {
    "run": "agent.cli.run:run",
    "lists": "agent.cli.lists:lists",
    "export": "agent.cli.export:export",
    "init": "agent.cli.init:init",
    "status": "agent.cli.status:status",
    "doctor": "agent.cli.doctor:doctor",
    "trace": "agent.cli.trace:trace",
}


@click.group(cls=LazyGroup, lazy=COMMANDS)
@click.version_option(__version__, prog_name="vigil-agent")
def cli() -> None:
    """Vigil probe agent: measure censorship, throttling and shutdowns."""


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="vigil-agent", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("vigil-agent: aborted", err=True)
        return 1
    except click.ClickException as exc:
        click.echo(f"vigil-agent: {exc.format_message()}", err=True)
        return exc.exit_code
    except UsageError as exc:
        click.echo(f"vigil-agent: {exc}", err=True)
        return 2
    except VigilError as exc:
        click.echo(f"vigil-agent: {exc}", err=True)
        return 1
    except click.exceptions.Exit as exc:
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
