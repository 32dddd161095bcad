"""``vigil-agent run``: measure the test lists once (``--once``) or keep doing it (scheduler).

The flags are a public interface (researchers script them); keep them stable::

    vigil-agent run --once [--list FILE.csv]... [--tests NAME[,NAME...]] [--output OUT.jsonl]
                    [--exclude-category CODE]... [--control-url URL] [--ca-file PEM]
                    [--concurrency N] [--max-runtime SECONDS] [--data-budget MB] [--config FILE]

Nothing is measured before the consent text (docs/consent.md) is accepted: on a terminal the
first run shows it and asks; unattended runs refuse (exit 2) and say how to accept.

On a terminal a progress bar shows running counts per verdict; otherwise (systemd, pipes) one
structured ``key=value`` line is written per measurement.  Exit codes: 0 done, 1 runtime
failure (some measurements could not run, the output cannot be written), 2 usage or
configuration error, each with a one-line reason.  A run that learnt nothing (the control
helper refused or could not be reached, every verdict inconclusive) exits 1 and names the
problem and its fix (``agent.engine.preflight``), e.g. the enrolment line to send to the operator
when the probe is not enrolled yet.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import click

from agent import config as agent_config
from agent import consent as agreement
from agent import experiments as registry
from agent.config import AgentConfig
from agent.engine import preflight
from agent.engine.runner import Job as RunJob
from agent.engine.runner import (
    JsonlFileSink,
    RunLimits,
    Runner,
    RunSummary,
    open_context,
)
from agent.errors import ConfigError, UsageError, VigilError
from agent.experiments import Experiment, InputPolicy
from agent.identity import load_or_create
from agent.inputs import testlists
from agent.uplink.oneshot import publishing
from agent.wire.record import MeasurementRecord, Target

log = logging.getLogger("vigil.run")

WEB = "web_connectivity"
STATUS_ORDER = ("ok", "blocked", "throttled", "down", "inconclusive")


# ---- presentation -----------------------------------------------------------------------------
def _logfmt_value(value: object) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    return text


def logfmt(**fields: object) -> str:
    return " ".join(f"{k}={_logfmt_value(v)}" for k, v in fields.items() if v is not None)


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return logfmt(ts=ts, level=record.levelname.lower(), logger=record.name,
                      msg=record.getMessage())


class Reporter:
    """Progress on a terminal, structured lines otherwise; a summary either way."""

    def __init__(self, total: int, stream: TextIO, tty: bool) -> None:
        self.total = total
        self.stream = stream
        self.counts: Counter[str] = Counter()
        self.errors = 0
        self.notable: list[str] = []
        self.inconclusive_reasons: Counter[str] = Counter()
        self._bar: Any = None
        if tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, file=stream, unit="m", dynamic_ncols=True,
                             desc="measuring", smoothing=0.1)

    def __call__(self, record: MeasurementRecord | None, job: RunJob, error: str | None) -> None:
        if record is None:
            self.errors += 1
            key = "error"
        else:
            v = record.verdict
            key = str(v.status)
            if key == "inconclusive":
                self.inconclusive_reasons[v.reason or "unknown"] += 1
            if key in ("blocked", "throttled") and len(self.notable) < 20:
                self.notable.append(
                    f"  {key:<9} {v.blocking!s:<12} {v.reason:<22} {record.input}"
                )
        self.counts[key] += 1
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(self._counts_text(), refresh=False)
            return
        if record is None:
            line = logfmt(ts=_now(), level="error", event="measurement_failed",
                          test=job.experiment.name, input=job.target.input, error=error)
        else:
            v = record.verdict
            line = logfmt(
                ts=_now(), level="info", event="measurement", test=record.test_name,
                input=record.input, status=v.status, blocking=v.blocking or "-",
                reason=v.reason or "-", confirmed=str(v.confirmed).lower(),
                runtime=f"{record.test_runtime:.3f}", id=record.measurement_id,
            )
        print(line, file=self.stream, flush=True)

    def _counts_text(self) -> str:
        keys = [k for k in (*STATUS_ORDER, "error") if self.counts[k]]
        return " ".join(f"{k}={self.counts[k]}" for k in keys)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def summary(self, s: RunSummary, output: str) -> None:
        counts = ", ".join(f"{k} {s.by_status[k]}" for k in STATUS_ORDER if s.by_status[k])
        print(
            f"measured {s.measured} of {s.planned} in {s.elapsed:.1f} s ({s.rate:.1f}/s, "
            f"{s.bytes_used / 1e6:.1f} MB): {counts or 'nothing'}; {s.errors} could not run",
            file=self.stream,
        )
        if s.stopped:
            print(f"stopped early: {s.stopped}; {s.skipped} not measured", file=self.stream)
        if self.notable:
            print("blocked or throttled (first 20):", file=self.stream)
            for line in self.notable:
                print(line, file=self.stream)
        print(f"results: {output}", file=self.stream, flush=True)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _setup_logging(stream: TextIO, tty: bool) -> None:
    root = logging.getLogger("vigil")
    if any(getattr(h, "_vigil_run", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(stream)
    handler._vigil_run = True  # type: ignore[attr-defined]
    handler.setFormatter(
        logging.Formatter("vigil: %(levelname)s: %(message)s") if tty else LogfmtFormatter()
    )
    root.addHandler(handler)
    root.setLevel(logging.WARNING)


# ---- planning ---------------------------------------------------------------------------------
def select_tests(names: Sequence[str]) -> list[type[Experiment]]:
    """The requested experiments; without names, the ones enabled by default
    (``agent.experiments.enabled_by_default``, the same choice the long-running agent makes:
    throttling, megabytes per host, and vpn, which needs the operator's endpoints, only when
    named)."""
    if not names:
        return registry.enabled_by_default()
    chosen: list[type[Experiment]] = []
    for name in names:
        cls = registry.get(name)  # UsageError naming the known tests
        if cls not in chosen:
            chosen.append(cls)
    return chosen


def parse_tests_flag(value: str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    names = tuple(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))
    if not names:
        raise UsageError("--tests names no test")
    return names


def plan_jobs(
    classes: Sequence[type[Experiment]],
    list_targets: Sequence[Target],
    explicit_lists: bool,
) -> list[RunJob]:
    """Each test's inputs by its declared policy: the lists for ``TEST_LISTS``; its own inputs
    for ``OWN`` unless lists were named; ``SELECTED_HOSTS`` tests measure the lists only when
    named (the default lists are too many hosts for a throughput test)."""
    jobs: list[RunJob] = []
    for cls in classes:
        if cls.input_policy is InputPolicy.TEST_LISTS or explicit_lists:
            targets: Sequence[Target] = list_targets
        elif cls.input_policy is InputPolicy.OWN:
            targets = cls.default_targets()
        else:
            raise UsageError(f"{cls.name} measures the hosts of the lists you name: "
                             "pass --list FILE.csv")
        experiment = cls()
        jobs.extend(RunJob(experiment, t) for t in targets)
    return jobs


def _with_overrides(config: AgentConfig, **flags: Any) -> AgentConfig:
    net, control, run = config.net, config.control, config.run
    try:
        if flags["ca_file"] is not None:
            net = dataclasses.replace(net, ca_file=flags["ca_file"])
        if flags["control_url"] is not None:
            control = dataclasses.replace(control, url=flags["control_url"])
        changes = {
            k: flags[k]
            for k in ("concurrency", "max_runtime")
            if flags[k] is not None
        }
        if flags["data_budget"] is not None:
            changes["data_budget_mb"] = flags["data_budget"]
        run = dataclasses.replace(run, **changes)
        lists = config.lists
        extra = [c for v in flags.get("exclude_categories", ()) for c in v.split(",") if c.strip()]
        if extra:
            lists = dataclasses.replace(
                lists, exclude_categories=(*lists.exclude_categories, *extra)
            )
    except ConfigError as exc:
        text = str(exc).replace("lists.exclude_categories", "--exclude-category")
        raise UsageError(text) from None
    return dataclasses.replace(config, net=net, control=control, run=run, lists=lists)


def default_output(state_dir: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return state_dir / "results" / f"run-{stamp}.jsonl"


# ---- the run ----------------------------------------------------------------------------------
def _planned_jobs(
    config: AgentConfig,
    list_files: Sequence[Path],
    test_names: Sequence[str],
    classes: Sequence[type[Experiment]],
    probe_cc: str,
    stream: TextIO,
) -> list[RunJob]:
    """The run's jobs: the lists named (or configured, or the country's), the tests' inputs,
    the volunteer's excluded categories left out; UsageError when nothing is left."""
    explicit = bool(list_files)
    if explicit:
        paths = list(list_files)
    elif config.lists.files:
        paths = list(config.lists.files)
    else:
        directory = testlists.lists_dir(config.state_dir)
        paths = testlists.default_paths(directory, probe_cc, config.lists.countries)
    parsed = testlists.read_files(paths)
    for problem in parsed.problems:
        log.warning("skipped list row %s", problem)
    # tests with their own inputs (apps, connectivity) take the list's URLs only when named
    # on the command line: a default run over a 1,700-URL list must not run them 1,700 times
    jobs = plan_jobs(classes, parsed.targets,
                     (explicit or bool(config.lists.files)) and bool(test_names))
    planned = len(jobs)
    jobs, dropped = without_excluded(jobs, frozenset(config.lists.exclude_categories))
    if dropped:
        print(testlists.describe_dropped(dropped), file=stream)
    if not jobs:
        if planned:
            raise UsageError("nothing to measure: every input is in an excluded category")
        raise UsageError(f"nothing to measure in {', '.join(str(p) for p in paths)}")
    if parsed.duplicates:
        log.info("%d duplicate URL(s) measured once", parsed.duplicates)
    return jobs


