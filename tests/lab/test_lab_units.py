"""Pure parts of the lab (no privileges needed): scenario files, plan, packets."""

from __future__ import annotations

import ssl
import struct
from pathlib import Path

import pytest

from lab import addressing as A
from lab import packets as P
from lab.lab import default_scenario_files
from lab.plan import build_plan, render_censor_nft, tc_commands
from lab.runner import Outcome, confusion_table
from lab.scenarios import ScenarioError, load_files, parse_file, validate_set

# ---- scenario files -----------------------------------------------------------------------


def test_shipped_files_load_and_are_consistent() -> None:
    sset = load_files(default_scenario_files())
    assert len(sset.measured) >= 25
    plan = build_plan(sset)
    for addr in plan.inet_addresses + plan.listen_addresses:
        assert A.in_lab(addr)
    for site in plan.sites:
        assert site.host.endswith(".test")


def _one(row: str) -> None:
    import tomllib

    from lab.scenarios import ScenarioSet

    validate_set(ScenarioSet((parse_file("t.toml", tomllib.loads(row)),)))


@pytest.mark.parametrize("row, message", [
    ('[[scenario]]\nid="a"\nurl="ftp://x.lab.test/"', "url must be http"),
    ('[[scenario]]\nid="A b"\nurl="https://x.lab.test/"', "id"),
    ('[[scenario]]\nid="a"\nurl="https://x.lab.test/"\ncensor=["nope"]', "censor kind"),
    ('[[scenario]]\nid="a"\nurl="https://x.lab.test/"\nexpect={status="blocked"}',
     "inconsistent"),
    ('[[scenario]]\nid="a"\nurl="https://x.lab.test/"\nexpect={status="ok",blocking="dns"}',
     "inconsistent"),
    ('[[scenario]]\nid="a"\nurl="https://x.lab.test/"\ncensor=[{kind="tcp_drop",'
     'address="8.8.8.8"}]', "outside 198.18.0.0/15"),
    ('[[scenario]]\nid="a"\nurl="https://x.lab.test/"\n[[scenario]]\nid="a"\n'
     'url="https://y.lab.test/"', "duplicate id"),
    ('[[scenario]]\nid="a"\nurl="https://x.lab.test/"\n[[scenario]]\nid="b"\n'
     'url="http://x.lab.test/"\ncensor=["dns_nxdomain"]', "configured differently"),
    ('[[scenario]]\nid="a"\nurl="https://x.lab.test:8443/"', "default port"),
    ('[[scenario]]\nid="a"\nurl="https://x.lab.test/"\nsurprise=1', "unknown keys"),
    ('[[event]]\nkind="shutdown"\nafter_s=1', "duration_s"),
    ('[[scenario]]\nid="a"\nurl="https://x.lab.test/"\nsite={rtt_ms=5000}', "rtt_ms"),
    ('[[scenario]]\nid="a"\nurl="https://x.lab.test/"\nsite={loss_percent=50}', "loss_percent"),
    ('[[scenario]]\nid="a"\nurl="https://x.lab.test/"\nsite={rate_kbit=3}', "rate_kbit"),
    ('[[scenario]]\nid="a"\nurl="https://x.lab.test/"\nsite={rtt_ms=50,address_group="g"}',
     "per address"),
    ('[[scenario]]\nid="a"\nurl="https://x.lab.test/"\nsite={kind="redirect-to"}',
     "site.location is required"),
    ('[[scenario]]\nid="a"\nurl="https://x.lab.test/"\nsite={kind="normal",'
     'location="https://y.lab.test/"}', "site.location is required"),
    ('[[scenario]]\nid="a"\nurl="https://x.lab.test/"\ncensor=["dns_answer"]',
     "needs an answer"),
    ('[[scenario]]\nid="a"\nurl="https://x.lab.test/"\ncensor=[{kind="dns_answer",'
     'answer="not a host!"}]', "answer must be"),
    ('[[scenario]]\nid="a"\nurl="https://x.lab.test/"\ncontrol="sometimes"', "control must"),
])
def test_bad_rows_are_rejected_with_a_clear_message(row: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        _one(row)


def test_several_files_are_cross_checked(tmp_path: Path) -> None:
    a = tmp_path / "a.toml"
    b = tmp_path / "b.toml"
    a.write_text('[[scenario]]\nid="x"\nurl="https://x.lab.test/"\n', encoding="utf-8")
    b.write_text('[[scenario]]\nid="x"\nurl="https://y.lab.test/"\n', encoding="utf-8")
    with pytest.raises(ScenarioError, match="duplicate id"):
        load_files([a, b])
    b.write_text('[[scenario]]\nid="y"\nurl="https://y.lab.test/"\ntest="throttling"\n'
                 'expect={status="throttled",blocking="throttling"}\n'
                 '[[event]]\nkind="shutdown"\nafter_s=2\nduration_s=5\n', encoding="utf-8")
    sset = load_files([a, b])
    assert [s.id for s in sset.scenarios] == ["x", "y"]
    assert sset.files[1].events[0].duration_s == 5.0


def test_plan_shares_addresses_and_renders_the_censor() -> None:
    import tomllib

    from lab.scenarios import ScenarioSet

    data = tomllib.loads("""
[[scenario]]
id = "t"
url = "https://t.lab.test/"
site = { address_group = "g" }
censor = [{ kind = "sni_throttle", rate_kbit = 130 }, "tls_reset"]
[[scenario]]
id = "u"
url = "https://u.lab.test/"
site = { address_group = "g" }
[[scenario]]
id = "v"
url = "https://v.lab.test/"
censor = ["tcp_drop", { kind = "ip_throttle", rate_kbit = 300 }]
""")
    plan = build_plan(validate_set(ScenarioSet((parse_file("x", data),))), scale=20)
    assert plan.site("t.lab.test").address == plan.site("u.lab.test").address
    v = plan.site("v.lab.test").address
    nft = render_censor_nft(plan)
    assert f"elements = {{ {v} }}" in nft and f"{v} : 1:10" in nft
    rates = {c[11] for c in tc_commands(plan) if c[1] == "class"}
    assert rates == {"130kbit", "300kbit"}
    assert len(plan.scale_hosts) == 20 and plan.zone[plan.scale_hosts[0]]["a"][0].startswith(
        "198.19.100.")
    assert "*.scale.lab.test" in plan.cert_names


# ---- packets ------------------------------------------------------------------------------


def test_checksums_verify() -> None:
    pkt = P.build_tcp("198.18.1.2", "198.19.1.1", 40000, 443, 1000, 2000, P.RST | P.ACK)
    assert P.checksum(pkt[:20]) == 0  # IPv4 header checksum
    ip = P.parse_ipv4(pkt)
    assert ip is not None and ip.src == "198.18.1.2" and ip.proto == P.PROTO_TCP
    pseudo = P._pseudo(ip.src, ip.dst, P.PROTO_TCP, len(ip.payload))
    assert P.checksum(pseudo + ip.payload) == 0
    tcp = P.parse_tcp(ip.payload)
    assert tcp is not None and (tcp.seq, tcp.ack, tcp.flags) == (1000, 2000, P.RST | P.ACK)
    udp_pkt = P.build_udp("198.18.1.53", "198.18.1.2", 53, 5353, b"hello")
    uip = P.parse_ipv4(udp_pkt)
    assert uip is not None
    udp = P.parse_udp(uip.payload)
    assert udp is not None and udp.payload == b"hello" and udp.sport == 53
    assert P.checksum(P._pseudo(uip.src, uip.dst, P.PROTO_UDP, len(uip.payload))
                      + uip.payload) == 0


def _client_hello(server_name: str) -> bytes:
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        conn.do_handshake()
    return outgoing.read()


def test_sni_is_read_from_a_real_client_hello() -> None:
    hello = _client_hello("Throttled-SNI.lab.test")
    assert P.tls_sni(hello) == "throttled-sni.lab.test"
    # a DPI box sees only the first segment: a truncated hello still yields the name
    assert P.tls_sni(hello[:600]) == "throttled-sni.lab.test"
    assert P.tls_sni(hello[:60]) is None
    assert P.tls_sni(b"GET / HTTP/1.1\r\n") is None
    assert P.tls_sni(b"\x16\x03\x01" + struct.pack("!H", 4) + b"\x01\xff") is None


def test_http_host_and_name_matching() -> None:
    req = b"GET / HTTP/1.1\r\nUser-Agent: x\r\nHOST: Filtered.Lab.Test:80\r\n\r\n"
    assert P.http_host(req) == "filtered.lab.test"
    assert P.http_host(b"\x16\x03\x01") is None
    assert P.http_host(b"GET / HTTP/1.1\r\nAccept: */*\r\n") is None
    assert P.name_matches("cdn.twitter.test", "twitter.test")
    assert P.name_matches("twitter.test.", "twitter.test")
    assert not P.name_matches("nottwitter.test", "twitter.test")


def test_confusion_table_counts() -> None:
    sset = load_files(default_scenario_files())
    rows = sset.measured[:3]
    outcomes = [
        Outcome(rows[0], "ok", None, "", False, {"verdict": {}}),
        Outcome(rows[1], "ok", None, "", False, {"verdict": {}}),
        Outcome(rows[2], None, None, None, None, None, problem="no record"),
    ]
    table = confusion_table(outcomes)
    assert "(missing)" in table and "expected \\ got" in table
    assert outcomes[0].right and not outcomes[2].right


# ---- privilege handling ---------------------------------------------------------------------


def test_unprivileged_runs_skip_but_ci_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.lab import conftest

    monkeypatch.setattr("os.geteuid", lambda: 1000)
    reason = conftest.lab_unavailable()
    assert reason is not None and "root" in reason
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="root"):
        conftest.require_lab()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        conftest.require_lab()


