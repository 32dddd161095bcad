"""Turn scenarios into a concrete lab plan: addresses, DNS zone, sites, censor rules, shaping.

Pure: no I/O.  The plan is what ``lab.py`` applies (nft ruleset, tc commands, server configs),
and it is JSON-serialisable so every server process gets exactly its share of it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Any

from lab import addressing as A
from lab.scenarios import PROXY_ANSWER, Scenario, ScenarioSet

DEFAULT_SITE_DELAY_MS = 40  # a "distant" server: the on-path injector must win the race
ISP_RESOLVER_DELAY_MS = 20
AUTH_DNS_DELAY_MS = 10
SNI_THROTTLE_KBIT = 130  # Russia's Twitter throttling, March 2021
IP_THROTTLE_KBIT = 256
DEFAULT_QUEUE_MS = 200  # a throttle's queue: about 200 ms of its rate
SCALE_DOMAIN = "scale.lab.test"
SCALE_SERVERS = 8  # scale-mode names are spread over this many addresses
FLOW_TIMEOUT_S = 300  # how long a flow stays in the censor's drop/reset/throttle sets


@dataclass(frozen=True, slots=True)
class SitePlan:
    host: str
    address: str  # what the authoritative DNS answers to everyone but the ISP's resolver
    kind: str
    delay_ms: int
    body_bytes: int
    slow_s: float
    isp_address: str | None = None  # CDN: what the ISP's resolver is told instead
    scenario: str = ""
    rate_kbit: int = 0  # the server paces its answers to this rate (0: as fast as it can)
    location: str = ""  # redirect-to: where everyone is sent
    address6: str | None = None  # dual-stack and IPv6-only sites


@dataclass(frozen=True, slots=True)
class ShapingClass:
    classid: str  # "1:10" (hex minor, as tc and nft write it)
    rate_kbit: int
    # how much the shaper buffers, in ms of its rate: censors' shapers buffer little; 0 is a
    # policer (a queue of two packets: what does not fit the rate is dropped, not delayed)
    queue_ms: int = 200


@dataclass
class LabPlan:
    sites: list[SitePlan] = field(default_factory=list)
    inet_addresses: list[str] = field(default_factory=list)  # on inet's lo
    listen_addresses: list[str] = field(default_factory=list)  # the web server binds these
    down_timeout_addresses: list[str] = field(default_factory=list)  # inet drops (site down)
    zone: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    resolver_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    inject_dns: list[dict[str, Any]] = field(default_factory=list)
    inject_tls: list[dict[str, Any]] = field(default_factory=list)
    inject_http: list[dict[str, Any]] = field(default_factory=list)
    ip_drop: list[str] = field(default_factory=list)
    ip_reset: list[str] = field(default_factory=list)
    ip_mitm: list[str] = field(default_factory=list)
    ip_throttle: dict[str, str] = field(default_factory=dict)  # address -> classid
    shaping: list[ShapingClass] = field(default_factory=list)
    scale_hosts: list[str] = field(default_factory=list)
    path_rtt_ms: dict[str, int] = field(default_factory=dict)  # address -> added round trip
    path_loss_permille: dict[str, int] = field(default_factory=dict)  # address -> loss/1000
    # DNS answers too big for UDP, the censor's DNS-over-TCP resets
    truncate_udp: list[str] = field(default_factory=list)
    inject_dns_tcp: list[dict[str, Any]] = field(default_factory=list)
    # IPv6 (only when some site has an IPv6 address: the lab is then dual-stack)
    inet6_addresses: list[str] = field(default_factory=list)
    ip6_drop: list[str] = field(default_factory=list)
    ip6_reset: list[str] = field(default_factory=list)
    ip6_noroute: list[str] = field(default_factory=list)  # the ISP has no route: ICMPv6 error
    down6_drop: list[str] = field(default_factory=list)  # the site's own v6 firewall drops

    @property
    def ipv6(self) -> bool:
        return bool(self.inet6_addresses)

    @property
    def cert_names(self) -> list[str]:
        """Names on the lab CA's site certificate: every served site with a sound one."""
        names = sorted({s.host for s in self.sites if s.kind not in _NO_SITE_CERT})
        if self.scale_hosts:
            names.append(f"*.{SCALE_DOMAIN}")
        return names

    def site(self, host: str) -> SitePlan:
        for s in self.sites:
            if s.host == host:
                return s
        raise KeyError(host)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["scale_hosts"] = len(self.scale_hosts)
        return data


