"""``vigil-collector``: the operator's command line.

Exit codes: 0 done, 1 runtime failure, 2 usage or configuration error.
Each subcommand lives in ``collector/cli/<name>.py`` and is imported only when used.
"""

from __future__ import annotations

import sys

import click

from agent.cli.lazy import LazyGroup
from agent.errors import UsageError, VigilError
from collector import __version__

COMMANDS = {
    "helper": "collector.cli.helper:helper",
    "probes": "collector.cli.probes:probes",
    "ingest": "collector.cli.ingest:ingest",
    "query": "collector.cli.query:query",
    "serve": "collector.cli.serve:serve",
    "outages": "collector.cli.outages:outages",
    "throttling-events": "collector.cli.throttling_events:throttling_events",
    "campaign": "collector.cli.campaign:campaign",
    "ipdb": "collector.cli.ipdb:ipdb",
    "report": "collector.cli.report:report",
    "prune": "collector.cli.archive:prune",
    "backup": "collector.cli.archive:backup",
}


@click.group(cls=LazyGroup, lazy=COMMANDS)
@click.version_option(__version__, prog_name="vigil-collector")
def cli() -> None:
    """Vigil collector: verify, store and serve probe measurements."""


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="vigil-collector", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("vigil-collector: aborted", err=True)
        return 1
    except click.ClickException as exc:
        click.echo(f"vigil-collector: {exc.format_message()}", err=True)
        return exc.exit_code
    except UsageError as exc:
        click.echo(f"vigil-collector: {exc}", err=True)
        return 2
    except VigilError as exc:
        click.echo(f"vigil-collector: {exc}", err=True)
        return 1
    except click.exceptions.Exit as exc:
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