def test_throttling_matrix_plans_delays_loss_and_small_shaper_queues() -> None:
    sset = load_files([Path(__file__).resolve().parents[2] / "lab" / "throttling_matrix.toml"])
    plan = build_plan(sset)
    far = plan.site("benign-r300-l2-5m.tm.lab.test")
    assert plan.path_rtt_ms[far.address] == 300
    assert plan.path_loss_permille[far.address] == 20
    nft = render_censor_nft(plan)
    assert f'iifname "{A.ISP_PROBE_IF}" ip daddr {far.address} numgen random mod 1000 < 20 drop' \
        in nft
    assert f'iifname "{A.ISP_UPLINK_IF}" ip saddr {far.address} numgen random mod 1000 < 20 drop' \
        in nft
    assert plan.site("benign-slow-server-r5.tm.lab.test").rate_kbit == 2000
    limits = {c[c.index("parent") + 1]: int(c[-1]) for c in tc_commands(plan) if "pfifo" in c}
    by_rate = {cls.rate_kbit: limits[cls.classid] for cls in plan.shaping if cls.queue_ms == 200}
    assert by_rate[64] == 5 and by_rate[1000] == 16
    # other censors' throttles: a policer keeps two packets, a deep queue a second of its rate
    queues = {cls.queue_ms: limits[cls.classid] for cls in plan.shaping if cls.queue_ms != 200}
    assert queues == {0: 2, 1000: 83}