async def run_once(
    config: AgentConfig,
    list_files: Sequence[Path],
    test_names: Sequence[str],
    output: Path | str,
    stream: TextIO,
    tty: bool,
) -> RunSummary:
    if config.control.url is None:
        raise ConfigError("no control helper: pass --control-url or set [control] url")
    classes = select_tests(test_names or config.run.tests)
    clock = preflight.clock_problem(datetime.now(UTC))
    if clock is not None:
        print(clock.render(), file=stream)
        raise VigilError(f"nothing measured: {clock.message}")
    identity, created = load_or_create(config.state_dir)
    if created:
        print(f"created probe identity {identity.probe_id} in {config.state_dir}", file=stream)
    plain = preflight.plain_http_problem(config.control.url)
    if plain is not None:
        print(f"warning: {plain.message}\n    fix: {plain.fix}", file=stream)
    async with open_context(config, identity) as ctx:
        if ctx.whoami_error is not None:
            from agent.identity import enrolment_command

            refused = preflight.helper_problem(
                ctx.whoami_error, config.control.url,
                enrolment_command(identity.probe_id, identity.public_key_b64),
            )
            print(refused.render(), file=stream, flush=True)
            if refused.stops_run:
                raise VigilError(f"nothing measured: {refused.message}")
        jobs = _planned_jobs(config, list_files, test_names, classes, ctx.probe.probe_cc,
                             stream)
        sink = JsonlFileSink(output)
        reporter = Reporter(len(jobs), stream, tty)
        limits = RunLimits(
            concurrency=config.run.concurrency,
            per_host=config.run.per_host,
            max_runtime=config.run.max_runtime,
            measurement_timeout=config.run.measurement_timeout,
        )
        try:
            # With a broker in the config, records also go to the outbox and get published.
            async with publishing(config, identity, sink) as run_sink:
                summary = await Runner(ctx, run_sink, limits, reporter).run(jobs)
        finally:
            reporter.close()
            sink.close()
        reporter.summary(summary, str(output))
        if summary.measured or not summary.errors:
            learnt = preflight.inconclusive_problem(summary.by_status,
                                                    reporter.inconclusive_reasons)
            if learnt is not None:
                print(learnt.render(), file=stream, flush=True)
                raise VigilError(f"{learnt.message}; results in {output}")
        return summary


