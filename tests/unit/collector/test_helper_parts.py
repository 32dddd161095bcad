"""Pure parts of the control helper: request parsing, limits, failure strings, titles,
log redaction and the command's configuration parsing."""

from __future__ import annotations

import errno
import html
import logging
import re
import ssl
from pathlib import Path

import dns.resolver
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import ConfigError
from agent.net.addr import endpoint as endpoint_key
from agent.net.addr import parse_endpoint
from agent.net.failures import classify_quietly as failure_string
from agent.net.http import extract_title
from collector.cli.helper import parse_config_data, parse_resolver
from collector.helper.app import PrivacyAccessLogger, RedactAddresses, redact_addresses
from collector.helper.control import parse_control_request
from collector.helper.errors import STATUS, Refusal
from collector.helper.fetch import local_addresses
from collector.helper.limits import ClientHasher, RateLimiter, client_label


# ---- control request ----------------------------------------------------------------------------
def parse(obj: object) -> object:
    return parse_control_request(obj, max_addresses=4)


def test_parse_control_request() -> None:
    req = parse_control_request(
        {"url": "https://Example.ORG/a?b#frag", "tcp_connect": ["198.18.0.5:443",
                                                             "[2001:DB8::1]:443", "1.2.3.4:80"]},
        max_addresses=4,
    )
    assert req.host == "example.org"
    assert req.port == 443
    assert str(req.url) == "https://example.org/a?b"
    assert [k for k, _, _ in req.tcp_connect] == ["198.18.0.5:443", "[2001:db8::1]:443",
                                                   "1.2.3.4:80"]


def test_unknown_fields_are_ignored() -> None:
    req = parse_control_request({"url": "http://a.example/", "headers": {"X-Evil": "1"}},
                                max_addresses=4)
    assert req.tcp_connect == ()


def test_idna_host_is_encoded() -> None:
    req = parse_control_request({"url": "http://bücher.de/"}, max_addresses=4)
    assert req.host == "xn--bcher-kva.de"


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"url": 5},
        {"url": ""},
        {"url": "ftp://example.org/"},
        {"url": "https://user:pw@example.org/"},
        {"url": "https:///nohost"},
        {"url": "https://example.org/" + "a" * 3000},
        {"url": "https://example.org/", "tcp_connect": "1.2.3.4:443"},
        {"url": "https://example.org/", "tcp_connect": ["1.2.3.4"]},
        {"url": "https://example.org/", "tcp_connect": ["2001:db8::1:443"]},  # ambiguous
        {"url": "https://example.org/", "tcp_connect": ["1.2.3.4:22"]},  # not a web port
        {"url": "https://example.org/", "tcp_connect": ["1.2.3.4:443"] * 5},
        {"url": "https://example.org/", "tcp_connect": ["example.org:443"]},
    ],
)
def test_bad_control_requests(body: object) -> None:
    with pytest.raises(Refusal) as info:
        parse(body)
    assert info.value.reason == "bad_request"
    assert info.value.status == 400


def test_endpoint_keys_round_trip() -> None:
    assert parse_endpoint("[::ffff:1.2.3.4]:443") == ("::ffff:102:304", 443)
    assert endpoint_key("2001:db8::1", 443) == "[2001:db8::1]:443"
    assert endpoint_key("1.2.3.4", 80) == "1.2.3.4:80"


def test_every_reason_has_a_client_or_server_error_status() -> None:
    assert all(400 <= s < 600 for s in STATUS.values())
    with pytest.raises(ValueError):
        Refusal("made_up", "x")


# ---- limits -------------------------------------------------------------------------------------
def test_token_bucket_allows_the_burst_then_refills() -> None:
    now = [0.0]
    limiter = RateLimiter(6, clock=lambda: now[0])  # 6/min = one every 10 s
    key = b"k"
    for _ in range(6):
        limiter.take(key)
    with pytest.raises(Refusal) as info:
        limiter.take(key)
    assert info.value.reason == "too_many_requests"
    assert info.value.retry_after == pytest.approx(10.0)
    limiter.take(b"other")  # other clients are unaffected
    now[0] = 10.0
    limiter.take(key)
    with pytest.raises(Refusal):
        limiter.take(key)


def test_rate_limiter_forgets_idle_clients_when_full() -> None:
    now = [0.0]
    limiter = RateLimiter(60, clock=lambda: now[0], max_keys=2)
    limiter.take(b"a")
    limiter.take(b"b")
    with pytest.raises(Refusal) as info:
        limiter.take(b"c")
    assert info.value.reason == "helper_busy"
    now[0] = 61
    limiter.take(b"c")
    assert len(limiter) == 1