# Sites without a (valid) name on the shared certificate: nothing served, or their own leaf.
_NO_SITE_CERT = frozenset({"nxdomain", "loopback", "no-address", "expired-cert",
                           "wrong-name-cert", "untrusted-cert"})
LOOPBACK_ANSWER = "127.0.0.1"


def broken_certs(plan: LabPlan) -> dict[str, str]:
    """host -> broken-certificate kind, for pki.make_pki."""
    kinds = ("expired-cert", "wrong-name-cert", "untrusted-cert")
    return {s.host: s.kind for s in plan.sites if s.kind in kinds}


def build_plan(sset: ScenarioSet, scale: int = 0) -> LabPlan:
    plan = LabPlan()
    site_pool = A.AddressPool(A.SITE_POOL)
    cdn_pool = A.AddressPool(A.CDN_EDGE_POOL)
    group_addr: dict[str, str] = {}
    host_addr: dict[str, str] = {}
    site6_pool = A.AddressPool6(A.SITE6_POOL)
    host_addr6: dict[str, str] = {}

    for s in sset.scenarios:
        if s.host in host_addr:
            continue  # same site measured twice (http and https, or two tests)
        if s.site.address_group:
            if s.site.address_group not in group_addr:
                group_addr[s.site.address_group] = site_pool.take()
            addr = group_addr[s.site.address_group]
        else:
            addr = site_pool.take()
        host_addr[s.host] = addr
        if s.site.family != "v4":
            host_addr6[s.host] = site6_pool.take()
        _add_site(plan, s, addr, cdn_pool, host_addr6.get(s.host))

    ruled: set[str] = set()
    for s in sset.scenarios:
        if s.host in ruled:
            continue  # rows sharing a host share (identical, validated) rules
        ruled.add(s.host)
        for rule in s.censor:
            params = dict(rule.params)
            family = params.get("family", "both")
            if (rule.kind in ("tcp_drop", "tcp_reset") and not rule.target
                    and s.host in host_addr6 and family in ("v6", "both")):
                (plan.ip6_drop if rule.kind == "tcp_drop" else plan.ip6_reset).append(
                    host_addr6[s.host])
                if s.site.family == "v6" or family == "v6":
                    continue  # the site has no IPv4 address, or the rule spares it
            if "answer" in params:
                params["answer"] = _answer_address(str(params["answer"]), host_addr, s)
            _add_rule(plan, s, rule.kind, rule.target or s.host,
                      rule.target or host_addr[s.host], params)

    if scale:
        _add_scale(plan, scale)
    plan.inet_addresses = sorted(set(plan.inet_addresses), key=_addr_key)
    plan.listen_addresses = sorted(set(plan.listen_addresses), key=_addr_key)
    plan.inet6_addresses = sorted(set(plan.inet6_addresses))
    return plan


def _answer_address(answer: str, host_addr: dict[str, str], s: Scenario) -> str:
    """A forged answer: an address, the ISP's proxy, or another scenario site's address."""
    if answer == PROXY_ANSWER:
        return A.PROXY_ADDR
    if all(part.isdigit() for part in answer.split(".")):
        return answer
    if answer not in host_addr:
        raise ValueError(f"{s.source}: answer names {answer!r}, which no scenario serves")
    return host_addr[answer]