def without_excluded(
    jobs: Sequence[RunJob], excluded: frozenset[str]
) -> tuple[list[RunJob], Counter[str]]:
    """Jobs whose input (or, for inputs without one, whose test) is not in an excluded
    category, and how many were left out per category."""
    kept: list[RunJob] = []
    dropped: Counter[str] = Counter()
    for job in jobs:
        own = getattr(job.experiment, "category_code", None)
        code = testlists.excluded_as(job.target.category_code or own, excluded)
        if code is None:
            kept.append(job)
        else:
            dropped[code] += 1
    return kept, dropped


@click.command("run")
@click.option("--once", is_flag=True, help="Measure every listed URL once, then exit.")
@click.option("--list", "list_files", multiple=True,
              type=click.Path(path_type=Path, dir_okay=False),
              help="Citizen Lab CSV test list (repeatable). Default: global + your country.")
@click.option("--tests", "tests_flag", metavar="NAME[,NAME...]",
              help="Tests to run (default: all enabled ones).")
@click.option("--output", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
              help="JSONL output, appended (default: <state>/results/run-<time>.jsonl).")
@click.option("--exclude-category", "exclude_categories", multiple=True, metavar="CODE[,CODE]",
              help="Never measure inputs of this Citizen Lab category (repeatable; adds to "
              "[lists] exclude_categories), e.g. LGBT, REL, POLR, PORN, ANON.")
