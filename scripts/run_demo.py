"""``make run``: a whole Vigil deployment and one measurement campaign, offline, in one command.

What runs, all inside the censorship lab (tests/lab/: three network namespaces in
198.18.0.0/15 with no route out of the machine, so nothing here touches the internet):

* the lab itself: web sites, DNS, an on-path censor, and the control helper in signed mode;
* Mosquitto with the project's config (configs/mosquitto/: TLS, per-probe passwords, ACL,
  persistence) on the lab's broker address, certificates from a fresh trustme CA;
* the collector (``vigil-collector serve``: ingest + outage detector + API) with its SQLite
  store in the run directory (``./run/<UTC time>/``, which outlives the lab);
* an agent enrolled on the fly (``vigil-agent init`` -> ``vigil-collector probes add`` ->
  a broker password for its probe id) that measures the lab's web_connectivity scenarios
  with ``vigil-agent run --once`` and publishes every signed record through its outbox.

Then it waits (bounded) until the collector has stored every measurement the agent produced,
prints where the results are and a summary, and tears everything down (the lab's teardown
stops every process by PID and deletes the namespaces), also on Ctrl-C, SIGTERM or failure.
``--keep`` leaves the deployment running after a completed campaign (plus the API on
127.0.0.1) and prints how to stop it.

Exit codes: 0 every produced measurement is stored; 1 some are missing or something failed;
2 this machine cannot run the lab (not root, no namespaces, missing tools); 130 interrupted.

Mosquitto runs as root here (``user root`` in the rendered config): the run directory belongs
to whoever ran ``make run``, and the broker lives in a namespace of its own anyway.  A real
deployment renders the same template with ``user mosquitto`` (scripts/mosquitto_conf.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BROKER_PORT, BROKER_CERT_PORT, COLLECTOR_BROKER_PORT = 8883, 8884, 8885
API_PORT = 8080
COLLECTOR_USER = "vigil-collector"
COLLECTOR_CLIENT_ID = "vigil-collector-demo"
AGENT_TIMEOUT_S = 120.0  # one agent invocation (31 URLs take ~20 s)
STORED_TIMEOUT_S = 60.0  # produced == stored must happen within this after the campaign
READY_TIMEOUT_S = 30.0  # collector subscribed to the broker
POLL_S = 0.25
QUICK_TESTS = ("web_connectivity",)  # --quick: skip the throttling and app rows


class DemoError(RuntimeError):
    """The demo could not run a step; the message says which and why."""


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP: tear down, exit 130."""


# ---- preflight -------------------------------------------------------------------------------
def preflight() -> str | None:
    """None when this machine can run the demo, else a one-line reason."""
    try:
        from lab.broker import mosquitto_available
        from lab.preflight import agent_unavailable, lab_unavailable
    except ImportError as exc:  # the lab and the broker fixture come with the dev extras
        return f"{exc} (use `make run`, or pip install -e '.[dev]' first)"
    why = lab_unavailable()
    if why:
        return why if "root" in why else f"{why}; run `sudo make run` on Debian"
    return mosquitto_available() or agent_unavailable()


