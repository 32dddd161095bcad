"""``vigil-agent``: the probe's command line.

Exit codes: 0 done, 1 runtime failure, 2 usage or configuration error (one-line reason).
Each subcommand lives in ``agent/cli/<name>.py`` and is imported only when used; ``--help``
lists them from ``SUMMARIES`` without importing any.
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
    "consent": "agent.cli.consent:consent",
    "trace": "agent.cli.trace:trace",
}
# Each command's one-line help, as click would print it (tests compare the two).
SUMMARIES = {
    "consent": "Show what the probe measures, publishes and risks; accept or withdraw.",
    "doctor": "Check config, consent, key, clock, broker and helper; say what to fix.",
    "export": "Convert Vigil JSONL records to another format on standard output.",
    "init": "Create this probe's signing key (once) and print its enrolment request.",
    "lists": "Citizen Lab test lists (CC BY-NC-SA 4.0, github.com/citizenlab/test-lists).",
    "run": "Measure censorship on the test lists' URLs.",
    "status": "Show what the agent did recently, its outbox, uploads and next runs.",
    "trace": "Find the hop at which URL is blocked (TTL-limited trace with a benign twin).",
}


@click.group(cls=LazyGroup, lazy=COMMANDS, summaries=SUMMARIES)
@click.version_option(__version__, prog_name="vigil-agent")
def cli() -> None:
    """Vigil probe agent: measure censorship, throttling and shutdowns."""


def main(argv: list[str] | None = None) -> int:
    try:
        # click returns (not raises) a command's click.exceptions.Exit code in this mode
        code = cli.main(args=argv, prog_name="vigil-agent", standalone_mode=False)
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
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