def _add_site(plan: LabPlan, s: Scenario, addr: str, cdn_pool: A.AddressPool,
              addr6: str | None = None) -> None:
    kind = s.site.kind
    delay = DEFAULT_SITE_DELAY_MS if s.site.delay_ms is None else s.site.delay_ms
    isp_addr = None
    if kind == "cdn":
        isp_addr = cdn_pool.take()
        plan.inet_addresses.append(isp_addr)
        plan.listen_addresses.append(isp_addr)
    plan.sites.append(SitePlan(
        host=s.host, address=addr, kind=kind, delay_ms=delay, body_bytes=s.site.body_bytes,
        slow_s=s.site.slow_s, isp_address=isp_addr, scenario=s.id, rate_kbit=s.site.rate_kbit,
        location=s.site.location, address6=addr6,
    ))
    if s.site.rtt_ms:
        plan.path_rtt_ms[addr] = s.site.rtt_ms
    if s.site.loss_percent:
        plan.path_loss_permille[addr] = round(s.site.loss_percent * 10)
    if kind == "nxdomain":
        return  # the name exists nowhere: no zone entry, no server
    if kind == "loopback":
        plan.zone[s.host] = {"a": [LOOPBACK_ANSWER]}  # the owner's DNS mistake, for everyone
        return
    if kind == "no-address":
        plan.zone[s.host] = {"a": []}  # the name exists but has no address (NODATA)
        return
    entry: dict[str, Any] = {"a": [] if s.site.family == "v6" else [addr]}
    if isp_addr:
        entry["isp"] = [isp_addr]
    if addr6 is not None:
        entry["aaaa"] = [addr6]
        plan.inet6_addresses.append(addr6)
        plan.listen_addresses.append(addr6)
        if kind == "v6-path-broken":
            plan.ip6_noroute.append(addr6)
        elif kind == "v6-dead":
            plan.down6_drop.append(addr6)
    if kind == "large-dns":
        entry["tc"] = True
        plan.truncate_udp.append(s.host)
    plan.zone[s.host] = entry
    if s.site.family == "v6":
        return  # no IPv4 address to serve
    plan.inet_addresses.append(addr)
    if kind == "down-timeout":
        plan.down_timeout_addresses.append(addr)
    elif kind != "down-refused":
        plan.listen_addresses.append(addr)


def _add_rule(  # noqa: C901 - one branch per censor kind, each read in one place
    plan: LabPlan, s: Scenario, kind: str, name: str, addr: str, params: dict[str, Any]
) -> None:
    if kind == "dns_nxdomain":
        plan.resolver_overrides[name] = {"action": "nxdomain"}
    elif kind == "dns_servfail":
        plan.resolver_overrides[name] = {"action": "servfail"}
    elif kind == "dns_answer":
        plan.resolver_overrides[name] = {"action": "answer", "a": [params["answer"]]}
    elif kind == "dns_nodata":
        plan.resolver_overrides[name] = {"action": "nodata"}
    elif kind == "dns_bogon":
        plan.resolver_overrides[name] = {"action": "answer",
                                         "a": [params.get("answer", A.BOGON_ANSWER)]}
    elif kind == "dns_blockpage":
        plan.resolver_overrides[name] = {"action": "answer", "a": [A.BLOCKPAGE_ADDR]}
    elif kind == "dns_inject":
        plan.inject_dns.append({"name": name, "a": [params.get("answer", A.DEAD_ADDR)]})
    elif kind == "tcp_drop":
        plan.ip_drop.append(addr)
    elif kind == "tcp_reset":
        plan.ip_reset.append(addr)
    elif kind == "tls_mitm":
        plan.ip_mitm.append(addr)
    elif kind == "tls_reset":
        plan.inject_tls.append({"sni": name, "action": "reset",
                                "family": params.get("family", "both")})
    elif kind == "tls_drop":
        plan.inject_tls.append({"sni": name, "action": "drop",
                                "family": params.get("family", "both")})
    elif kind == "sni_throttle":
        cls = _new_class(plan, 0x100, int(params.get("rate_kbit", SNI_THROTTLE_KBIT)),
                         int(params.get("queue_ms", DEFAULT_QUEUE_MS)))
        plan.inject_tls.append({"sni": name, "action": "throttle", "classid": cls.classid})
    elif kind == "ip_throttle":
        cls = _new_class(plan, 0x10, int(params.get("rate_kbit", IP_THROTTLE_KBIT)),
                         int(params.get("queue_ms", DEFAULT_QUEUE_MS)))
        plan.ip_throttle[addr] = cls.classid
    elif kind == "http_blockpage":
        plan.inject_http.append({"host": name, "action": "blockpage",
                                 "page": params.get("page", "iran")})
    elif kind == "http_reset":
        plan.inject_http.append({"host": name, "action": "reset"})
    elif kind == "http_drop":
        plan.inject_http.append({"host": name, "action": "drop"})
    elif kind == "http_close":
        plan.inject_http.append({"host": name, "action": "close"})
    elif kind == "tls_close":
        plan.inject_tls.append({"sni": name, "action": "close"})
    elif kind == "dns_tcp_reset":
        plan.inject_dns_tcp.append({"name": name, "action": "reset"})
    else:  # pragma: no cover - scenarios.py validates kinds
        raise ValueError(f"{s.source}: unknown censor kind {kind}")


