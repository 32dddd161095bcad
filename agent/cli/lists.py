"""``vigil-agent lists``: refresh the Citizen Lab test lists, or show which ones are in use."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import click

from agent import config as agent_config
from agent.inputs import testlists
from agent.inputs.sync import update_lists


@click.group("lists")
def lists() -> None:
    """Citizen Lab test lists (CC BY-NC-SA 4.0, github.com/citizenlab/test-lists)."""


@lists.command("update")
@click.option("--source-url", help="Where the lists/ folder is (default: from config: the "
              "Citizen Lab GitHub repository).")
@click.option("--country", "countries", multiple=True, metavar="CC",
              help="Also fetch this country's list (repeatable).")
@click.option("--allow-shrink", is_flag=True,
              help="Accept a list with less than half the URLs of the one in use.")
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False))
def update(source_url: str | None, countries: tuple[str, ...], allow_shrink: bool,
           config_file: Path | None) -> None:
    """Download fresh lists; the old ones stay in use if anything goes wrong.

    A list that arrives cut, short or with bad rows is refused with the reason, and every list
    in use is kept (exit code 1).
    """
    config = agent_config.load(config_file)
    for cc in countries:
        if len(cc) != 2 or not cc.isalpha():
            raise click.BadParameter(f"{cc!r} is not a two-letter country code",
                                     param_hint="--country")
    result = asyncio.run(
        update_lists(
            config.state_dir,
            source_url or config.lists.source_url,
            (*config.lists.countries, *countries),
            allow_shrink=allow_shrink,
        )
    )
    click.echo(result.summary())


@lists.command("show")
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False))
def show(config_file: Path | None) -> None:
    """Print the directory in use, how many URLs each list has, and the categories."""
    config = agent_config.load(config_file)
    directory = testlists.lists_dir(config.state_dir)
    origin = "bundled" if directory == testlists.bundled_dir() else "updated"
    click.echo(f"{directory} ({origin})")
    excluded = frozenset(config.lists.exclude_categories)
    per_category: Counter[str] = Counter()
    for path in sorted(directory.glob("*.csv")):
        if path.name.startswith("00-LEGEND"):
            continue
        parsed = testlists.read_file(path)
        bad = f", {len(parsed.problems)} bad rows" if parsed.problems else ""
        click.echo(f"  {path.stem:<8} {len(parsed.targets):>5} URLs{bad}")
        for target in parsed.targets:
            code = (target.category_code or "").upper()
            per_category[testlists.category_aliases().get(code, code)] += 1
    click.echo("categories (URLs; x = excluded by [lists] exclude_categories):")
    for code, n in sorted(per_category.items()):
        click.echo(f"  {'x' if code in excluded else ' '} {code:<6} {n:>5}")
