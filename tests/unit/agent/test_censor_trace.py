"""Where the censor acts: the trace's conclusion (pure) and its settings."""

from __future__ import annotations

from typing import Any

import pytest

from agent.errors import ConfigError
from agent.experiments import enabled_by_default, load_all
from agent.experiments.censor_trace import CensorTrace, TraceSettings, record_hops
from agent.experiments.censor_trace.analyze import HopNetwork, conclude

ROUTERS = ["198.18.1.1", "198.18.2.1", "198.18.3.1", "198.18.4.1", "198.19.1.5"]
NETS = {"198.18.1.1": HopNetwork("AS64500", "Lab ISP"),
        "198.18.2.1": HopNetwork("AS64500", "Lab ISP"),
        "198.18.3.1": HopNetwork("AS64500", "Lab ISP"),
        "198.18.4.1": HopNetwork("AS64510", "Lab Internet")}


def probe(outcome: str, ttl: int, *, resp_ttl: int | None = None) -> dict[str, Any]:
    p: dict[str, Any] = {"outcome": outcome}
    if outcome == "expired" or (outcome in ("reset", "answer") and ttl < 5):
        p["hop_address"] = ROUTERS[ttl - 1]
    if resp_ttl is not None:
        p["response"] = {"ttl": resp_ttl, "src": ROUTERS[-1], "flags": "RA"}
    return p


def trace(trigger: list[str], twin: list[str], resp_ttl: int | None = None
          ) -> list[dict[str, Any]]:
    return [{"ttl": i + 1, "trigger": [probe(a, i + 1, resp_ttl=resp_ttl if a != "expired"
                                              else None)],
             "twin": [probe(b, i + 1)]} for i, (a, b) in enumerate(zip(trigger, twin, strict=True))]


@pytest.mark.parametrize(("trigger", "twin", "action", "hop", "inside"), [
    # censor at hop 3 resets; the destination is hop 5
    (["expired", "expired", "reset", "reset", "reset"],
     ["expired", "expired", "expired", "expired", "answer"], "reset", 3, True),
    # censor at hop 4, in the next network
    (["expired", "expired", "expired", "reset", "reset"],
     ["expired", "expired", "expired", "expired", "answer"], "reset", 4, False),
    # a forged DNS answer at hop 2
    (["expired", "answer", "answer", "answer", "answer"],
     ["expired", "expired", "expired", "expired", "answer"], "answer", 2, True),
    # a dropping censor at hop 3
    (["expired", "expired", "silent", "silent", "silent"],
     ["expired", "expired", "expired", "expired", "answer"], "drop", 3, True),
])
def test_the_censor_is_placed(trigger: list[str], twin: list[str], action: str, hop: int,
                              inside: bool) -> None:
    c = conclude(trace(trigger, twin, resp_ttl=64 - hop + 1), NETS, "AS64500", "tls")
    assert (c.found, c.action, c.hop, c.destination_hop, c.inside_probe_network) == (
        True, action, hop, 5, inside)
    assert f"hop {hop}" in c.text and NETS[c.address or ""].asn in c.text
    if action != "drop":
        assert c.sender_hop == hop and c.address == ROUTERS[hop - 1]
    else:  # the last hop that answered is what can be named; the drop is after it
        assert c.address == ROUTERS[hop - 2]
        assert f"dropped after hop {hop - 1} ({ROUTERS[hop - 2]}" in c.text


def test_the_server_s_own_reset_is_not_placed_on_the_path() -> None:
    # the server resets the trigger and the twin alike: nobody on the path singled it out
    c = conclude(trace(["expired"] * 4 + ["reset"], ["expired"] * 4 + ["reset"]), NETS,
                 "AS64500", "tls")
    assert not c.found


def test_a_server_refusing_only_the_trigger_is_not_a_censor_on_the_path() -> None:
    c = conclude(trace(["expired"] * 4 + ["reset"], ["expired"] * 4 + ["answer"]), NETS,
                 "AS64500", "tls")
    assert (c.found, c.action, c.hop, c.destination_hop) == (False, "destination", 5, 5)


def test_no_interference_and_out_of_budget() -> None:
    clean = conclude(trace(["expired"] * 4 + ["answer"], ["expired"] * 4 + ["answer"]), NETS,
                     "AS64500", "http")
    assert (clean.found, clean.action, clean.destination_hop) == (False, "none", 5)
    short = conclude(trace(["expired"] * 2, ["expired"] * 2), NETS, None, "http")
    assert (short.found, short.action) == (False, "unknown")


def test_recorded_hops_never_carry_the_probe_s_address() -> None:
    hops = [{"ttl": 1, "trigger": [{"outcome": "expired", "hop_address": "198.18.1.1",
                                    "icmp": {"src": "198.18.1.1", "dst": "198.18.1.2",
                                             "ttl": 64, "icmp_type": 11, "icmp_code": 0,
                                             "quoted": {"src": "198.18.1.2"}}}],
             "twin": []}]
    assert "198.18.1.2" not in str(record_hops(hops))


def test_settings_and_registration() -> None:
    assert TraceSettings.from_section({}) == TraceSettings()
    for bad in ({"max_hops": 99}, {"timeout": 0}, {"dns": "no"}, {"hops": 3}):
        with pytest.raises(ConfigError):
            TraceSettings.from_section(bad)
    assert load_all()["censor_trace"] is CensorTrace
    assert CensorTrace not in enabled_by_default()
