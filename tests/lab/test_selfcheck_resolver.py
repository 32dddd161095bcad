"""Self-checks of the DNS-over-TCP behaviours and the whoami delegation, on the wire, with the
lab's own client (independent of the agent): probe side and internet side side by side."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from lab import addressing as A
from lab.lab import WHOAMI_ZONE

pytestmark = pytest.mark.lab


def _both(lab: Any, probe: dict[str, Any], control: dict[str, Any]
          ) -> tuple[dict[str, Any], dict[str, Any]]:
    out = lab.clients({"probe": [probe], "inet": [control]})
    return out["probe"][0], out["inet"][0]


def _addr(lab: Any, host: str) -> str:
    return str(lab.plan.site(host).address)


def test_large_answer_is_truncated_over_udp_and_whole_over_tcp(lab: Any) -> None:
    host = "large-dns.lab.test"
    udp, udp_control = _both(lab, {"type": "dns", "name": host},
                             {"type": "dns", "name": host, "server": A.OPEN_RESOLVER})
    for result in (udp, udp_control):
        (reply,) = result["replies"]
        assert reply["tc"] is True and reply["answers"] == []
    tcp, tcp_control = _both(lab, {"type": "dns_tcp", "name": host},
                             {"type": "dns_tcp", "name": host, "server": A.OPEN_RESOLVER})
    assert tcp["answers"] == tcp_control["answers"] == [_addr(lab, host)]


def test_dns_over_tcp_reset_only_for_the_censored_name_and_only_from_the_probe(lab: Any) -> None:
    host = "tcp-dns-reset.lab.test"
    probe, control = _both(lab, {"type": "dns_tcp", "name": host},
                           {"type": "dns_tcp", "name": host, "server": A.OPEN_RESOLVER})
    assert probe["error"] == "connection_reset" and probe["t"] < 1.0
    assert control["answers"] == [_addr(lab, host)]
    other = lab.client("probe", [{"type": "dns_tcp", "name": "large-dns.lab.test"}])[0]
    assert other["answers"] == [_addr(lab, "large-dns.lab.test")]


def test_whoami_zone_answers_with_the_resolvers_egress(lab: Any) -> None:
    if not lab.helper_running:
        pytest.skip("the control helper is not running")
    name = f"{secrets.token_hex(12)}.{WHOAMI_ZONE}"
    probe, control = _both(lab, {"type": "dns", "name": name},
                           {"type": "dns", "name": name, "server": A.OPEN_RESOLVER})
    # the ISP resolver (198.18.1.53 in the probe's resolv.conf) leaves from its uplink
    assert probe["replies"][0]["answers"] == [A.ISP_UPLINK]
    assert control["replies"][0]["answers"] == [A.OPEN_RESOLVER]