@click.option("--control-url", help="The control helper, e.g. https://helper.example.org")
@click.option("--ca-file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Extra trust anchors (PEM) for private deployments and labs.")
@click.option("--concurrency", type=click.IntRange(1, 1024),
              help="Measurements in flight (default 16).")
@click.option("--max-runtime", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Stop starting new measurements after this long.")
@click.option("--data-budget", type=click.FloatRange(min=0, min_open=True), metavar="MB",
              help="Stop starting new measurements once this much data moved.")
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False),
              help="Config file (default $VIGIL_CONFIG or /etc/vigil/agent.toml).")
def run(
    once: bool,
    list_files: tuple[Path, ...],
    tests_flag: str | None,
    output: Path | None,
    control_url: str | None,
    ca_file: Path | None,
    concurrency: int | None,
    max_runtime: float | None,
    data_budget: float | None,
    exclude_categories: tuple[str, ...],
    config_file: Path | None,
) -> None:
    """Measure censorship on the test lists' URLs."""
    from agent.cli.config_check import check_all

    loaded = agent_config.load(config_file)
    check_all(loaded)  # every section, by its owner's parser: a typo stops the agent here
    config = _with_overrides(
        loaded, ca_file=ca_file, control_url=control_url,
        concurrency=concurrency, max_runtime=max_runtime, data_budget=data_budget,
        exclude_categories=exclude_categories,
    )
    agreement.require(
        config,
        interactive=sys.stdin.isatty() and sys.stderr.isatty(),
        echo=lambda text: click.echo(text, err=True),
        prompt=lambda question: str(click.prompt(question, err=True, default="",
                                                 show_default=False)),
    )
    if not once:
        if list_files or tests_flag or output or exclude_categories:
            raise UsageError("--list, --tests, --output and --exclude-category only apply with "
                             "--once (the long-running agent reads [lists] exclude_categories)")
        from agent.daemon import loop as scheduler  # the long-running agent, imported when used

        result = scheduler.run_forever(config, consent_check=_consent_still_given)
        if inspect.isawaitable(result):
            result = asyncio.run(result)  # type: ignore[arg-type]
        if isinstance(result, int) and result != 0:
            raise click.exceptions.Exit(result)
        return
    names = parse_tests_flag(tests_flag)
    out: Path | str = output if output is not None else default_output(config.state_dir)
    tty = sys.stderr.isatty()
    _setup_logging(sys.stderr, tty)
    summary = asyncio.run(run_once(config, list_files, names, out, sys.stderr, tty))
    if summary.errors:
        raise VigilError(
            f"{summary.errors} of {summary.planned} measurements could not run (see log); "
            f"results in {out}"
        )
    if summary.measured == 0 and summary.planned:
        raise VigilError(f"no measurement was made ({summary.stopped or 'unknown reason'})")


def _consent_still_given(config: AgentConfig) -> tuple[bool, str]:
    current = agreement.status(config)
    return current.accepted, current.message
