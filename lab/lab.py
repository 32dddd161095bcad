"""The lab: build the namespaces, start the servers and the censor, run things inside, tear down.

    lab = Lab.up(scenario_files)        # or Lab.up(..., scale=1000) for benchmarks
    try:
        lab.probe_run([...])            # any command, inside the probe's namespace
    finally:
        lab.down()

``Lab.up`` reaps leftovers of dead runs first, then builds a run with its own unique prefix.
See lab/README.md for the topology and nsctl.py for ownership and teardown rules.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.consent import load_text as load_consent_text
from lab import addressing as A
from lab import nsctl, procinfo
from lab.nsctl import LabError, State
from lab.pki import LabPKI, make_pki
from lab.plan import (
    AUTH_DNS_DELAY_MS,
    CENSOR_TABLE,
    DEFAULT_SITE_DELAY_MS,
    ISP_RESOLVER_DELAY_MS,
    SCALE_DOMAIN,
    LabPlan,
    broken_certs,
    build_plan,
    render_censor_nft,
    render_site_nft,
    tc_commands,
)
from lab.scenarios import Event, ScenarioSet, load_files

REPO = Path(__file__).resolve().parents[1]
LAB_DIR = Path(__file__).resolve().parent
DEFAULT_SCENARIO_FILES = ("scenarios.toml", "scenarios_apps.toml", "selfcheck.toml",
                          "scenarios_field.toml", "scenarios_resolver.toml")
# Not in the default set: its IPv6 sites make the lab dual-stack (tests/lab/test_dual_stack.py).
DUAL_STACK_SCENARIO_FILE = "scenarios_ipv6.toml"
WHOAMI_ZONE = "whoami.lab.test"  # the control helper's DNS whoami zone (resolver attribution)
GEO_ROWS = (  # IP location CSV (start, end, country): where the probe's addresses are used
    ("198.18.1.0", "198.18.1.255", "IR"),
    ("2001:2:0:1::", "2001:2:0:1:ffff:ffff:ffff:ffff", "IR"),
)
READY_TIMEOUT_S = 30.0
DELAY_LINE_TUN = "dly0"  # in the isp namespace: the path RTTs of distant sites
DELAY_LINE_ADDR = "198.18.254.1"
ACCESS_CLASS = "1:ffe"  # HTB class of every unclassified download when the access link is slow
ACCESS_TABLE = "vigil_access"
DETACHED_LIFETIME_S = 8 * 3600.0
ATTACHED_LIFETIME_S = 2 * 3600.0
INJECTOR_BPF = (
    "udp dst port 53 or ((tcp dst port 443 or tcp dst port 80 or tcp dst port 53) and "
    "(ip[2:2] - ((ip[0]&0xf)<<2) - ((tcp[12]&0xf0)>>2)) != 0)"
)
# dual-stack labs: IPv6 TCP payload to 80/443 (no extension headers in the lab)
INJECTOR_BPF6 = (
    f"({INJECTOR_BPF}) or (ip6 and (tcp dst port 443 or tcp dst port 80) and "
    "(ip6[4:2] - ((ip6[52]&0xf0)>>2)) != 0)"
)
IPDB_ROWS = (  # ip2asn-v4.tsv format: range_start, range_end, AS number, country, description
    ("198.18.0.0", "198.18.255.255", 64500, "IR", "Lab ISP"),
    ("198.19.0.0", "198.19.2.255", 64510, "US", "Lab Internet"),
    ("198.19.3.0", "198.19.3.255", 64520, "US", "Lab CDN"),
    ("198.19.4.0", "198.19.255.255", 64510, "US", "Lab Internet"),
    ("2001:2::", "2001:2:0:f:ffff:ffff:ffff:ffff", 64500, "IR", "Lab ISP"),
    ("2001:2:0:10::", "2001:2:0:1f:ffff:ffff:ffff:ffff", 64510, "US", "Lab Internet"),
)


def default_scenario_files() -> list[Path]:
    return [LAB_DIR / f for f in DEFAULT_SCENARIO_FILES if (LAB_DIR / f).exists()]


def helper_available() -> bool:
    """The control helper is built by another issue; the lab runs without it until it exists."""
    try:
        return importlib.util.find_spec("collector.cli.helper") is not None
    except ModuleNotFoundError:
        return False


@dataclass(frozen=True, slots=True)
class Proc:
    name: str
    role: str
    module: str
    config: dict[str, Any]


class Lab:
    def __init__(self, state: State, scenarios: ScenarioSet, plan: LabPlan,
                 pki: LabPKI | None) -> None:
        self.state = state
        self.scenarios = scenarios
        self.plan = plan
        self.pki = pki

    # ---- identity and paths ------------------------------------------------------------
    @property
    def prefix(self) -> str:
        return self.state.prefix

    @property
    def dir(self) -> Path:
        return self.state.directory

    def ns(self, role: str) -> str:
        return nsctl.ns_name(self.prefix, role)

    @property
    def ca_file(self) -> Path:
        return self.dir / "pki" / "lab-ca.pem"

    @property
    def censor_ca_file(self) -> Path:
        return self.dir / "pki" / "censor-ca.pem"

    @property
    def ipdb_file(self) -> Path:
        return self.dir / "ipdb.tsv"

    @property
    def geo_file(self) -> Path:
        return self.dir / "geo.csv"

    @property
    def list_file(self) -> Path:
        """Citizen Lab CSV of every measured scenario URL."""
        return self.dir / "scenarios.csv"

    @property
    def scale_list_file(self) -> Path:
        """Scale mode: the generated sites only (every one must come out ok)."""
        return self.dir / "scale.csv"

    @property
    def scale_mixed_list_file(self) -> Path:
        """Scale mode: the generated sites plus the web_connectivity scenario rows (whose
        expected verdicts are in ``self.scenarios``)."""
        return self.dir / "scale-mixed.csv"

    @property
    def control_url(self) -> str:
        return f"http://{A.HELPER_ADDR}:{A.HELPER_PORT}"

    @property
    def helper_running(self) -> bool:
        p = self.state.data.get("processes", {}).get("helper")
        return bool(p) and procinfo.alive(p[0], p[1])

    # ---- building ----------------------------------------------------------------------
    @classmethod
    def up(cls, scenario_files: Sequence[str | Path] | None = None, scale: int = 0,
           detached: bool = False, lifetime_s: float | None = None, helper: bool = True,
           reap: bool = True) -> Lab:
        """Build a complete lab.  ``detached``: the lab outlives this process (CLI ``up``)."""
        files = list(scenario_files) if scenario_files is not None else default_scenario_files()
        sset = load_files(files)
        plan = build_plan(sset, scale=scale)
        _preflight()
        if reap:
            nsctl.reap_stale()
        life = lifetime_s or (DETACHED_LIFETIME_S if detached else ATTACHED_LIFETIME_S)
        owner = None if detached else procinfo.me()
        state = nsctl.State.create(owner=owner, deadline=time.time() + life)
        lab = cls(state, sset, plan, None)
        try:
            # keep the files as they were: `attach` must see this lab's plan even if the
            # originals are edited while it runs
            saved = state.directory / "scenario-files"
            saved.mkdir()
            copies = []
            for i, f in enumerate(files):
                copy = saved / f"{i}-{Path(f).name}"
                shutil.copyfile(f, copy)
                copies.append(str(copy))
            state.record("scenario_files", copies)
            state.record("scale", scale)
            lab._build(helper=helper)
            state.record("ready", True)
        except BaseException:
            problems = nsctl.teardown(state.prefix)
            _reap_children({p[0] for p in state.data.get("processes", {}).values()})
            if problems:
                print("lab: teardown after failed start left: " + "; ".join(problems),
                      file=sys.stderr)
            raise
        return lab

    @classmethod
    def attach(cls, prefix: str) -> Lab:
        state = State.load(prefix)
        if not state.directory.exists():
            raise LabError(f"no lab {prefix} (no {state.directory})")
        sset = load_files(state.data.get("scenario_files", []))
        plan = build_plan(sset, scale=int(state.data.get("scale", 0)))
        return cls(state, sset, plan, None)

    def _build(self, helper: bool) -> None:
        self._namespaces()
        self._links()
        self.pki = make_pki(self.dir / "pki", self.plan.cert_names, broken_certs(self.plan))
        self._write_files()
        self._censor()
        procs = self._processes()
        for p in procs:
            self._start(p)
        from lab import app_endpoints  # app lists, agent config, VPN responder

        app_endpoints.prepare(self)
        if helper and helper_available():
            self._start_helper()
        self._wait_ready([p.name for p in procs] + (["helper"] if self._has("helper") else []))

    def _namespaces(self) -> None:
        names = [self.ns(r) for r in nsctl.ROLES]
        self.state.record("namespaces", names)
        self.state.record("etc_netns", [self.ns("probe"), self.ns("inet")])
        for ns in names:
            nsctl.run(["ip", "netns", "add", ns])
        for ns in names:
            nsctl.run(["ip", "-n", ns, "link", "set", "lo", "up"])
            if self.plan.ipv6:  # dual-stack: no duplicate address detection delay either
                self.sysctl(ns, "net.ipv6.conf.all.disable_ipv6=0",
                            "net.ipv6.conf.default.disable_ipv6=0",
                            "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0",
                            "net.ipv6.conf.all.accept_ra=0", "net.ipv6.conf.default.accept_ra=0")
            else:
                self.sysctl(ns, "net.ipv6.conf.all.disable_ipv6=1",
                            "net.ipv6.conf.default.disable_ipv6=1")
        self.sysctl(self.ns("isp"), "net.ipv4.ip_forward=1")
        if self.plan.ipv6:
            self.sysctl(self.ns("isp"), "net.ipv6.conf.all.forwarding=1")
        nsctl.ETC_NETNS.mkdir(mode=0o755, exist_ok=True)
        for role, resolver in (("probe", A.ISP_RESOLVER), ("inet", A.OPEN_RESOLVER)):
            d = nsctl.ETC_NETNS / self.ns(role)
            d.mkdir(mode=0o755, parents=True, exist_ok=True)  # another run may rmdir the parent
            (d / "resolv.conf").write_text(
                f"# vigil lab {self.prefix}\nnameserver {resolver}\noptions timeout:2 attempts:2\n",
                encoding="utf-8")

    def sysctl(self, ns: str, *settings: str) -> None:
        nsctl.run(["ip", "netns", "exec", ns, "sysctl", "-qw", *settings])

    def _links(self) -> None:
        probe, isp, inet = self.ns("probe"), self.ns("isp"), self.ns("inet")
        # veth pairs are created inside the namespaces: no name ever exists in the root ns.
        # gso_max_segs 1: real links carry MTU-sized packets, not 64 KB GSO super-packets
        # (which a shaper would release in bursts, making throttled rates jumpy)
        one = ["gso_max_segs", "1"]
        nsctl.run(["ip", "-n", probe, "link", "add", A.PROBE_IF, *one, "type", "veth",
                   "peer", "name", A.ISP_PROBE_IF, *one, "netns", isp])
        nsctl.run(["ip", "-n", isp, "link", "add", A.ISP_UPLINK_IF, *one, "type", "veth",
                   "peer", "name", A.INET_IF, *one, "netns", inet])
        _batch(probe, [
            f"addr add {A.PROBE_ADDR}/24 dev {A.PROBE_IF}",
            f"link set {A.PROBE_IF} up",
            f"route add default via {A.ISP_GATEWAY} dev {A.PROBE_IF}",
        ])
        _batch(isp, [
            f"addr add {A.ISP_GATEWAY}/24 dev {A.ISP_PROBE_IF}",
            f"addr add {A.ISP_RESOLVER}/24 dev {A.ISP_PROBE_IF}",
            f"addr add {A.ISP_UPLINK}/30 dev {A.ISP_UPLINK_IF}",
            f"link set {A.ISP_PROBE_IF} up",
            f"link set {A.ISP_UPLINK_IF} up",
            f"route add {A.INET_NET} via {A.INET_DOWNLINK} dev {A.ISP_UPLINK_IF}",
        ])
        services = [A.AUTH_DNS, A.OPEN_RESOLVER, A.HELPER_ADDR, A.BLOCKPAGE_ADDR, A.PROXY_ADDR,
                    A.BROKER_ADDR, A.COLLECTOR_ADDR]
        _batch(inet, [
            f"addr add {A.INET_DOWNLINK}/30 dev {A.INET_IF}",
            f"link set {A.INET_IF} up",
            f"route add 198.18.0.0/16 via {A.ISP_UPLINK} dev {A.INET_IF}",
            *(f"addr add {a}/32 dev lo" for a in services + self.plan.inet_addresses),
        ])
        if self.plan.ipv6:
            self._links6(probe, isp, inet)

    def _links6(self, probe: str, isp: str, inet: str) -> None:
        """Dual-stack: the same topology in 2001:2::/48; only the probe has a default route."""
        _batch(probe, [
            f"addr add {A.PROBE6_ADDR}/64 dev {A.PROBE_IF} nodad",
            f"route add default via {A.ISP6_GATEWAY} dev {A.PROBE_IF}",
        ])
        _batch(isp, [
            f"addr add {A.ISP6_GATEWAY}/64 dev {A.ISP_PROBE_IF} nodad",
            f"addr add {A.ISP6_UPLINK}/64 dev {A.ISP_UPLINK_IF} nodad",
            f"route add {A.INET6_NET} via {A.INET6_DOWNLINK} dev {A.ISP_UPLINK_IF}",
        ])
        _batch(inet, [
            f"addr add {A.INET6_DOWNLINK}/64 dev {A.INET_IF} nodad",
            f"route add {A.PROBE6_NET} via {A.ISP6_UPLINK} dev {A.INET_IF}",
            *(f"addr add {a}/128 dev lo nodad" for a in self.plan.inet6_addresses),
        ])

    def _write_files(self) -> None:
        with open(self.ipdb_file, "w", encoding="utf-8") as f:
            for row in IPDB_ROWS:
                f.write("\t".join(str(x) for x in row) + "\n")
        with open(self.geo_file, "w", encoding="utf-8") as f:
            for geo in GEO_ROWS:
                f.write(",".join(geo) + "\n")
        _write_list(self.list_file, [(s.url, s.category) for s in self.scenarios.measured])
        if self.plan.scale_hosts:
            rows = [(f"https://{h}/", "CTRL") for h in self.plan.scale_hosts]
            _write_list(self.scale_list_file, rows)
            rows += [(s.url, s.category) for s in self.scenarios.measured
                     if s.control == "helper" and s.test == "web_connectivity"]
            _write_list(self.scale_mixed_list_file, rows)

    def _censor(self) -> None:
        isp, inet = self.ns("isp"), self.ns("inet")
        nsctl.run(["ip", "netns", "exec", isp, "nft", "-f", "-"],
                  input_text=render_censor_nft(self.plan))
        nsctl.run(["ip", "netns", "exec", inet, "nft", "-f", "-"],
                  input_text=render_site_nft(self.plan))
        for cmd in tc_commands(self.plan):
            nsctl.run(["ip", "netns", "exec", isp, *cmd])

    def _bpf(self) -> list[list[int]]:
        proc = nsctl.run(["ip", "netns", "exec", self.ns("isp"), "tcpdump", "-i",
                          A.ISP_PROBE_IF, "-ddd",
                          INJECTOR_BPF6 if self.plan.ipv6 else INJECTOR_BPF])
        lines = proc.stdout.split("\n")
        count = int(lines[0])
        return [[int(x) for x in line.split()] for line in lines[1 : 1 + count]]

    def _processes(self) -> list[Proc]:
        p, pki = self.plan, self.pki
        assert pki is not None
        sites = [
            {"host": s.host, "kind": s.kind, "delay_ms": s.delay_ms,
             "body_bytes": s.body_bytes, "slow_s": s.slow_s, "rate_kbit": s.rate_kbit,
             "location": s.location}
            for s in p.sites if s.kind not in ("nxdomain", "loopback", "no-address")
        ]
        origins = {s.host: s.address for s in p.sites
                   if s.kind not in ("nxdomain", "loopback", "no-address")}
        delay_line = [] if not p.path_rtt_ms else [
            Proc("delayline", "isp", "delayline", {
                "tun": DELAY_LINE_TUN, "tun_addr": DELAY_LINE_ADDR, "delays": p.path_rtt_ms,
                "probe_if": A.ISP_PROBE_IF, "uplink_if": A.ISP_UPLINK_IF,
            }),
        ]
        return [
            *delay_line,
            Proc("auth-dns", "inet", "dns", {
                "role": "authoritative", "listen": [A.AUTH_DNS], "delay_ms": AUTH_DNS_DELAY_MS,
                "zone": p.zone, "zone_suffixes": ["test"], "isp_sources": ["198.18.0.0/16"],
            }),
            Proc("open-resolver", "inet", "dns", {
                "role": "resolver", "listen": [A.OPEN_RESOLVER], "upstream": A.AUTH_DNS,
                "source": A.OPEN_RESOLVER, "delay_ms": 0,
                "truncate_udp": p.truncate_udp, "delegations": self._delegations(),
            }),
            Proc("isp-resolver", "isp", "dns", {
                "role": "resolver", "listen": [A.ISP_RESOLVER], "upstream": A.AUTH_DNS,
                "source": A.ISP_UPLINK, "delay_ms": ISP_RESOLVER_DELAY_MS,
                "truncate_udp": p.truncate_udp, "delegations": self._delegations(),
                "overrides": p.resolver_overrides,
            }),
            Proc("web", "inet", "web", {
                "mode": "sites", "listen": p.listen_addresses, "sites": sites,
                "scale_domain": SCALE_DOMAIN if p.scale_hosts else "",
                "accept_delay_ms": DEFAULT_SITE_DELAY_MS,
                "cert_file": str(pki.site_cert), "key_file": str(pki.site_key),
                # a misconfigured site's own address presents its broken leaf to any name
                "broken_certs": {p.site(h).address: [str(c), str(k)]
                                 for h, (c, k) in pki.broken.items()},
                "isp_sources": [str(A.ISP_CLIENTS)],
            }),
            Proc("isp-proxy", "inet", "proxy", {
                "listen": A.PROXY_ADDR, "origins": origins,
            }),
            Proc("blockpage", "inet", "web", {
                "mode": "blockpage", "page": "iran", "listen": [A.BLOCKPAGE_ADDR],
                "accept_delay_ms": 5,
                "cert_file": str(pki.blockpage_cert), "key_file": str(pki.blockpage_key),
            }),
            Proc("injector", "isp", "injector", {
                "iface": A.ISP_PROBE_IF, "bpf": self._bpf(), "table": CENSOR_TABLE,
                "dns": p.inject_dns, "tls": p.inject_tls, "http": p.inject_http,
                "dns_tcp": p.inject_dns_tcp, "ipv6": p.ipv6,
                "log_file": str(self.dir / "injector.jsonl"),
            }),
        ]

    def _delegations(self) -> dict[str, list[Any]]:
        """The helper's whoami zone, delegated to its DNS server (when the helper runs)."""
        return {WHOAMI_ZONE: [A.HELPER_ADDR, 53]}

    def _common_cfg(self, name: str) -> dict[str, Any]:
        return {
            "owner": self.state.data.get("owner"),
            "deadline": float(self.state.data["deadline"]),
            "ready_file": str(self.dir / f"{name}.ready"),
        }

    def _start(self, proc: Proc) -> None:
        cfg = {**proc.config, **self._common_cfg(proc.name)}
        cfg_path = self.dir / f"{proc.name}.json"
        cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
        argv = [sys.executable, "-m", f"lab.servers.{proc.module}", str(cfg_path)]
        self._spawn(proc.name, proc.role, argv)

    def _start_helper(self) -> None:
        bindir = Path(sys.executable).parent
        argv = [str(bindir / "vigil-collector"), "helper", "--host", A.HELPER_ADDR,
                "--port", str(A.HELPER_PORT), "--allow-range", str(A.LAB_RANGE),
                "--ipdb", str(self.ipdb_file), "--ca-file", str(self.ca_file),
                "--resolver", A.OPEN_RESOLVER, "--allow-range", str(A.LAB_RANGE6),
                # resolver attribution and location country
                "--dns-whoami-zone", WHOAMI_ZONE, "--dns-listen", f"{A.HELPER_ADDR}:53",
                "--geo", str(self.geo_file),
                # the lab measures the engine, not the helper's rate limiter
                "--rate-per-minute", "1000000",
                # the throttling test's bulk endpoint: any SNI, on 443 like a site
                "--bulk-port", "443"]
        probes_file = self._enrol_agent()
        if probes_file is not None:
            argv += ["--probes-file", str(probes_file)]
        else:
            argv += ["--mode", "open"]
        cfg = {**self._common_cfg("helper"), "argv": argv, "cwd": str(self.dir),
               "ready_tcp": [A.HELPER_ADDR, A.HELPER_PORT], "ready_timeout": 25,
               "child_pid_file": str(self.dir / "helper.child.pid"),
               "env": {"HOME": str(self.dir / "helper-home")}}
        (self.dir / "helper-home").mkdir(exist_ok=True)
        cfg_path = self.dir / "helper.json"
        cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
        self._spawn("helper", "inet",
                    [sys.executable, "-m", "lab.servers.guard", str(cfg_path)])

    def _enrol_agent(self) -> Path | None:
        """Give the lab's agent a key and enrol it with the helper (signed mode, as deployed).
        None when this checkout's agent cannot make a key yet (the helper then runs open)."""
        agent = Path(sys.executable).parent / "vigil-agent"
        env = {**os.environ, **self.agent_env()}
        proc = subprocess.run([str(agent), "init", "--json", "--state-dir",
                               env["VIGIL_STATE_DIR"]], capture_output=True, text=True,
                              timeout=30, env=env, check=False)
        if proc.returncode != 0:
            return None
        info = json.loads(proc.stdout)
        path = self.dir / "probes.jsonl"
        path.write_text(json.dumps({"probe_id": info["probe_id"],
                                    "public_key": info["public_key"], "revoked": False}) + "\n",
                        encoding="utf-8")
        self.state.record("probe_id", info["probe_id"])
        return path

    def _has(self, name: str) -> bool:
        return name in self.state.data.get("processes", {})

    def _spawn(self, name: str, role: str, argv: list[str]) -> None:
        log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        try:
            child = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(role), *argv], stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO), env=env,
                start_new_session=True,  # a Ctrl-C at the terminal must not kill half a lab
            )
        finally:
            log.close()
        self.state.add_process(name, child.pid)
        _CHILDREN[child.pid] = child

    def _wait_ready(self, names: list[str]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        pending = set(names)
        while pending and time.monotonic() < deadline:
            for name in sorted(pending):
                if (self.dir / f"{name}.ready").exists():
                    pending.discard(name)
                    continue
                pid, started = self.state.data["processes"][name]
                if not procinfo.alive(pid, started):
                    raise LabError(
                        f"lab process {name} exited during start:\n{self.log_tail(name)}")
            time.sleep(0.05)
        if pending:
            raise LabError(f"lab processes not ready after {READY_TIMEOUT_S}s: "
                           + ", ".join(f"{n}:\n{self.log_tail(n)}" for n in sorted(pending)))

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            text = (self.dir / f"{name}.log").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # ---- the control helper blocked by the censor (a phase of its own) --------------------
    def block_helper(self) -> None:
        """The censor resets every connection from the probe to the helper's address."""
        self._helper_rule("add")

    def unblock_helper(self) -> None:
        self._helper_rule("delete")

    def _helper_rule(self, verb: str) -> None:
        proc = self.run_in("isp", ["nft", verb, "element", "inet", CENSOR_TABLE, "ip_reset",
                                   f"{{ {A.HELPER_ADDR} }}"], timeout=10)
        if proc.returncode != 0:
            raise RuntimeError(f"nft {verb} helper block: {proc.stderr.strip()}")

    # ---- using ---------------------------------------------------------------------------
    def exec_argv(self, role: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(role), *argv]

    def run_in(self, role: str, argv: Sequence[str], timeout: float = 60.0,
               env: dict[str, str] | None = None,
               input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside a namespace (bounded by ``timeout``), capturing its output."""
        full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        return subprocess.run(self.exec_argv(role, argv), capture_output=True, text=True,
                              timeout=timeout, cwd=str(REPO), env=full_env, input=input_text,
                              check=False)

    def client(self, role: str, checks: list[dict[str, Any]], parallel: bool = True,
               timeout: float = 60.0) -> list[dict[str, Any]]:
        """Run lab.client inside ``role``'s namespace and return one result per check."""
        return self.clients({role: checks}, parallel=parallel, timeout=timeout)[role]

    def clients(self, by_role: dict[str, list[dict[str, Any]]], parallel: bool = True,
                timeout: float = 60.0) -> dict[str, list[dict[str, Any]]]:
        """Like ``client`` for several namespaces at once (e.g. probe and control side by
        side), each in its own process, all running concurrently."""
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        procs = {}
        for role, checks in by_role.items():
            spec = json.dumps({"parallel": parallel, "checks": checks})
            procs[role] = subprocess.Popen(
                self.exec_argv(role, [sys.executable, "-m", "lab.client", spec]),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, cwd=str(REPO), env=env)
        deadline = time.monotonic() + timeout
        results: dict[str, list[dict[str, Any]]] = {}
        errors = []
        for role, proc in procs.items():
            try:
                out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate(timeout=5)
                errors.append(f"{role}: client timed out after {timeout}s")
                continue
            if proc.returncode != 0:
                errors.append(f"{role}: {err.strip()[-2000:]}")
                continue
            results[role] = json.loads(out)
        if errors:
            raise LabError("lab client failed: " + "; ".join(errors))
        return results

    def agent_env(self) -> dict[str, str]:
        """A private home for the agent, so a lab run never touches the real probe's files."""
        home = self.dir / "agent-home"
        for sub in ("", "config", "data", "state", "cache"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        config = home / "agent.toml"
        # defaults, and the lab's operator accepts the consent text for its probe (a lab made
        # before consent existed gets the line on top; `make run` appends [mqtt] below)
        text = config.read_text(encoding="utf-8") if config.exists() else ""
        if "consent_version" not in text:
            config.write_text(
                "# vigil lab agent: defaults only\n[agent]\n"
                f'consent_version = "{load_consent_text().version}"\n'
                + text.replace("# vigil lab agent: defaults only\n", ""),
                encoding="utf-8",
            )
        return {"HOME": str(home), "XDG_CONFIG_HOME": str(home / "config"),
                "XDG_DATA_HOME": str(home / "data"), "XDG_STATE_HOME": str(home / "state"),
                "XDG_CACHE_HOME": str(home / "cache"), "VIGIL_CONFIG": str(config),
                "VIGIL_STATE_DIR": str(home / "state" / "vigil")}

    def agent_argv(self, lists: Sequence[str | Path], output: str | Path,
                   tests: str = "web_connectivity", control_url: str | None = None,
                   extra: Sequence[str] = ()) -> list[str]:
        """The real agent, in the probe namespace (its system resolver is the ISP's)."""
        agent = Path(sys.executable).parent / "vigil-agent"
        argv = [str(agent), "run", "--once"]
        for lst in lists:
            argv += ["--list", str(lst)]
        argv += ["--tests", tests, "--control-url", control_url or self.control_url,
                 "--ca-file", str(self.ca_file), "--output", str(output), *extra]
        return self.exec_argv("probe", argv)

    def injector_events(self) -> list[dict[str, Any]]:
        path = self.dir / "injector.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip()]

    def set_access_rate(self, rate_kbit: int | None) -> None:
        """The probe's access link: every download no censor rule shaped goes through one HTB
        class at ``rate_kbit`` (a slow home line); None: back to the link's full speed."""
        isp, dev = self.ns("isp"), A.ISP_PROBE_IF
        nsctl.run(["ip", "netns", "exec", isp, "nft", "delete", "table", "inet", ACCESS_TABLE],
                  check=False)
        if rate_kbit is None:
            return
        burst = str(max(1600, rate_kbit * 1000 // 8 // 50))
        nsctl.run(["ip", "netns", "exec", isp, "tc", "class", "replace", "dev", dev, "parent",
                   "1:", "classid", ACCESS_CLASS, "htb", "rate", f"{rate_kbit}kbit", "ceil",
                   f"{rate_kbit}kbit", "burst", burst, "cburst", burst])
        # after the censor's chain (priority 0): only flows it left unclassified
        nsctl.run(["ip", "netns", "exec", isp, "nft", "-f", "-"], input_text=(
            f"table inet {ACCESS_TABLE} {{\n chain access {{\n"
            "  type filter hook forward priority 10; policy accept;\n"
            f'  oifname "{dev}" meta priority none meta priority set {ACCESS_CLASS}\n'
            " }\n}\n"))

    def shutdown(self) -> None:
        """Total shutdown: the ISP's uplink goes down (the probe keeps its local link)."""
        nsctl.run(["ip", "-n", self.ns("isp"), "link", "set", A.ISP_UPLINK_IF, "down"])

    def restore(self) -> None:
        isp, inet = self.ns("isp"), self.ns("inet")
        nsctl.run(["ip", "-n", isp, "link", "set", A.ISP_UPLINK_IF, "up"])
        # routes through a downed link are flushed by the kernel: put them back
        for _ in range(20):
            proc = nsctl.run(["ip", "-n", isp, "route", "replace", str(A.INET_NET), "via",
                              A.INET_DOWNLINK, "dev", A.ISP_UPLINK_IF], check=False)
            if proc.returncode == 0:
                break
            time.sleep(0.05)
        else:
            raise LabError(f"could not restore the uplink route: {proc.stderr.strip()}")
        nsctl.run(["ip", "-n", inet, "route", "replace", "198.18.0.0/16", "via", A.ISP_UPLINK,
                   "dev", A.INET_IF])

    def uplink_is_up(self) -> bool:
        proc = nsctl.run(["ip", "-n", self.ns("isp"), "-o", "link", "show", A.ISP_UPLINK_IF])
        return "state UP" in proc.stdout or ",UP" in proc.stdout.split(">")[0]

    def run_events(self, events: Sequence[Event], t0: float) -> threading.Thread:
        """Play lab-wide events (shutdowns) relative to ``t0`` in a bounded background thread."""
        def play() -> None:
            for ev in sorted(events, key=lambda e: e.after_s):
                _sleep_until(t0 + ev.after_s)
                if ev.kind == "shutdown":
                    self.shutdown()
                    try:
                        _sleep_until(t0 + ev.after_s + ev.duration_s)
                    finally:
                        self.restore()
        thread = threading.Thread(target=play, name=f"lab-events-{self.prefix}", daemon=True)
        thread.start()
        return thread

    def status(self) -> dict[str, Any]:
        procs = {
            name: {"pid": p[0], "alive": procinfo.alive(p[0], p[1])}
            for name, p in self.state.data.get("processes", {}).items()
        }
        present = set(nsctl.list_netns())
        return {
            "prefix": self.prefix,
            "state_dir": str(self.dir),
            "namespaces": {self.ns(r): self.ns(r) in present for r in nsctl.ROLES},
            "processes": procs,
            "helper": ("running" if self.helper_running else
                       "not available (collector/cli/helper.py missing)"
                       if not helper_available() else "not running"),
            "control_url": self.control_url,
            "ca_file": str(self.ca_file),
            "ipdb": str(self.ipdb_file),
            "list": str(self.list_file),
            "scale_list": str(self.scale_list_file) if self.plan.scale_hosts else None,
            "scale_mixed_list": (str(self.scale_mixed_list_file) if self.plan.scale_hosts
                                 else None),
            "scenarios": len(self.scenarios.scenarios),
            "measured": len(self.scenarios.measured),
            "scale_sites": len(self.plan.scale_hosts),
            "owner": self.state.data.get("owner"),
            "stale": self.state.is_stale(),
        }

    def down(self) -> None:
        problems = nsctl.teardown(self.prefix)
        _reap_children({p[0] for p in self.state.data.get("processes", {}).values()})
        if problems:
            raise LabError("lab teardown incomplete: " + "; ".join(problems))

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()


_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _reap_children(pids: set[int] | None = None) -> None:
    """Collect exit statuses of lab processes we started (already killed): no zombies."""
    for pid in list(_CHILDREN):
        if pids is not None and pid not in pids:
            continue
        child = _CHILDREN.pop(pid)
        if child.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=2)
        if child.poll() is None:  # should not happen: teardown killed it; do not leak it
            child.kill()
            child.wait(timeout=2)


def _sleep_until(t: float) -> None:
    left = t - time.time()
    if left > 0:
        time.sleep(min(left, 3600))


def _batch(ns: str, commands: list[str]) -> None:
    nsctl.run(["ip", "-n", ns, "-batch", "-"], input_text="\n".join(commands) + "\n")


def _write_list(path: Path, rows: list[tuple[str, str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["url", "category_code", "category_description", "date_added", "source",
                    "notes"])
        for url, cat in rows:
            w.writerow([url, cat, "", "2024-01-01", "vigil-lab", ""])


def _preflight() -> None:
    """Fail early and clearly when the machine cannot host the lab."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, nftables, tc)")
    missing = [t for t in ("ip", "nft", "tc", "tcpdump", "sysctl")
               if not any(os.access(os.path.join(d, t), os.X_OK)
                          for d in [*os.environ.get("PATH", "").split(":"), "/usr/sbin",
                                    "/sbin"])]
    if missing:
        raise LabError(f"missing tools: {', '.join(missing)} (run `make deps`)")