def test_client_labels_group_ipv6_by_64_and_hash_is_keyed() -> None:
    assert client_label("2001:db8:1:2:aaaa::1") == client_label("2001:db8:1:2:bbbb::2")
    assert client_label("2001:db8:1:3::1") != client_label("2001:db8:1:2::1")
    assert client_label("::ffff:192.0.2.1") == client_label("192.0.2.1") == "192.0.2.1"
    assert ClientHasher(b"k" * 32)("x") == ClientHasher(b"k" * 32)("x")
    assert ClientHasher()("x") != ClientHasher()("x")  # a fresh secret per process
    assert b"192.0.2.1" not in ClientHasher()("192.0.2.1")


# ---- failure strings and titles -----------------------------------------------------------------
def _cert_error(code: int) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError("certificate verify failed")
    exc.verify_code = code
    return exc


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "connection_refused"),
        (ConnectionResetError(errno.ECONNRESET, "reset"), "connection_reset"),
        (TimeoutError(), "generic_timeout_error"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "host_unreachable"),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), "network_unreachable"),
        (_cert_error(62), "ssl_invalid_hostname"),
        (_cert_error(20), "ssl_unknown_authority"),
        (_cert_error(10), "ssl_invalid_certificate"),
        (ssl.SSLError(1, "handshake failure"), "ssl_failed_handshake"),
        (ssl.SSLEOFError(8, "EOF"), "eof_error"),
        (dns.resolver.NXDOMAIN(), "unknown_failure: NXDOMAIN"),
        (OSError(errno.EPROTO, "Protocol error"), "unknown_failure: Protocol error"),
    ],
)
def test_failure_strings(exc: BaseException, expected: str) -> None:
    assert failure_string(exc) == expected


def test_failure_text_never_carries_the_address() -> None:
    exc = OSError(errno.EPROTO, "Protocol error")
    exc.filename = "10.0.0.1"
    assert "10.0.0.1" not in failure_string(exc)


@pytest.mark.parametrize(
    ("head", "title"),
    [
        (b"<html><head><title>Example Domain</title>", "Example Domain"),
        (b"<TITLE lang=en>\n  Two\n lines &amp; more </TITLE>", "Two lines & more"),
        (b"<title>\xd8\xb3\xd9\x84\xd8\xa7\xd9\x85</title>", "سلام"),
        (b"<p>no title</p>", ""),
        (b"<title>" + b"x" * 400 + b"</title>", "x" * 256),
    ],
)
def test_extract_title(head: bytes, title: str) -> None:
    assert extract_title(head, None) == title


_REFERENCE_TITLE = re.compile(rb"<title(?:[\s/][^>]*)?>(.*?)</title", re.IGNORECASE | re.DOTALL)


@given(st.lists(st.sampled_from([b"<title>", b"</title>", b"<TITLE a=1>", b"</TiTlE >", b"<titlex>",
                                 b"<title", b">", b"x", b" ", b"&amp;", b"<", b"/"]),
                max_size=30).map(b"".join))
def test_extract_title_agrees_with_a_reference_regex(head: bytes) -> None:
    match = _REFERENCE_TITLE.search(head)
    expected = "" if match is None else " ".join(
        html.unescape(match.group(1).decode("utf-8", "replace")).split())[:256]
    assert extract_title(head, None) == expected


def test_local_addresses_reads_proc(tmp_path: Path) -> None:
    (tmp_path / "if_inet6").write_text(
        "00000000000000000000000000000001 01 80 10 80       lo\n"
        "20010db8000000000000000000000007 02 40 00 80     eth0\n"
    )
    (tmp_path / "fib_trie").write_text(
        "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 203.0.113.7\n        /32 host LOCAL\n"
    )
    assert local_addresses(tmp_path) == {"::1", "2001:db8::7", "203.0.113.7"}
    assert local_addresses(tmp_path / "absent") == set()


# ---- log redaction ------------------------------------------------------------------------------
def test_redact_addresses() -> None:
    text = "Error handling request from 192.0.2.55 and [2001:db8::7] at 12:34:56 v1.2.3"
    out = redact_addresses(text)
    assert "192.0.2.55" not in out and "2001:db8::7" not in out
    assert "12:34:56" in out and "v1.2.3" in out


@given(st.ip_addresses())
def test_any_address_is_redacted(addr: object) -> None:
    assert str(addr) not in redact_addresses(f"peer={addr}, done")