def _new_class(plan: LabPlan, base: int, rate_kbit: int,
               queue_ms: int = 200) -> ShapingClass:
    used = {int(c.classid.split(":")[1], 16) for c in plan.shaping}
    minor = base
    while minor in used:
        minor += 1
    if not 0 <= queue_ms <= 10_000:
        raise ValueError(f"queue_ms must be 0..10000, not {queue_ms}")
    cls = ShapingClass(classid=f"1:{minor:x}", rate_kbit=rate_kbit, queue_ms=queue_ms)
    plan.shaping.append(cls)
    return cls


def _add_scale(plan: LabPlan, n: int) -> None:
    if not 1 <= n <= 50_000:
        raise ValueError("scale must be 1..50000 sites")
    servers = [str(h) for h, _ in zip(A.SCALE_POOL.hosts(), range(SCALE_SERVERS), strict=False)]
    plan.inet_addresses.extend(servers)
    plan.listen_addresses.extend(servers)
    servers6: list[str] = []
    if plan.ipv6:  # a dual-stack lab: the generated sites are dual-stack too
        servers6 = [str(A.SCALE6_POOL.network_address + 1 + i) for i in range(SCALE_SERVERS)]
        plan.inet6_addresses.extend(servers6)
        plan.listen_addresses.extend(servers6)
    for i in range(n):
        host = f"s{i:05d}.{SCALE_DOMAIN}"
        plan.scale_hosts.append(host)
        entry: dict[str, Any] = {"a": [servers[i % len(servers)]]}
        if servers6:
            entry["aaaa"] = [servers6[i % len(servers6)]]
        plan.zone[host] = entry


def scale_site(host: str) -> SitePlan:
    """Scale-mode sites are generated, not listed: a small ordinary page per name."""
    return SitePlan(host=host, address="", kind="normal", delay_ms=DEFAULT_SITE_DELAY_MS,
                    body_bytes=4000 + (sum(host.encode()) % 4000), slow_s=0.0)


def _addr_key(a: str) -> tuple[int, ...]:
    if ":" in a:
        return (1 << 32, int(ipaddress.IPv6Address(a)))  # IPv6 after every IPv4 address
    return tuple(int(x) for x in a.split("."))


# ---- nftables and tc rendering -----------------------------------------------------------

CENSOR_TABLE = "vigil_censor"
SITE_TABLE = "vigil_sites"


