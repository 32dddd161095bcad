"""censor_trace: at which hop of the path does the censor act, and in whose network?

Opt-in (``default_enabled = False``): run on demand (``vigil-agent trace URL``) and by the
long-running agent on targets a web_connectivity measurement found blocked at TCP, TLS or HTTP.
The triggering packet (ClientHello with the URL's name, HTTP request with its Host, DNS query
for it) and a benign twin are sent with TTL 1, 2, 3... by the packet process (CAP_NET_RAW, see
``agent.net.rawprobe``), within a strict budget (hops, probes per hop, seconds).  Each hop's
network comes from the control helper's IP database.  ``analyze.conclude`` says where it acts.

Config ``[censor_trace]``: max_hops (16), probes_per_hop (1), timeout (1.0 s a probe),
budget_s (40 s a trace), dns (true: also trace the DNS query towards the system resolver),
auto (false: the long-running agent traces blocked URLs only when true), per_day (4).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

from agent.errors import ConfigError, ControlError, PacketsUnavailable, VigilError
from agent.experiments import ExperimentBase, Outcome, register
from agent.experiments.censor_trace.analyze import HopNetwork, conclude, hop_address
from agent.experiments.context import MeasurementContext, config_section
from agent.net import dns as dnsnet
from agent.net.addr import is_ip
from agent.net.rawprobe import client as rawclient
from agent.net.rawprobe import protocol as proto
from agent.net.rawprobe.protocol import TraceRequest
from agent.wire.record import Blocking, Status, Target, Verdict

_PORTS = {"http": 80, "https": 443}
_BLOCKING = {"tls": Blocking.TLS, "http": Blocking.HTTP_FAILURE, "dns": Blocking.DNS}


@dataclass(frozen=True, slots=True)
class TraceSettings:
    max_hops: int = 16
    probes_per_hop: int = 1
    timeout: float = 1.0
    budget_s: float = 40.0
    dns: bool = True
    auto: bool = False  # the long-running agent traces what web_connectivity found blocked
    per_day: int = 4  # ... at most this many a day

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> TraceSettings:
        unknown = set(section) - {"max_hops", "probes_per_hop", "timeout", "budget_s", "dns",
                                  "auto", "per_day"}
        if unknown:
            raise ConfigError(f"[censor_trace]: unknown key(s) {', '.join(sorted(unknown))}")
        base = cls()
        values = {k: section.get(k, getattr(base, k)) for k in
                  ("max_hops", "probes_per_hop", "timeout", "budget_s", "dns")}
        limits = {"max_hops": proto.MAX_HOPS, "probes_per_hop": proto.MAX_PROBES_PER_HOP,
                  "timeout": proto.MAX_PROBE_TIMEOUT_S, "budget_s": proto.MAX_TRACE_BUDGET_S}
        for key, hi in limits.items():
            v = values[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= hi:
                raise ConfigError(f"[censor_trace] {key} must be a number in (0, {hi}]")
        auto, per_day = section.get("auto", False), section.get("per_day", 4)
        if not isinstance(values["dns"], bool) or not isinstance(auto, bool):
            raise ConfigError("[censor_trace] dns and auto must be true or false")
        if isinstance(per_day, bool) or not isinstance(per_day, int) or not 0 <= per_day <= 96:
            raise ConfigError("[censor_trace] per_day must be an integer in [0, 96]")
        return cls(max_hops=int(values["max_hops"]), probes_per_hop=int(values["probes_per_hop"]),
                   timeout=float(values["timeout"]), budget_s=float(values["budget_s"]),
                   dns=bool(values["dns"]), auto=auto, per_day=per_day)


def _clean_probe(p: Mapping[str, Any]) -> dict[str, Any]:
    """One probe as recorded: never the probe's own address (the packets' dst and quote)."""
    out: dict[str, Any] = {"outcome": p.get("outcome")}
    for key in ("hop_address", "rtt_ms", "response_rtt_ms", "error"):
        if p.get(key) is not None:
            out[key] = p[key]
    resp = p.get("response")
    if isinstance(resp, Mapping):
        out["response"] = {k: resp[k] for k in ("src", "ttl", "ip_id", "flags", "window",
                                                 "options", "payload_len", "dns_answers")
                           if k in resp}
    icmp = p.get("icmp")
    if isinstance(icmp, Mapping):
        out["icmp"] = {k: icmp[k] for k in ("ttl", "icmp_type", "icmp_code") if k in icmp}
    return out


def record_hops(hops: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{"ttl": h.get("ttl"), "address": hop_address(h),
             "trigger": [_clean_probe(p) for p in h.get("trigger", ())],
             "twin": [_clean_probe(p) for p in h.get("twin", ())]} for h in hops]


@register
class CensorTrace(ExperimentBase):
    name: ClassVar[str] = "censor_trace"
    version: ClassVar[str] = "0.1.0"
    default_enabled: ClassVar[bool] = False

    async def run(self, target: Target, ctx: MeasurementContext) -> Outcome:
        if not target.input:
            raise VigilError("censor_trace needs a URL as input")
        try:
            parts = urlsplit(target.input)
            port = parts.port
        except ValueError as exc:
            raise VigilError(f"cannot trace {target.input!r}: {exc}") from None
        scheme, host = parts.scheme.lower(), (parts.hostname or "").rstrip(".")
        if scheme not in _PORTS or not host:
            raise VigilError(f"cannot trace {target.input!r}: censor_trace needs an http(s) URL")
        settings = rawclient.PacketSettings.from_section(config_section(ctx, "packets"))
        budget = TraceSettings.from_section(config_section(ctx, "censor_trace"))
        protocol = "tls" if scheme == "https" else "http"
        address = host if is_ip(host) else await self._address(host, ctx)
        keys: dict[str, Any] = {"hostname": host, "protocol": protocol, "address": address,
                                "port": port or _PORTS[scheme], "twin": ctx.net.benign_sni,
                                "budget": {"max_hops": budget.max_hops,
                                           "probes_per_hop": budget.probes_per_hop,
                                           "timeout": budget.timeout,
                                           "budget_s": budget.budget_s}}
        requests: list[TraceRequest] = []

        def request(protocol: str, address: str, port: int) -> TraceRequest:
            return TraceRequest(protocol=protocol, address=address, port=port, name=host,
                                twin=ctx.net.benign_sni, max_hops=budget.max_hops,
                                probes_per_hop=budget.probes_per_hop, timeout=budget.timeout,
                                budget_s=budget.budget_s)

        if address is not None and ":" not in address:
            requests.append(request(protocol, address, port or _PORTS[scheme]))
        if budget.dns and not is_ip(host) and ":" not in ctx.resolver.ip:
            requests.append(request("dns", ctx.resolver.ip, ctx.resolver.port))
        if not requests:
            keys.update(status="not_available", reason="no IPv4 address to trace")
            return Outcome(keys, Verdict(Status.INCONCLUSIVE, reason="trace.no_target"))
        raw: list[tuple[TraceRequest, list[Mapping[str, Any]], str]] = []
        try:
            for req in requests:
                answer = await rawclient.trace(settings, req)
                hops = answer.get("hops")
                raw.append((req, hops if isinstance(hops, list) else [],
                            str(answer.get("stopped", ""))))
        except PacketsUnavailable as exc:
            keys.update(status="not_available", reason=str(exc))
            return Outcome(keys, Verdict(Status.INCONCLUSIVE, reason="trace.not_available"))
        addresses = sorted({a for _, hops, _ in raw for h in hops if (a := hop_address(h))})
        networks, probe_asn = await self._networks(addresses, ctx)
        traces: list[dict[str, Any]] = []
        findings = []
        for req, hops, stopped in raw:
            c = conclude(hops, networks, probe_asn, req.protocol)
            if c.found:
                findings.append((req, c))
            traces.append({
                "protocol": req.protocol, "address": req.address, "port": req.port,
                "stopped": stopped, "hops": [
                    {**h, **({"asn": networks[h["address"]].asn,
                              "network_name": networks[h["address"]].name}
                             if h["address"] in networks else {})}
                    for h in record_hops(hops)],
                "conclusion": c.to_json(),
            })
        keys.update(status="ok", probe_asn=probe_asn, traces=traces)
        if findings:
            req, c = findings[0]
            keys["conclusion"] = c.text
            return Outcome(keys, Verdict(Status.BLOCKED, _BLOCKING[req.protocol],
                                         reason=f"trace.{c.action}_at_hop"))
        keys["conclusion"] = "; ".join(t["conclusion"]["text"] for t in traces)
        if all(t["conclusion"]["action"] == "none" for t in traces):
            return Outcome(keys, Verdict(Status.OK, reason="trace.no_interference"))
        return Outcome(keys, Verdict(Status.INCONCLUSIVE, reason="trace.inconclusive"))

    async def _address(self, host: str, ctx: MeasurementContext) -> str | None:
        try:
            addrs = await dnsnet.resolve_first(host, ctx.resolver, timeout=ctx.net.dns_timeout,
                                               on_bytes=ctx.on_bytes)
        except Exception:  # a name dnspython cannot encode: nothing to trace but the DNS query
            return None
        return next((a for a in addrs if ":" not in a), None)

    async def _networks(self, addresses: list[str], ctx: MeasurementContext
                        ) -> tuple[dict[str, HopNetwork], str | None]:
        if ctx.control is None or not addresses:
            return {}, None
        try:
            body = await ctx.control.request_json("POST", "/api/v1/networks",
                                                  {"addresses": addresses[:64]})
        except ControlError:
            return {}, None
        nets = body.get("networks")
        client = body.get("client")
        out: dict[str, HopNetwork] = {}
        if isinstance(nets, dict):
            for ip, info in nets.items():
                if isinstance(info, dict):
                    out[str(ip)] = HopNetwork(str(info.get("asn", "AS0")),
                                              str(info.get("network_name", "")))
        probe = str(client.get("asn")) if isinstance(client, dict) and client.get("asn") else None
        return out, probe