def test_redacting_filter_rewrites_records() -> None:
    record = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1,
                               "Error handling request from %s", ("198.51.100.4",), None)
    assert RedactAddresses().filter(record)
    assert record.getMessage() == "Error handling request from <addr>"
    own = logging.LogRecord("vigil.helper", logging.INFO, __file__, 1, "listening on %s",
                            ("192.0.2.1",), None)
    own.vigil_operator_config = True  # what extra=OPERATOR_CONFIG sets
    assert RedactAddresses().filter(own)
    assert own.getMessage() == "listening on 192.0.2.1"


# ---- command configuration ----------------------------------------------------------------------
def test_parse_resolver() -> None:
    assert parse_resolver("9.9.9.9") == ("9.9.9.9", 53)
    assert parse_resolver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_resolver("[2620:fe::fe]:53") == ("2620:fe::fe", 53)
    assert parse_resolver("2620:fe::fe") == ("2620:fe::fe", 53)
    for bad in ("dns.quad9.net", "1.2.3.4:0", "[::1", "1.2.3.4:x"):
        with pytest.raises(ConfigError):
            parse_resolver(bad)


def test_parse_config_data() -> None:
    config, serve = parse_config_data({
        "broker": {"host": "ignored"},
        "helper": {
            "host": "0.0.0.0", "port": 8443, "mode": "open", "allow_range": ["198.18.0.0/15"],
            "ipdb": ["a.tsv"], "resolver": "127.0.0.1:5300",
            "limits": {"max_concurrent": 8, "max_body_bytes": 1024, "total_timeout": 2.5},
        },
    })
    assert (serve.host, serve.port, config.mode) == ("0.0.0.0", 8443, "open")
    assert config.allow_ranges == ("198.18.0.0/15",)
    assert config.resolver == ("127.0.0.1", 5300)
    assert config.limits.max_concurrent == 8
    assert config.limits.total_timeout == 2.5
    assert config.limits.control.max_body_bytes == 1024
    assert config.per_client_per_minute == 120


@pytest.mark.parametrize(
    "helper",
    [
        {"prot": 1},
        {"port": "80"},
        {"mode": "public"},
        {"allow_range": "10.0.0.0/8"},
        {"limits": {"max_concurrent": 0}},
        {"limits": {"max_concurrent": 1.5}},
        {"limits": {"unknown": 1}},
    ],
)
def test_bad_config_data(helper: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        parse_config_data({"helper": helper})


def test_access_log_line_has_no_remote_address(caplog: pytest.LogCaptureFixture) -> None:
    from unittest import mock

    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    transport = mock.Mock()
    transport.get_extra_info.return_value = ("198.51.100.23", 40000)
    request = make_mocked_request("GET", "/api/v1/whoami", transport=transport,
                                  headers={"User-Agent": "probe 198.51.100.23",
                                           "X-Forwarded-For": "198.51.100.23"})
    assert request.remote == "198.51.100.23"
    logger = logging.getLogger("test.helper.access")  # no redaction filter on this one
    caplog.set_level(logging.INFO, logger=logger.name)
    PrivacyAccessLogger(logger, "").log(request, web.Response(status=200), 0.0123)
    assert caplog.messages == ["GET /api/v1/whoami 200 0B 12.3ms"]


def test_dns_whoami_settings_from_the_config_file() -> None:
    from collector.cli.helper import parse_listen

    config, _ = parse_config_data({"helper": {
        "whoami_zone": "whoami.helper.example", "dns_listen": ["0.0.0.0:53", "[::]:5353"],
        "geo": ["/var/lib/vigil/geo.csv"],
    }})
    assert config.whoami_zone == "whoami.helper.example"
    assert config.whoami_listen == (("0.0.0.0", 53), ("::", 5353))
    assert [str(p) for p in config.geo_files] == ["/var/lib/vigil/geo.csv"]
    assert parse_listen("[2001:2::1]:53") == ("2001:2::1", 53)
    for bad in ("53", "host:53", "1.2.3.4", "1.2.3.4:0", "[::1]"):
        with pytest.raises(ConfigError):
            parse_listen(bad)


def test_a_dns_listen_address_needs_a_zone_and_a_zone_must_be_delegable() -> None:
    from collector.helper.app import HelperConfig, create_app

    with pytest.raises(ConfigError, match="whoami zone"):
        create_app(HelperConfig(mode="open", whoami_listen=(("127.0.0.1", 0),)),
                   own_addresses=())
    with pytest.raises(ConfigError, match="delegated"):
        create_app(HelperConfig(mode="open", whoami_zone="com"), own_addresses=())
