"""The path lab: a censor at a known hop, routers before and after it, for packet evidence.

    probe ── hop1 ── hop2 ── hop3 (censor) ── hop4 ── server (site 198.19.1.5/.6, resolver)
                                                 └── detour ──┘  (the .6 site's resets only)

Link k joins node k-1 and node k in 198.18.(100+k).0/24: node k's side is .1 (the address
its ICMP time-exceeded comes from: hop k), node k-1's side is .2.  The censor (the lab's
on-path injector) sniffs at the hop it sits on and forges resets and DNS answers with its own
initial TTL.  The server resets the ``self-reset`` and ``detour-reset`` names itself; the
.6 site's resets go back over the detour (one hop longer: the path changes inside a flow).
Built and torn down like the main lab (``nsctl``: a unique prefix, recorded namespaces and
processes, bounded lifetime); nothing is created in the root namespace.

    lab = PathLab.up(routers=4, censor_hop=3, censor_ttl=64)
    try:
        lab.probe_json("web", "https://blocked.lab.test/")
    finally:
        lab.down()
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import nsctl, procinfo
from lab.lab import INJECTOR_BPF
from lab.nsctl import LabError, State

REPO = Path(__file__).resolve().parents[1]
SITE = "198.19.1.5"
DETOUR_SITE = "198.19.1.6"  # the same server; its resets take the detour
RESOLVER = "198.19.0.53"
HELPER = "198.19.0.10"  # the control helper, on the detour router (its IP database names hops)
HELPER_PORT = 8080
ISP_ASN, ISP_NAME = 64500, "Lab ISP"  # the probe's network: the probe and hops 1..3
TRANSIT_ASN, TRANSIT_NAME = 64510, "Lab Internet"  # hops 4.. and the server
ISP_HOPS = 3
FORGED_ANSWER = "10.10.34.35"
BLOCKED = "blocked.lab.test"  # the censor resets TLS and HTTP for it
DNS_BLOCKED = "dnsblocked.lab.test"  # the censor forges its DNS answer
OPEN = "open.lab.test"
SELF_RESET = "self-reset.lab.test"  # the server itself resets it
DETOUR_RESET = "detour-reset.lab.test"  # ... and its reset comes back one hop longer
TWIN = "example.com"  # the benign name (NetConfig.benign_sni)
NAMES = (BLOCKED, DNS_BLOCKED, OPEN, SELF_RESET, DETOUR_RESET, TWIN)
READY_TIMEOUT_S = 30.0
LIFETIME_S = 1800.0


def link_net(k: int) -> str:
    return f"198.18.{100 + k}"


def hop_address(k: int) -> str:
    """What hop ``k`` answers a trace from (its side of the link towards the probe)."""
    return f"{link_net(k)}.1"


@dataclass(frozen=True, slots=True)
class PathLayout:
    routers: int = 4
    censor_hop: int = 3
    censor_ttl: int = 64  # the injector's forged packets leave with this TTL

    @property
    def server_hop(self) -> int:
        return self.routers + 1


class PathLab:
    def __init__(self, state: State, layout: PathLayout) -> None:
        self.state = state
        self.layout = layout
        self._children: list[subprocess.Popen[bytes]] = []

    @property
    def dir(self) -> Path:
        return self.state.directory

    def ns(self, role: str) -> str:
        return nsctl.ns_name(self.state.prefix, role)

    @property
    def ca_file(self) -> Path:
        return self.dir / "path-ca.pem"

    @classmethod
    def up(cls, routers: int = 4, censor_hop: int = 3, censor_ttl: int = 64) -> PathLab:
        if not 1 <= censor_hop <= routers <= 20:
            raise LabError("the censor sits on one of 1..20 routers")
        nsctl.reap_stale()
        state = State.create(owner=procinfo.me(), deadline=time.time() + LIFETIME_S)
        lab = cls(state, PathLayout(routers, censor_hop, censor_ttl))
        try:
            lab._build()
        except BaseException:
            lab.down()
            raise
        return lab

    def down(self) -> list[str]:
        problems = nsctl.teardown(self.state.prefix)  # kills our recorded processes by pid
        for child in self._children:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                problems.append(f"lab process {child.pid} did not exit")
        return problems

    # ---- building ----------------------------------------------------------------------
    def _roles(self) -> list[str]:
        return ["probe", *[f"hop{k}" for k in range(1, self.layout.routers + 1)], "server"]

    def _ip(self, role: str, *args: str) -> None:
        nsctl.run(["ip", "-n", self.ns(role), *args])

    def _sysctl(self, role: str, *settings: str) -> None:
        nsctl.run(["ip", "netns", "exec", self.ns(role), "sysctl", "-q", "-w", *settings])

    def _build(self) -> None:
        roles = [*self._roles(), "detour"]
        self.state.record("namespaces", [self.ns(r) for r in roles])
        for role in roles:
            nsctl.run(["ip", "netns", "add", self.ns(role)])
            self._ip(role, "link", "set", "lo", "up")
            self._sysctl(role, "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                         "net.ipv4.conf.default.rp_filter=0")
        nodes = self._roles()
        n = self.layout.routers
        for k in range(1, len(nodes)):
            self._link(nodes[k - 1], "right0", f"{link_net(k)}.2", nodes[k], "left0",
                       f"{link_net(k)}.1")
        # the detour: hop N -- detour -- server
        self._link(nodes[n], "detour0", "198.18.120.1", "detour", "left0", "198.18.120.2")
        self._link("detour", "right0", "198.18.121.1", "server", "detour0", "198.18.121.2")
        for k, role in enumerate(nodes):
            if role != "server":
                self._ip(role, "route", "add", "default", "via", f"{link_net(k + 1)}.1")
            if k > 0:
                self._ip(role, "route", "add", "198.18.96.0/20", "via", f"{link_net(k)}.2")
        self._ip("detour", "route", "add", "198.18.96.0/20", "via", "198.18.120.1")
        self._ip("detour", "route", "add", "198.19.0.0/16", "via", "198.18.121.2")
        for addr in (SITE, DETOUR_SITE, RESOLVER):
            self._ip("server", "addr", "add", f"{addr}/32", "dev", "lo")
        # the control helper lives on the detour router: an uncensored vantage point
        self._ip("detour", "addr", "add", f"{HELPER}/32", "dev", "lo")
        self._ip("server", "route", "add", f"{HELPER}/32", "via", "198.18.121.1")
        # the detour site's resets leave over the detour (a path change inside the flow)
        self._ip("server", "rule", "add", "fwmark", "1", "lookup", "100")
        self._ip("server", "route", "add", "default", "via", "198.18.121.1", "table", "100")
        nsctl.run(["ip", "netns", "exec", self.ns("server"), "nft", "-f", "-"], input_text=(
            "table ip vigil_path {\n chain out {\n  type route hook output priority mangle;\n"
            f"  ip saddr {DETOUR_SITE} tcp flags & rst == rst meta mark set 1\n }}\n}}\n"))
        self._pki()
        self._start("pathsite", "server", "lab.servers.pathsite", {
            "site": "0.0.0.0", "resolver": RESOLVER, "delay_ms": 50, "dns_delay_ms": 30,
            "reset_names": [SELF_RESET, DETOUR_RESET],
            "cert_file": str(self.dir / "path-site.pem"),
            "key_file": str(self.dir / "path-site.key"),
            "zone": {**{name: [SITE] for name in NAMES}, DETOUR_RESET: [DETOUR_SITE]},
        })
        censor = f"hop{self.layout.censor_hop}"
        self._start("injector", censor, "lab.servers.injector", {
            "iface": "left0", "bpf": self._bpf(censor), "table": "vigil_censor",
            "ttl": self.layout.censor_ttl,
            "tls": [{"sni": BLOCKED, "action": "reset"}],
            "http": [{"host": BLOCKED, "action": "reset"}],
            "dns": [{"name": DNS_BLOCKED, "a": [FORGED_ANSWER]}],
            "dns_tcp": [], "ipv6": False, "log_file": str(self.dir / "injector.jsonl"),
        })
        self._start_helper()
        self._wait_ready(["pathsite", "injector", "helper"])

    def ipdb_rows(self) -> list[tuple[str, str, int, str, str]]:
        """The helper's IP database: the probe's link and hops 1..ISP_HOPS are the probe's
        ISP, every later hop and the server are another network."""
        rows = [(f"{link_net(k)}.0", f"{link_net(k)}.255", ISP_ASN, "IR", ISP_NAME)
                for k in range(1, ISP_HOPS + 1)]
        rows += [(f"{link_net(k)}.0", f"{link_net(k)}.255", TRANSIT_ASN, "US", TRANSIT_NAME)
                 for k in range(ISP_HOPS + 1, self.layout.routers + 2)]
        rows.append(("198.19.0.0", "198.19.255.255", TRANSIT_ASN, "US", TRANSIT_NAME))
        return sorted(rows, key=lambda r: tuple(int(x) for x in r[0].split(".")))

    def _start_helper(self) -> None:
        ipdb = self.dir / "ipdb.tsv"
        ipdb.write_text("".join("\t".join(str(x) for x in row) + "\n"
                                for row in self.ipdb_rows()), encoding="utf-8")
        argv = [str(Path(sys.executable).parent / "vigil-collector"), "helper",
                "--host", HELPER, "--port", str(HELPER_PORT), "--allow-range", "198.18.0.0/15",
                "--ipdb", str(ipdb), "--ca-file", str(self.ca_file), "--resolver", RESOLVER,
                "--mode", "open", "--rate-per-minute", "1000000"]
        (self.dir / "helper-home").mkdir(exist_ok=True)
        self._start("helper", "detour", "lab.servers.guard", {
            "argv": argv, "cwd": str(self.dir), "ready_tcp": [HELPER, HELPER_PORT],
            "ready_timeout": 25, "child_pid_file": str(self.dir / "helper.child.pid"),
            "env": {"HOME": str(self.dir / "helper-home")}})

    @property
    def control_url(self) -> str:
        return f"http://{HELPER}:{HELPER_PORT}"

    def _link(self, a: str, a_if: str, a_addr: str, b: str, b_if: str, b_addr: str) -> None:
        self._ip(a, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns",
                 self.ns(b))
        self._ip(a, "addr", "add", f"{a_addr}/24", "dev", a_if)
        self._ip(b, "addr", "add", f"{b_addr}/24", "dev", b_if)
        self._ip(a, "link", "set", a_if, "up")
        self._ip(b, "link", "set", b_if, "up")

    def _pki(self) -> None:
        import trustme

        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(self.ca_file))
        leaf = ca.issue_cert(*NAMES)
        leaf.cert_chain_pems[0].write_to_path(str(self.dir / "path-site.pem"))
        leaf.private_key_pem.write_to_path(str(self.dir / "path-site.key"))

    def _bpf(self, role: str) -> list[list[int]]:
        proc = nsctl.run(["ip", "netns", "exec", self.ns(role), "tcpdump", "-i", "left0",
                          "-ddd", INJECTOR_BPF])
        lines = proc.stdout.split("\n")
        return [[int(x) for x in line.split()] for line in lines[1 : 1 + int(lines[0])]]

    def _start(self, name: str, role: str, module: str, config: dict[str, Any]) -> None:
        cfg = {**config, "owner": self.state.data.get("owner"),
               "deadline": float(self.state.data["deadline"]),
               "ready_file": str(self.dir / f"{name}.ready")}
        path = self.dir / f"{name}.json"
        path.write_text(json.dumps(cfg), encoding="utf-8")
        log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        try:
            child = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(role), sys.executable, "-m", module, str(path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO),
                env=env, start_new_session=True)
        finally:
            log.close()
        self.state.add_process(name, child.pid)
        self._children.append(child)

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
                    raise LabError(f"path lab process {name} exited during start: "
                                   + self.log_tail(name))
            time.sleep(0.05)
        if pending:
            raise LabError(f"path lab processes not ready: {sorted(pending)}")

    def log_tail(self, name: str) -> str:
        try:
            return (self.dir / f"{name}.log").read_text(encoding="utf-8", errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    # ---- using -------------------------------------------------------------------------
    def probe_json(self, command: str, url: str, timeout: float = 120.0) -> dict[str, Any]:
        """Run ``lab.pathprobe`` in the probe's namespace; its JSON answer."""
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.run(
            ["ip", "netns", "exec", self.ns("probe"), sys.executable, "-m", "lab.pathprobe",
             command, url, "--resolver", RESOLVER, "--ca-file", str(self.ca_file),
             "--control-url", self.control_url],
            capture_output=True, text=True, timeout=timeout, env=env, cwd=str(REPO),
            check=False)
        if proc.returncode != 0:
            raise LabError(f"pathprobe {command} {url} failed: {proc.stderr[-3000:]}")
        data: dict[str, Any] = json.loads(proc.stdout)
        return data

    def agent_cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """``vigil-agent ARGS`` in the probe's namespace, configured for this lab (packets
        spawned, the lab's resolver and CA, the lab's control helper)."""
        home = self.dir / "agent"
        home.mkdir(exist_ok=True)
        cfg = home / "agent.toml"
        cfg.write_text(
            f'[agent]\nstate_dir = "{home}"\n\n[net]\nresolver = "{RESOLVER}"\n'
            f'\n[control]\nurl = "{self.control_url}"\n'
            f'\n[packets]\nspawn = true\n\n[censor_trace]\nmax_hops = 8\ntimeout = 0.8\n',
            encoding="utf-8")
        agent = Path(sys.executable).parent / "vigil-agent"
        env = {**os.environ, "PYTHONPATH": str(REPO), "VIGIL_STATE_DIR": str(home)}
        return subprocess.run(
            ["ip", "netns", "exec", self.ns("probe"), str(agent), *args, "--config", str(cfg),
             "--ca-file", str(self.ca_file)],
            capture_output=True, text=True, timeout=timeout, env=env, cwd=str(REPO),
            check=False)

    def injector_events(self) -> list[dict[str, Any]]:
        path = self.dir / "injector.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip()]