def test_field_rows_plan_answers_certificates_and_the_proxy() -> None:
    from lab.plan import broken_certs

    sset = load_files(default_scenario_files())
    plan = build_plan(sset)
    # a forged answer may name another scenario's site or the ISP's proxy
    assert plan.resolver_overrides["phantom.lab.test"] == {
        "action": "answer", "a": [plan.site("parking-lot.lab.test").address]}
    assert {"name": "relayed.lab.test", "a": [A.PROXY_ADDR]} in plan.inject_dns
    assert plan.resolver_overrides["hidden-records.lab.test"] == {"action": "nodata"}
    # the site's own DNS: the same answer for everyone, and no server
    assert plan.zone["misconfigured.lab.test"] == {"a": ["127.0.0.1"]}
    assert plan.zone["addressless.lab.test"] == {"a": []}
    # broken certificates get their own leaf; names that exist nowhere get none
    assert broken_certs(plan) == {"stale-cert.lab.test": "expired-cert",
                                  "misnamed-cert.lab.test": "wrong-name-cert",
                                  "stranger-cert.lab.test": "untrusted-cert"}
    assert "phantom.lab.test" not in plan.cert_names
    assert "stale-cert.lab.test" not in plan.cert_names
    # Unicode names are carried as IDNA A-labels
    assert "xn--80abaqnbpf2a4b.lab.test" in plan.cert_names
    idna = [s for s in sset.scenarios if s.id.startswith("idna-")]
    assert {s.host for s in idna} == {"xn--80abaqnbpf2a4b.lab.test"}


def test_expected_interference_is_part_of_being_right() -> None:
    import tomllib

    (row,) = parse_file("t.toml", tomllib.loads(
        '[[scenario]]\nid="a"\nurl="http://x.lab.test/"\n'
        'expect={status="ok",blocking="",interference="dns.injected"}')).scenarios
    verdict = {"status": "ok", "blocking": None, "reason": "ok.http"}
    plain = Outcome(row, "ok", None, "ok.http", False, {"verdict": verdict})
    marked = Outcome(row, "ok", None, "ok.http", False,
                     {"verdict": {**verdict, "interference": "dns.injected"}})
    assert not plain.right and marked.right
