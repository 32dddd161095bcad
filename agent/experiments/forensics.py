"""Who sent the packet that ended a flow: the server, or something on the path?

Pure analysis of captured headers (``agent.net.rawprobe.records.Packet``).  An on-path censor
forges the reset, the FIN or the DNS answer in the server's name, but it sends from where it
sits and with its own stack: the packet arrives with an IP TTL that does not match the genuine
server's packets of the same flow.  Within one flow the path rarely changes (routers hash a
flow to one path), so the server's SYN-ACK is the reference; the spread of TTLs seen from the
same server across this measurement's flows measures how much its path does move, and only a
difference beyond that (and beyond ``PATH_SLACK`` hops) is called ``injected``.

The sender's distance is estimated from the usual initial TTLs (32, 64, 128, 255): a packet
that arrives with TTL 62 most likely left its sender with 64, two routers before us, so the
sender is hop 3 (hop 1 is the first router).  IP ID, TCP window and options are reported
beside the TTL as supporting detail; they never decide alone (stacks differ too much).

Verdicts: ``injected`` (the TTL says another sender), ``consistent`` (same TTL as the
server), ``inconclusive`` (a difference within what path changes explain, or no reference).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.net.rawprobe.records import Packet

INITIAL_TTLS = (32, 64, 128, 255)
PATH_SLACK = 1  # hops a flow's path may move by without meaning anything
INJECTED = "injected"
CONSISTENT = "consistent"
INCONCLUSIVE = "inconclusive"


def initial_ttl(ttl: int) -> int:
    """The most likely TTL the sender set: the smallest usual initial value not below it."""
    return next(i for i in INITIAL_TTLS if i >= ttl)


def sender_hop(ttl: int) -> int:
    """The sender's estimated hop number (1: the first router after the probe)."""
    return initial_ttl(ttl) - ttl + 1


@dataclass(frozen=True, slots=True)
class TTLComparison:
    verdict: str  # INJECTED | CONSISTENT | INCONCLUSIVE
    reference_ttl: int | None
    observed_ttl: int
    slack: int  # the difference tolerated as a path change

    @property
    def delta(self) -> int | None:
        return None if self.reference_ttl is None else self.observed_ttl - self.reference_ttl


def compare_ttl(reference: int | None, observed: int, path_spread: int = 0) -> TTLComparison:
    """The core rule, on its own so it can be tested exhaustively."""
    slack = max(PATH_SLACK, path_spread)
    if reference is None:
        verdict = INCONCLUSIVE
    elif observed == reference:
        verdict = CONSISTENT
    elif abs(observed - reference) > slack:
        verdict = INJECTED
    else:
        verdict = INCONCLUSIVE
    return TTLComparison(verdict, reference, observed, slack)


@dataclass(frozen=True, slots=True)
class FlowForensics:
    """One TCP flow that the server (or someone in its name) ended."""

    client_port: int  # the probe's own address is never recorded
    server: str  # "ip:port"
    terminator: str  # "rst" | "fin"
    verdict: str
    reason: str
    synack: Packet | None
    packet: Packet  # the terminating packet
    slack: int
    late_server_data: int  # server-TTL packets with data after the terminator

    def to_json(self) -> dict[str, Any]:
        s, p = self.synack, self.packet
        return {
            "kind": "tcp", "client_port": self.client_port, "server": self.server,
            "terminator": self.terminator, "verdict": self.verdict, "reason": self.reason,
            "reference": None if s is None else _summary(s),
            "packet": _summary(p),
            "ttl_delta": None if s is None else p.ttl - s.ttl,
            "path_slack": self.slack,
            "sender_hop": sender_hop(p.ttl),
            "server_hop": None if s is None else sender_hop(s.ttl),
            "late_server_data": self.late_server_data,
        }


@dataclass(frozen=True, slots=True)
class DNSForensics:
    """The replies to one DNS query."""

    resolver: str  # "ip:port"
    client_port: int
    query_id: int
    verdict: str  # the worst over the replies
    reason: str
    replies: tuple[tuple[Packet, str], ...]  # each reply and its own verdict
    reference_ttl: int | None
    slack: int

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "dns", "resolver": self.resolver, "client_port": self.client_port,
            "query_id": self.query_id, "verdict": self.verdict, "reason": self.reason,
            "reference_ttl": self.reference_ttl, "path_slack": self.slack,
            "replies": [
                {**_summary(p), "answers": list(p.dns_answers), "rcode": p.dns_rcode,
                 "verdict": v, "sender_hop": sender_hop(p.ttl)}
                for p, v in self.replies
            ],
        }


