"""Where on the path the censor acts: the conclusion of a TTL-limited trace (pure).

At each TTL the trace sent the triggering packet and its benign twin (see
``agent.net.rawprobe.server``).  Each probe's outcome is one of ``expired`` (an ICMP time
exceeded: the packet reached that hop and went no further), ``answer`` (the destination
answered), ``reset``/``fin`` (the flow was torn down), ``unreachable``, ``silent``.

The censor is at the first TTL where the trigger was torn down (or answered) and the twin was
not: a packet that expired at hop N can only have been seen by hops 1..N, so whoever reset it
sits at hop N at the latest; at a TTL too small to reach the destination (the twin expired
there) the reply cannot have come from the destination at all.  A censor that drops instead is
at the first TTL from which the trigger goes silent while the twin still gets through.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.experiments.forensics import sender_hop

TORN_DOWN = ("reset", "fin")


@dataclass(frozen=True, slots=True)
class HopNetwork:
    asn: str  # "AS64500"; "AS0" when unknown
    name: str


@dataclass(frozen=True, slots=True)
class Conclusion:
    found: bool
    action: str  # "reset" | "fin" | "answer" (a forged reply) | "drop" | "none" | "unknown"
    hop: int | None  # the TTL at which the censor acts
    address: str | None  # the router answering at that TTL (ICMP time exceeded)
    sender_hop: int | None  # where the forged packet's own TTL says it came from
    destination_hop: int | None  # the TTL at which the twin reached the destination
    network: HopNetwork | None
    inside_probe_network: bool | None
    text: str

    def to_json(self) -> dict[str, Any]:
        return {
            "found": self.found, "action": self.action, "hop": self.hop,
            "address": self.address, "sender_hop": self.sender_hop,
            "destination_hop": self.destination_hop,
            "asn": None if self.network is None else self.network.asn,
            "network_name": None if self.network is None else self.network.name,
            "inside_probe_network": self.inside_probe_network, "text": self.text,
        }


def _outcomes(hop: Mapping[str, Any], role: str) -> list[str]:
    return [str(p.get("outcome")) for p in hop.get(role, ())]


def hop_address(hop: Mapping[str, Any]) -> str | None:
    """The router that answered at this TTL (from the twin first: the censor may drop)."""
    for role in ("twin", "trigger"):
        for p in hop.get(role, ()):
            if p.get("hop_address"):
                return str(p["hop_address"])
    return None


def conclude(hops: Sequence[Mapping[str, Any]], networks: Mapping[str, HopNetwork],
             probe_asn: str | None, protocol: str) -> Conclusion:
    destination = next((h["ttl"] for h in hops
                        if _outcomes(h, "twin") and all(o == "answer"
                                                         for o in _outcomes(h, "twin"))), None)
    for h in hops:
        trig, twin = _outcomes(h, "trigger"), _outcomes(h, "twin")
        if not trig or not twin:
            continue
        ttl = int(h["ttl"])
        early = destination is None or ttl < destination
        twin_torn = any(o in TORN_DOWN for o in twin)
        action = next((o for o in trig if o in TORN_DOWN), None)
        if action is None and early and "answer" in trig:
            action = "answer"  # a reply before the destination could have heard the question
        if action is not None and not twin_torn and not early:
            # only once the destination hears it: the destination itself (a server that
            # refuses the name) or a box at its very door; nothing on the path before it
            return Conclusion(False, "destination", ttl, hop_address(h), None, destination,
                              None, None,
                              f"the destination (hop {destination}) itself tears the "
                              f"{_what(protocol)} down and not its twin: no censor on the "
                              "path before it")
        if action is not None and not twin_torn:
            resp = next((p.get("response") for p in h.get("trigger", ())
                         if p.get("outcome") == action and p.get("response")), None)
            return _found(action, ttl, h, resp, destination, networks, probe_asn, protocol)
    # a censor that drops: the trigger goes silent from some TTL on, the twin does not
    for i, h in enumerate(hops):
        rest = hops[i:]
        if (all(_outcomes(r, "trigger") and all(o == "silent" for o in _outcomes(r, "trigger"))
                for r in rest)
                and any(o in ("expired", "answer") for r in rest for o in _outcomes(r, "twin"))):
            # silent from TTL k on: dropped after the last hop that answered (k-1), by it
            # when it forwards or by hop k; the last answering hop is what can be named
            return _found("drop", int(h["ttl"]), hops[i - 1] if i > 0 else {}, None,
                          destination, networks, probe_asn, protocol)
    if destination is not None:
        return Conclusion(False, "none", None, None, None, destination, None, None,
                          f"no interference: the {_what(protocol)} and its twin both reached "
                          f"the destination (hop {destination})")
    return Conclusion(False, "unknown", None, None, None, None, None, None,
                      "inconclusive: neither the censor nor the destination was reached "
                      "within the trace's budget")


def _what(protocol: str) -> str:
    return {"tls": "ClientHello", "http": "HTTP request", "dns": "DNS query"}.get(protocol,
                                                                               protocol)


def _found(action: str, ttl: int, hop: Mapping[str, Any], resp: Mapping[str, Any] | None,
           destination: int | None, networks: Mapping[str, HopNetwork], probe_asn: str | None,
           protocol: str) -> Conclusion:
    address = hop_address(hop)
    network = networks.get(address) if address else None
    inside = None
    if network is not None and probe_asn and network.asn not in ("AS0", ""):
        inside = network.asn == probe_asn
    sent_from = sender_hop(int(resp["ttl"])) if resp and "ttl" in resp else None
    named = ""
    if address:
        named = f" ({address}"
        if network is not None and network.asn not in ("AS0", ""):
            named += f", {network.asn}" + (f" {network.name}" if network.name else "")
        named += ")"
    if action == "drop" and ttl > 1:
        text = (f"the {_what(protocol)} is dropped after hop {ttl - 1}{named}, by that hop or "
                f"by hop {ttl}")
    elif action == "drop":
        text = f"the {_what(protocol)} is dropped by the first hop"
    else:
        noun = {"reset": "the reset", "fin": "the forged close",
                "answer": "the forged reply"}[action]
        text = f"{noun} of the {_what(protocol)} comes from hop {ttl}{named}"
    if inside is True:
        text += f", inside the probe's network ({probe_asn})"
    elif inside is False:
        text += f", outside the probe's network ({probe_asn})"
    if destination is not None:
        text += f"; the destination is hop {destination}"
    if sent_from is not None and action != "drop":
        text += f"; its TTL says it was sent from about hop {sent_from}"
    return Conclusion(True, action, ttl, address, sent_from, destination, network, inside, text)