# ---- small helpers ---------------------------------------------------------------------------
def _rel(path: Path) -> str:
    """Paths under the checkout are shown relative to it (what a reader types)."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _toml_str(value: object) -> str:
    """A TOML basic string (JSON's escaping is valid TOML), whatever the path contains."""
    return json.dumps(str(value))


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")


def _free_loopback_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise DemoError("no free port on 127.0.0.1")


def _wait(what: str, predicate: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(POLL_S)


def _run(argv: Sequence[str], env: dict[str, str] | None = None,
         timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          env=env, check=False, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise DemoError(f"{Path(argv[0]).name} {argv[1]} failed ({proc.returncode}): "
                        f"{proc.stderr.strip()[-800:]}")
    return proc


def make_run_dir(base: Path) -> Path:
    """``base/<UTC time>``, and ``base/latest`` pointing at it."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    base.mkdir(parents=True, exist_ok=True)
    run_dir = base / stamp
    for n in range(1, 100):  # two runs in the same second get distinct directories
        try:
            run_dir.mkdir()
            break
        except FileExistsError:
            run_dir = base / f"{stamp}-{n}"
    else:
        raise DemoError(f"cannot create a run directory under {base}")
    latest = base / "latest"
    with contextlib.suppress(OSError):
        if latest.is_symlink():
            latest.unlink()
        if not latest.exists():
            latest.symlink_to(run_dir.name)
    return run_dir


# ---- the deployment --------------------------------------------------------------------------
@dataclass
class Delivery:
    """How many measurements the agent produced and how many the collector stored."""

    produced_ids: list[str]
    enqueued: int | None  # the outbox's own counter of committed measurements
    stored: int  # of produced_ids, how many are in the store
    outbox_left: int | None
    rejections: dict[str, int]
    seconds: float  # from the agent's exit until the store had them all (or the wait ended)

    @property
    def produced(self) -> int:
        return len(self.produced_ids)

    @property
    def complete(self) -> bool:
        return (self.produced > 0 and self.stored == self.produced
                and self.enqueued in (None, self.produced))

    def line(self) -> str:
        verdict = ("produced == stored" if self.complete else
                   f"MISSING {self.produced - self.stored}")
        extra = [f"outbox left {self.outbox_left}" if self.outbox_left is not None else "",
                 f"outbox committed {self.enqueued}" if self.enqueued is not None else "",
                 "collector rejections " + (", ".join(f"{k} {v}" for k, v in
                                                      sorted(self.rejections.items())) or "0")]
        return (f"measurements: produced {self.produced}, stored {self.stored}: {verdict} "
                f"({'; '.join(e for e in extra if e)}; "
                f"{self.seconds:.1f}s after the agent's last run)")


class Demo:
    """One deployment in one lab.  Every process it starts is recorded in the lab's state,
    so the lab's teardown (``Lab.down`` / ``python -m lab down PREFIX``) stops it."""

    def __init__(self, run_dir: Path, keep: bool, tests: Sequence[str] = ()) -> None:
        self.run_dir = run_dir
        self.keep = keep
        self.tests = tuple(tests)  # empty: every test the scenario files measure
        self.lab: Any = None
        self.probe_id = ""
        self.store_url = f"sqlite://{run_dir / 'collector.db'}"  # run_dir is absolute
        self.db_path = run_dir / "collector.db"
        self.results = run_dir / "measurements.jsonl"
        self.verdicts = run_dir / "scenarios.json"  # each row's lab truth and agent verdict
        self.broker_dir = run_dir / "broker"
        self.collector_config = run_dir / "collector.toml"
        self.api_url: str | None = None
        self.report: Any = None
        self.campaign_end = 0.0

    # ---- bring-up ----------------------------------------------------------------------
    def up(self) -> None:
        from lab.lab import Lab

        say("lab: building namespaces, sites, censor and control helper ...")
        self.lab = Lab.up(detached=self.keep)
        if self.keep:  # `make lab-down` from this terminal finds it
            self.lab.state.record("session", os.getsid(0))
        if not self.lab.helper_running:
            raise DemoError(f"the control helper did not start:\n{self.lab.log_tail('helper')}")
        say(f"lab {self.lab.prefix}: control helper {self.lab.control_url} (signed mode)")
        probe_pw, collector_pw = self.enrol()
        self.start_broker(probe_pw, collector_pw)
        self.start_collector(collector_pw)
        self.configure_agent(probe_pw)

    def enrol(self) -> tuple[str, str]:
        """init -> probes add -> broker passwords for the probe id and the collector."""
        env = {**os.environ, **self.lab.agent_env()}
        out = _run([str(BIN / "vigil-agent"), "init", "--json", "--state-dir",
                    env["VIGIL_STATE_DIR"]], env=env).stdout
        info = json.loads(out)
        self.probe_id = str(info["probe_id"])
        _run([str(BIN / "vigil-collector"), "probes", "add", self.probe_id,
              info["public_key"], "--store", self.store_url, "--note", "make run demo agent"])
        say(f"agent: probe {self.probe_id} enrolled in {_rel(self.db_path)}")
        return secrets.token_urlsafe(18), secrets.token_urlsafe(18)

    def start_broker(self, probe_pw: str, collector_pw: str) -> None:
        import trustme

        from lab import addressing as A
        from lab.broker import MOSQUITTO_BIN
        from scripts.mosquitto_conf import (
            BrokerSettings,
            install_acls,
            render,
            write_password_file,
        )

        d = self.broker_dir
        (d / "data").mkdir(parents=True)
        ca = trustme.CA(organization_name="Vigil demo broker CA")
        ca.cert_pem.write_to_path(str(d / "ca.pem"))
        server = ca.issue_cert(A.BROKER_ADDR)
        cert, key = d / "server.pem", d / "server.key"
        key.touch(mode=0o600)
        server.private_key_pem.write_to_path(str(key))
        with cert.open("wb") as fh:
            for blob in server.cert_chain_pems:
                fh.write(blob.bytes())
        write_password_file(d / "probes.passwd", {self.probe_id: probe_pw})
        write_password_file(d / "collectors.passwd", {COLLECTOR_USER: collector_pw})
        probes_acl, collectors_acl = install_acls(d)
        settings = BrokerSettings(
            data_dir=d / "data", ca_file=d / "ca.pem", server_cert_file=cert,
            server_key_file=key, probe_password_file=d / "probes.passwd",
            collector_password_file=d / "collectors.passwd", probe_acl_file=probes_acl,
            collector_acl_file=collectors_acl, log_dest=f"file {d / 'mosquitto.log'}",
            probe_port=BROKER_PORT, probe_cert_port=BROKER_CERT_PORT,
            collector_port=COLLECTOR_BROKER_PORT, probe_bind=A.BROKER_ADDR,
            collector_bind=A.BROKER_ADDR, user="root",
        )
        conf = d / "mosquitto.conf"
        conf.write_text(render(settings), "utf-8")
        self._guarded("broker", [MOSQUITTO_BIN, "-c", str(conf)], (A.BROKER_ADDR, BROKER_PORT))
        say(f"broker: mosquitto mqtts://{A.BROKER_ADDR}:{BROKER_PORT} (probes, password), "
            f":{BROKER_CERT_PORT} (probes, client cert), :{COLLECTOR_BROKER_PORT} (collectors)")

    def start_collector(self, collector_pw: str) -> None:
        from lab import addressing as A

        pw_file = self.run_dir / "collector-broker.password"
        _write_secret(pw_file, collector_pw)
        self.collector_config.write_text(
            "# vigil-collector serve for `make run` (see configs/collector.example.toml)\n"
            "[broker]\n"
            f'host = "{A.BROKER_ADDR}"\nport = {COLLECTOR_BROKER_PORT}\n'
            f'ca_file = {_toml_str(self.broker_dir / "ca.pem")}\nusername = "{COLLECTOR_USER}"\n'
            f'password_file = {_toml_str(pw_file)}\nclient_id = "{COLLECTOR_CLIENT_ID}"\n'
            "[store]\n"
            f'url = {_toml_str(self.store_url)}\n'
            "[ingest]\nstats_interval_s = 10.0\n"
            "[api]\n"
            f'host = "{A.COLLECTOR_ADDR}"\nport = {API_PORT}\n',
            encoding="utf-8",
        )
        self._guarded("collector", [str(BIN / "vigil-collector"), "serve", "--config",
                                    str(self.collector_config)], (A.COLLECTOR_ADDR, API_PORT))
        _wait("the collector to subscribe to the broker", self._ingest_connected,
              READY_TIMEOUT_S)
        say(f"collector: ingest subscribed, API http://{A.COLLECTOR_ADDR}:{API_PORT}/ "
            "(inside the lab)")

    def _ingest_connected(self) -> bool:
        from lab import addressing as A

        code = ("import json, urllib.request; print(urllib.request.urlopen("
                f"'http://{A.COLLECTOR_ADDR}:{API_PORT}/healthz', timeout=2).read().decode())")
        proc = self.lab.run_in("inet", [sys.executable, "-c", code], timeout=10)
        if proc.returncode != 0:
            return False
        try:
            return bool(json.loads(proc.stdout)["ingest"]["connected"])
        except (ValueError, KeyError, TypeError):
            return False

    def _guarded(self, name: str, argv: list[str], ready: tuple[str, int]) -> None:
        """Start ``argv`` in the inet namespace under the lab's guard: it dies with the lab's
        owner (or its lifetime), and the lab's teardown stops it by PID."""
        cfg = {**self.lab._common_cfg(name), "argv": argv, "cwd": str(self.run_dir),
               "ready_tcp": list(ready), "ready_timeout": 20,
               "child_pid_file": str(self.lab.dir / f"{name}.child.pid")}
        path = self.lab.dir / f"{name}.json"
        path.write_text(json.dumps(cfg), encoding="utf-8")
        self.lab._spawn(name, "inet", [sys.executable, "-m", "lab.servers.guard",
                                       str(path)])
        self.lab._wait_ready([name])

    def configure_agent(self, probe_pw: str) -> None:
        """Add ``[mqtt]`` to the lab agent's config: ``run --once`` then publishes."""
        from lab import addressing as A

        pw_file = self.run_dir / "agent-broker.password"
        _write_secret(pw_file, probe_pw)
        config = Path(self.lab.agent_env()["VIGIL_CONFIG"])
        text = config.read_text("utf-8")
        config.write_text(
            text + "\n[mqtt]\n"
            f'host = "{A.BROKER_ADDR}"\nport = {BROKER_PORT}\n'
            f'ca_file = {_toml_str(self.broker_dir / "ca.pem")}\n'
            f'password_file = {_toml_str(pw_file)}\n'
            "connect_timeout = 5.0\nbackoff_initial = 0.5\nbackoff_max = 3.0\n",
            encoding="utf-8",
        )

    # ---- the campaign ------------------------------------------------------------------
    def campaign(self) -> None:
        from lab.runner import DEAD_CONTROL_URL, run_scenarios

        rows = [s for s in self.lab.scenarios.measured if s.expect is not None
                and (s.test in self.tests or not self.tests)]
        tests = ", ".join(sorted({s.test for s in rows}))
        say(f"campaign: {len(rows)} lab scenarios ({tests}), agent in the probe namespace "
            "behind the censor ...")
        self.report = run_scenarios(self.lab, rows, timeout_s=AGENT_TIMEOUT_S)
        self.campaign_end = time.monotonic()
        with self.results.open("w", encoding="utf-8") as out:
            for run in self.report.runs:
                if run.output.exists():
                    out.write(run.output.read_text("utf-8"))
        self.verdicts.write_text(json.dumps(self.report.to_json()), "utf-8")
        for run in self.report.runs:
            control = " (control unreachable)" if DEAD_CONTROL_URL in run.argv else ""
            say(f"  agent run: {len(run.scenarios)} URLs{control}, exit {run.returncode}, "
                f"{run.seconds:.1f}s")
            if run.returncode != 0 and run.stderr_tail:
                say("  agent stderr:\n" + "\n".join("    " + line for line in
                                                    run.stderr_tail.splitlines()))

    def produced_ids(self) -> list[str]:
        ids = []
        if self.results.exists():
            for line in self.results.read_text("utf-8").splitlines():
                with contextlib.suppress(ValueError, AttributeError):
                    mid = json.loads(line).get("measurement_id")
                    if isinstance(mid, str):
                        ids.append(mid)
        return ids

    def wait_stored(self) -> Delivery:
        """Wait (bounded) until the store has every produced measurement."""
        from agent.uplink.outbox import read_stats
        from collector.store import open_store

        produced = self.produced_ids()
        store = open_store(self.store_url)
        try:
            deadline = time.monotonic() + STORED_TIMEOUT_S
            stored = 0
            while True:
                stored = sum(store.get_measurement(mid) is not None for mid in produced)
                if stored == len(produced) or time.monotonic() >= deadline:
                    break
                time.sleep(POLL_S)
            seconds = time.monotonic() - self.campaign_end
            rejections = store.rejection_counts()
        finally:
            store.close()
        stats = read_stats(Path(self.lab.agent_env()["VIGIL_STATE_DIR"]))
        return Delivery(produced, None if stats is None else stats.counters.get("enqueued"),
                        stored, None if stats is None else stats.count, rejections, seconds)

    # ---- keeping it up -----------------------------------------------------------------
    def serve_api_on_host(self) -> None:
        """--keep: the same store served on 127.0.0.1 (the lab's API is unreachable from
        here by design), recorded in the lab's state so its teardown stops it too."""
        port = _free_loopback_port(API_PORT)
        log = (self.run_dir / "api.log").open("ab")
        try:
            proc = subprocess.Popen(
                [str(BIN / "vigil-collector"), "serve", "--no-ingest", "--no-outages",
                 "--store", self.store_url, "--host", "127.0.0.1", "--port", str(port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        finally:
            log.close()
        self.lab.state.add_process("api-host", proc.pid)

        def listening() -> bool:
            if proc.poll() is not None:
                raise DemoError(f"the API server exited ({proc.returncode}); see "
                                f"{_rel(self.run_dir / 'api.log')}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return True
            return False

        _wait("the API on 127.0.0.1", listening, 20)
        self.api_url = f"http://127.0.0.1:{port}/"

    def save_logs(self) -> None:
        if self.lab is None:
            return
        for name in ("collector", "helper"):
            with contextlib.suppress(OSError):
                shutil.copyfile(self.lab.dir / f"{name}.log", self.run_dir / f"{name}.log")

    def down(self) -> None:
        if self.lab is not None:
            self.save_logs()
            self.lab.down()

    def logs(self) -> str:
        if self.lab is None:
            return ""
        return "\n".join(f"--- {n} (last lines)\n{self.lab.log_tail(n, 20)}"
                         for n in ("collector", "broker") if (self.lab.dir / f"{n}.log").exists())


# ---- the summary -----------------------------------------------------------------------------
def _counts(title: str, counter: Counter[str]) -> str:
    items = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    # "\0" keeps each "name count" pair on one line when the list wraps
    text = textwrap.fill(", ".join(f"{k}\0{v}" for k, v in items), width=100,
                         initial_indent=f"  {title:<12}", subsequent_indent=" " * 14,
                         break_on_hyphens=False)
    return text.replace("\0", " ")


def summary_text(demo: Demo) -> str:
    """Counts by verdict status, blocking and reason, and one line per URL, from the store."""
    from collector.store import Filter, open_store

    store = open_store(demo.store_url)
    try:
        rows = store.recent(limit=10_000, where=Filter(probe_id=demo.probe_id))
    finally:
        store.close()
    outcomes = {}
    if demo.report is not None:
        outcomes = {(_norm(o.scenario.url), o.scenario.test): o for o in demo.report.outcomes}
    lines = [
        f"  stored measurements of probe {demo.probe_id}: {len(rows)}",
        _counts("status", Counter(r.status for r in rows)),
        _counts("blocking", Counter(r.blocking or "-" for r in rows)),
        _counts("reason", Counter(r.reason or "-" for r in rows)),
        "",
    ]
    table = [("URL", "test", "status", "blocking", "reason", "lab truth", "match")]
    right = 0
    for r in sorted(rows, key=lambda r: (r.status, r.blocking or "", r.input or "")):
        o = outcomes.get((_norm(r.input or ""), r.test_name))
        truth = "?" if o is None else o.expected_label
        mark = "-" if o is None else ("yes" if o.right else "NO")
        right += bool(o is not None and o.right)
        table.append((r.input or "-", r.test_name, r.status, r.blocking or "-", r.reason or "-",
                      truth, mark))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for n, row in enumerate(table):
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
                     .rstrip())
        if n == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    if outcomes:
        lines.append("")
        lines.append(f"  verdicts matching the lab's configured censorship: {right}/{len(rows)}")
    return "\n".join(lines)


def _norm(url: str) -> str:
    return url.rstrip("/").lower()


def where_text(demo: Demo) -> str:
    venv = _rel(BIN)
    lines = [
        f"  run directory   {_rel(demo.run_dir)}",
        f"  SQLite store    {_rel(demo.db_path)}",
        f"  agent JSONL     {_rel(demo.results)}  (the agent's records, one per URL)",
        f"  lab verdicts    {_rel(demo.verdicts)}  (each scenario: lab truth and verdict)",
        f"  broker          {_rel(demo.broker_dir / 'mosquitto.conf')}, "
        f"log {_rel(demo.broker_dir / 'mosquitto.log')}",
        f"  collector       {_rel(demo.collector_config)}, log {_rel(demo.run_dir)}/collector.log",
        f"  query           {venv}/vigil-collector query --store {demo.store_url}",
        f"  serve the API   {venv}/vigil-collector serve --no-ingest --no-outages "
        f"--store {demo.store_url}  (then http://127.0.0.1:{API_PORT}/)",
    ]
    return "\n".join(lines)


def say(text: str) -> None:
    print(text, flush=True)


# ---- main ------------------------------------------------------------------------------------
def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """Teardown must not be cut short by a second Ctrl-C: it is bounded anyway."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, signal.SIG_IGN) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    run_dir = make_run_dir(args.run_dir.resolve())
    say(f"vigil make run: results go to {_rel(run_dir)}")
    demo = Demo(run_dir, keep=args.keep, tests=QUICK_TESTS if args.quick else ())
    completed = False
    try:
        demo.up()
        demo.campaign()
        delivery = demo.wait_stored()
        say("\n== delivery (agent outbox -> broker -> collector) ==")
        say("  " + delivery.line())
        say("\n== where the results are ==")
        say(where_text(demo))
        say("\n== summary ==")
        text = summary_text(demo)
        say(text)
        (run_dir / "summary.txt").write_text(delivery.line() + "\n\n" + text + "\n", "utf-8")
        if not delivery.complete:
            say(f"\nnot every measurement reached the store:\n{demo.logs()}")
        if args.keep:
            demo.serve_api_on_host()
        completed = True
        code = 0 if delivery.complete else 1
    except (Interrupted, KeyboardInterrupt) as exc:
        say(f"\ninterrupted ({exc or 'SIGINT'}): tearing down")
        code = 130
    except Exception as exc:  # any failure: say it, tear down, exit 1
        say(f"\nrun_demo: {type(exc).__name__}: {exc}")
        logs = demo.logs()
        if logs:
            say(logs)
        code = 1
    finally:
        with _signals_ignored():
            if completed and args.keep and demo.lab is not None:
                demo.save_logs()
                p = demo.lab.prefix
                say(f"\nkept running (lab {p}): API {demo.api_url} (dashboard /, /api/v1/stats);"
                    f" inside the lab: broker 198.19.0.30, collector 198.19.0.31\n"
                    f"  stop it with:  {_rel(BIN)}/python -m lab down {p}"
                    "   (or `make lab-down` from this terminal)")
            else:
                try:
                    demo.down()
                except Exception as exc:  # report it; keep the exit code honest
                    say(f"run_demo: teardown: {exc}")
                    code = code or 1
    say(f"\nmake run: {time.monotonic() - t0:.0f}s, exit {code}")
    return code


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scripts.run_demo",
                                 description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--keep", action="store_true",
                    help="leave broker, collector, helper and lab running afterwards")
    ap.add_argument("--quick", action="store_true",
                    help="web_connectivity rows only (~40 s instead of ~80 s)")
    ap.add_argument("--run-dir", type=Path, default=REPO / "run",
                    help="where run directories are made (default: ./run)")
    args = ap.parse_args(argv)
    why = preflight()
    if why:
        print(f"run_demo: cannot run the lab: {why}", file=sys.stderr)
        return 2
    # SIGINT too: a shell that started us in the background set it to "ignore", and Ctrl-C
    # (or kill -INT) must still tear the deployment down
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