def _summary(p: Packet) -> dict[str, Any]:
    out: dict[str, Any] = {"t": round(p.t, 4), "ttl": p.ttl, "ip_id": p.ip_id}
    if p.proto == "tcp":
        out.update(flags=p.flags, window=p.window, options=list(p.options))
    return out


def _ep(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def path_spread(packets: Iterable[Packet], server_ip: str) -> int:
    """How much the TTL of the server's SYN-ACKs varies across the captured flows."""
    ttls = [p.ttl for p in packets
            if p.proto == "tcp" and p.src == server_ip and "S" in p.flags and "A" in p.flags]
    return max(ttls) - min(ttls) if ttls else 0


def tcp_flow(packets: Sequence[Packet], client_ip: str, client_port: int, server_ip: str,
             server_port: int) -> FlowForensics | None:
    """Judge the packet that ended one flow; None when the server side never ended it."""
    inbound = sorted(
        (p for p in packets if p.proto == "tcp" and p.src == server_ip and p.dst == client_ip
         and p.sport == server_port and p.dport == client_port),
        key=lambda p: p.t,
    )
    synack = next((p for p in inbound if "S" in p.flags and "A" in p.flags), None)
    # the first FIN or RST ended it (a reset after the server's own FIN only closes the rest)
    term = next((p for p in inbound if "R" in p.flags or "F" in p.flags), None)
    if term is None:
        return None
    kind = "rst" if "R" in term.flags else "fin"
    spread = path_spread(packets, server_ip)
    if synack is None:  # a reset of the SYN itself: another flow's SYN-ACK is the reference
        synack = next((p for p in sorted(packets, key=lambda p: p.t)
                       if p.proto == "tcp" and p.src == server_ip and p.sport == server_port
                       and "S" in p.flags and "A" in p.flags), None)
    cmp = compare_ttl(None if synack is None else synack.ttl, term.ttl, spread)
    late = [p for p in inbound if p.t > term.t and p.payload_len > 0
            and synack is not None and p.ttl == synack.ttl and p is not term]
    verdict = cmp.verdict
    hop = sender_hop(term.ttl)
    if synack is None:
        reason = (f"{kind.upper()} with TTL {term.ttl} (sent from about hop {hop}); no SYN-ACK "
                  "from the server to compare with")
    elif verdict == INJECTED:
        reason = (f"{kind.upper()} arrived with TTL {term.ttl}, the server's SYN-ACK with "
                  f"{synack.ttl}: sent from about hop {hop}, not by the server (hop "
                  f"{sender_hop(synack.ttl)})")
    elif verdict == CONSISTENT:
        reason = (f"{kind.upper()} has the server's TTL ({term.ttl}): consistent with the "
                  "server itself")
    else:
        reason = (f"{kind.upper()} TTL {term.ttl} vs SYN-ACK {synack.ttl}: within the "
                  f"{cmp.slack}-hop difference a path change explains")
        if late:
            verdict = INJECTED
            reason += (f"; but the server kept sending data after it ({len(late)} packet(s) "
                       "with its TTL): someone else ended the flow")
    return FlowForensics(
        client_port=client_port, server=_ep(server_ip, server_port), terminator=kind,
        verdict=verdict, reason=reason, synack=synack, packet=term, slack=cmp.slack,
        late_server_data=len(late),
    )


def dns_query(packets: Sequence[Packet], resolver_ip: str, resolver_port: int, client_port: int,
              query_id: int) -> DNSForensics | None:
    """Judge every reply to one UDP DNS query; None when no reply was captured.

    The reference is the TTL the resolver's other replies in the capture share (replies to
    other queries) or, failing that, the last reply to this one (a forged answer races ahead
    of the genuine one, which arrives last).
    """
    def from_resolver(p: Packet) -> bool:
        return (p.proto == "udp" and p.src == resolver_ip and p.sport == resolver_port
                and p.dns_id is not None)

    replies = sorted((p for p in packets if from_resolver(p) and p.dport == client_port
                      and p.dns_id == query_id), key=lambda p: p.t)
    if not replies:
        return None
    others = [p.ttl for p in packets if from_resolver(p)
              and (p.dport != client_port or p.dns_id != query_id)]
    spread = 0
    if others:
        reference: int | None = max(set(others), key=others.count)
        spread = max(others) - min(others)
    elif len(replies) > 1:
        reference = replies[-1].ttl
    else:
        reference = None
    judged: list[tuple[Packet, str]] = []
    slack = max(PATH_SLACK, spread)
    for p in replies:
        judged.append((p, compare_ttl(reference, p.ttl, spread).verdict))
    verdicts = [v for _, v in judged]
    resolver = _ep(resolver_ip, resolver_port)
    if INJECTED in verdicts:
        bad = next(p for p, v in judged if v == INJECTED)
        verdict = INJECTED
        reason = (f"a reply arrived with TTL {bad.ttl} where the resolver's packets carry "
                  f"{reference}: sent from about hop {sender_hop(bad.ttl)}, not by the "
                  f"resolver (hop {sender_hop(reference or bad.ttl)})")
    elif reference is None:
        verdict = INCONCLUSIVE
        reason = f"one reply (TTL {replies[0].ttl}) and no other packet of the resolver to compare"
    elif all(v == CONSISTENT for v in verdicts):
        verdict = CONSISTENT
        reason = f"{len(replies)} reply(ies) with the resolver's TTL ({reference})"
    else:
        verdict = INCONCLUSIVE
        reason = "reply TTLs differ by no more than a path change explains"
    return DNSForensics(resolver=resolver, client_port=client_port, query_id=query_id,
                        verdict=verdict, reason=reason, replies=tuple(judged),
                        reference_ttl=reference, slack=slack)


def summarize(items: Sequence[dict[str, Any]]) -> str | None:
    """One line for a verdict's reason: the injected finding, if any."""
    for item in items:
        if item.get("verdict") == INJECTED:
            return str(item.get("reason"))
    return None


def _ended_by_server(packets: Sequence[Packet], server_ip: str, server_port: int,
                     client_port: int, result: FlowForensics) -> bool:
    """The server side ended the flow: its RST or FIN came before the probe's own FIN or RST
    (a reset that answers the probe's close is the end of a finished flow, not a block)."""
    own_end = [p.t for p in packets if p.proto == "tcp" and p.dst == server_ip
               and p.dport == server_port and p.sport == client_port
               and ("F" in p.flags or "R" in p.flags)]
    return not own_end or result.packet.t < min(own_end)


def analyze_capture(packets: Sequence[Packet], servers: Iterable[tuple[str, int]],
                    resolvers: Iterable[tuple[str, int]]) -> dict[str, Any]:
    """Every flow to ``servers`` the server side ended, every DNS query to ``resolvers``.

    The test keys' ``packet_evidence`` object (without its ``status``)."""
    flows: list[dict[str, Any]] = []
    for ip, port in sorted(set(servers)):
        ends = sorted({(p.dst, p.dport) for p in packets
                       if p.proto == "tcp" and p.src == ip and p.sport == port})
        for client_ip, client_port in ends:
            result = tcp_flow(packets, client_ip, client_port, ip, port)
            if result is not None and _ended_by_server(packets, ip, port, client_port, result):
                flows.append(result.to_json())
    queries: list[dict[str, Any]] = []
    for ip, port in sorted(set(resolvers)):
        keys = sorted({(p.dport, p.dns_id) for p in packets
                       if p.proto == "udp" and p.src == ip and p.sport == port
                       and p.dns_id is not None})
        for client_port, qid in keys:
            assert qid is not None
            dres = dns_query(packets, ip, port, client_port, qid)
            if dres is not None:
                queries.append(dres.to_json())
    findings = [f for f in (*flows, *queries) if f["verdict"] == INJECTED]
    return {"flows": flows, "dns": queries, "injected": bool(findings),
            "summary": summarize(findings) if findings else None}


def verdict_evidence(evidence: dict[str, Any]) -> str | None:
    """The verdict's short machine form: ``packets.rst_injected.hop3``,
    ``packets.dns_injected.hop2``, ``packets.server_reset``; None when the packets say
    nothing about who ended a flow."""
    for item in (*evidence.get("flows", ()), *evidence.get("dns", ())):
        if item.get("verdict") != INJECTED:
            continue
        if item.get("kind") == "dns":
            hops = [r["sender_hop"] for r in item.get("replies", ())
                    if r.get("verdict") == INJECTED]
            return f"packets.dns_injected.hop{hops[0]}" if hops else "packets.dns_injected"
        return f"packets.{item.get('terminator', 'rst')}_injected.hop{item.get('sender_hop')}"
    resets = [f for f in evidence.get("flows", ()) if f.get("terminator") == "rst"]
    if resets and all(f.get("verdict") == CONSISTENT for f in resets):
        return "packets.server_reset"  # the server's own reset (a FIN after a page is normal)
    return None