def _set_elems(items: list[str]) -> str:
    return "" if not items else f" elements = {{ {', '.join(sorted(set(items)))} }};"


def render_censor_nft(plan: LabPlan) -> str:
    """The ISP router's ruleset.  Flow sets are filled at run time by the on-path injector;
    flow keys are always client-address . client-port . server-address . server-port."""
    p, u = A.ISP_PROBE_IF, A.ISP_UPLINK_IF
    flow = "ipv4_addr . inet_service . ipv4_addr . inet_service"
    thr = ", ".join(f"{a} : {c}" for a, c in sorted(plan.ip_throttle.items()))
    lines = [
        f"table inet {CENSOR_TABLE} {{",
        f"  set ip_drop {{ type ipv4_addr;{_set_elems(plan.ip_drop)} }}",
        f"  set ip_reset {{ type ipv4_addr;{_set_elems(plan.ip_reset)} }}",
        f"  set ip_mitm {{ type ipv4_addr;{_set_elems(plan.ip_mitm)} }}",
        "  map ip_throttle { type ipv4_addr : classid;"
        + (f" elements = {{ {thr} }};" if thr else "") + " }",
        f"  set flow_drop {{ type {flow}; flags timeout; timeout {FLOW_TIMEOUT_S}s; }}",
        f"  set flow_reset {{ type {flow}; flags timeout; timeout {FLOW_TIMEOUT_S}s; }}",
        f"  map flow_throttle {{ type {flow} : classid; flags timeout; "
        f"timeout {FLOW_TIMEOUT_S}s; }}",
        "  chain forward_filter {",
        "    type filter hook forward priority 0; policy accept;",
        # containment: nothing leaves the lab's range, whatever a DNS answer said
        f"    ip daddr != {A.LAB_RANGE} reject with icmp type net-unreachable",
        f'    iifname "{p}" ip daddr @ip_drop drop',
        f'    iifname "{p}" ip daddr @ip_reset meta l4proto tcp reject with tcp reset',
        f'    iifname "{p}" ip daddr @ip_reset reject with icmp type admin-prohibited',
        f'    iifname "{p}" ip saddr . tcp sport . ip daddr . tcp dport @flow_drop drop',
        f'    iifname "{u}" ip daddr . tcp dport . ip saddr . tcp sport @flow_drop drop',
        f'    iifname "{p}" ip saddr . tcp sport . ip daddr . tcp dport @flow_reset '
        "reject with tcp reset",
        f'    iifname "{u}" ip daddr . tcp dport . ip saddr . tcp sport @flow_reset '
        "reject with tcp reset",
        f'    oifname "{p}" meta priority set ip saddr map @ip_throttle',
        f'    oifname "{p}" meta priority set ip daddr . tcp dport . ip saddr . tcp sport '
        "map @flow_throttle",
    ]
    if plan.ipv6:
        flow6 = "ipv6_addr . inet_service . ipv6_addr . inet_service"
        lines[1:1] = [
            f"  set ip6_drop {{ type ipv6_addr;{_set_elems(plan.ip6_drop)} }}",
            f"  set ip6_reset {{ type ipv6_addr;{_set_elems(plan.ip6_reset)} }}",
            f"  set ip6_noroute {{ type ipv6_addr;{_set_elems(plan.ip6_noroute)} }}",
            f"  set flow6_drop {{ type {flow6}; flags timeout; timeout {FLOW_TIMEOUT_S}s; }}",
            f"  set flow6_reset {{ type {flow6}; flags timeout; timeout {FLOW_TIMEOUT_S}s; }}",
        ]
        lines += [
            f"    ip6 daddr != {A.LAB_RANGE6} reject with icmpv6 type no-route",
            f'    iifname "{p}" ip6 daddr @ip6_noroute reject with icmpv6 type no-route',
            f'    iifname "{p}" ip6 daddr @ip6_drop drop',
            f'    iifname "{p}" ip6 daddr @ip6_reset meta l4proto tcp reject with tcp reset',
            f'    iifname "{p}" ip6 saddr . tcp sport . ip6 daddr . tcp dport @flow6_drop drop',
            f'    iifname "{u}" ip6 daddr . tcp dport . ip6 saddr . tcp sport @flow6_drop drop',
            f'    iifname "{p}" ip6 saddr . tcp sport . ip6 daddr . tcp dport @flow6_reset '
            "reject with tcp reset",
            f'    iifname "{u}" ip6 daddr . tcp dport . ip6 saddr . tcp sport @flow6_reset '
            "reject with tcp reset",
        ]
    lines += [
        "  }",
        # a lossy path (not the censor): dropped once per direction, on the way in (packets
        # detoured through the delay line pass the forward hook twice)
        "  chain path_loss {",
        "    type filter hook forward priority -5; policy accept;",
        *(f'    iifname "{p}" ip daddr {a} numgen random mod 1000 < {pm} drop'
          for a, pm in sorted(plan.path_loss_permille.items())),
        *(f'    iifname "{u}" ip saddr {a} numgen random mod 1000 < {pm} drop'
          for a, pm in sorted(plan.path_loss_permille.items())),
        "  }",
        "  chain nat_pre {",
        "    type nat hook prerouting priority dstnat; policy accept;",
        f'    iifname "{p}" ip daddr @ip_mitm tcp dport {{ 80, 443 }} '
        f"dnat ip to {A.BLOCKPAGE_ADDR}",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def render_site_nft(plan: LabPlan) -> str:
    """inet's own firewall: sites that are down for everyone (not censorship)."""
    v6 = ""
    if plan.ipv6:
        v6 = f"  set down6_drop {{ type ipv6_addr;{_set_elems(plan.down6_drop)} }}\n"
    return (
        f"table inet {SITE_TABLE} {{\n"
        f"  set down_drop {{ type ipv4_addr;{_set_elems(plan.down_timeout_addresses)} }}\n"
        + v6 +
        "  chain input {\n"
        "    type filter hook input priority 0; policy accept;\n"
        "    ip daddr @down_drop drop\n"
        + ("    ip6 daddr @down6_drop drop\n" if plan.ipv6 else "") +
        "  }\n"
        "}\n"
    )


def shaper_queue_packets(c: ShapingClass) -> int:
    """The pfifo limit of a shaping class: ``queue_ms`` of its rate in 1,500-byte packets, at
    least 5; two for a policer (``queue_ms`` 0)."""
    if c.queue_ms == 0:
        return 2
    return max(5, c.rate_kbit * c.queue_ms // 8 // 1500)


def tc_commands(plan: LabPlan, dev: str = A.ISP_PROBE_IF) -> list[list[str]]:
    """HTB on the ISP's probe-facing interface (downloads).  Unclassified traffic goes out
    directly at full speed; nft picks a class by setting ``meta priority``."""
    cmds = [["tc", "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb"]]
    for c in plan.shaping:
        burst = max(1600, c.rate_kbit * 1000 // 8 // 50)  # ~20 ms worth, at least one packet
        cmds.append(["tc", "class", "replace", "dev", dev, "parent", "1:", "classid", c.classid,
                     "htb", "rate", f"{c.rate_kbit}kbit", "ceil", f"{c.rate_kbit}kbit",
                     "burst", str(burst), "cburst", str(burst)])
        minor = c.classid.split(":")[1]
        # a censor's shaper buffers little (by default about 200 ms of its rate, so an
        # abandoned throttled download does not hold the next connection's handshake for
        # seconds behind a thousand queued packets); a policer buffers nothing
        limit = shaper_queue_packets(c)
        cmds.append(["tc", "qdisc", "replace", "dev", dev, "parent", c.classid,
                     "handle", f"{minor}:", "pfifo", "limit", str(limit)])
    return cmds
