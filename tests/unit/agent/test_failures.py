"""The OS/SSL/DNS/aiohttp error → OONI failure-string mapping (docs/design.md, Contracts)."""

from __future__ import annotations

import asyncio
import errno
import ssl

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey

from agent.net import failures as F


def _cert_error(
    code: int, message: str = "certificate verify failed"
) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, message)
    exc.verify_code = code
    exc.verify_message = message
    return exc


def _key() -> ConnectionKey:
    return ConnectionKey("site.test", 443, True, True, None, None, None)


def _chained(outer: BaseException, cause: BaseException) -> BaseException:
    outer.__cause__ = cause
    return outer


def _timeout_from_cancel() -> BaseException:
    exc = TimeoutError()
    exc.__cause__ = asyncio.CancelledError()
    return exc


CASES: list[tuple[str, BaseException, str]] = [
    ("refused", ConnectionRefusedError(errno.ECONNREFUSED, "refused"), F.CONNECTION_REFUSED),
    ("reset", ConnectionResetError(errno.ECONNRESET, "reset"), F.CONNECTION_RESET),
    ("reset without errno (asyncio)", ConnectionResetError(), F.CONNECTION_RESET),
    ("aborted", ConnectionAbortedError(errno.ECONNABORTED, "aborted"), F.CONNECTION_RESET),
    ("broken pipe", BrokenPipeError(errno.EPIPE, "pipe"), F.CONNECTION_RESET),
    ("timeout", TimeoutError(), F.GENERIC_TIMEOUT),
    ("asyncio timeout from cancel", _timeout_from_cancel(), F.GENERIC_TIMEOUT),
    ("kernel ETIMEDOUT", OSError(errno.ETIMEDOUT, "timed out"), F.GENERIC_TIMEOUT),
    ("host unreachable", OSError(errno.EHOSTUNREACH, "no route"), F.HOST_UNREACHABLE),
    ("network unreachable", OSError(errno.ENETUNREACH, "unreachable"), F.NETWORK_UNREACHABLE),
    ("network down", OSError(errno.ENETDOWN, "down"), F.NETWORK_UNREACHABLE),
    ("eof", EOFError("closed"), F.EOF_ERROR),
    ("incomplete read", asyncio.IncompleteReadError(b"", 10), F.EOF_ERROR),
    ("ssl eof", ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), F.EOF_ERROR),
    ("ssl zero return", ssl.SSLZeroReturnError(6, "TLS/SSL connection has been closed"),
     F.EOF_ERROR),
    ("hostname mismatch", _cert_error(62, "Hostname mismatch"), F.SSL_INVALID_HOSTNAME),
    ("ip mismatch", _cert_error(64, "IP address mismatch"), F.SSL_INVALID_HOSTNAME),
    ("self signed", _cert_error(18, "self-signed certificate"), F.SSL_UNKNOWN_AUTHORITY),
    ("self signed in chain", _cert_error(19), F.SSL_UNKNOWN_AUTHORITY),
    ("unknown issuer", _cert_error(20, "unable to get local issuer certificate"),
     F.SSL_UNKNOWN_AUTHORITY),
    ("expired", _cert_error(10, "certificate has expired"), F.SSL_INVALID_CERTIFICATE),
    ("not yet valid", _cert_error(9, "certificate is not yet valid"), F.SSL_INVALID_CERTIFICATE),
    ("handshake alert", ssl.SSLError(1, "[SSL: SSLV3_ALERT_HANDSHAKE_FAILURE]"),
     F.SSL_FAILED_HANDSHAKE),
    ("aiohttp connector refused",
     aiohttp.ClientConnectorError(_key(), ConnectionRefusedError(errno.ECONNREFUSED, "x")),
     F.CONNECTION_REFUSED),
    ("aiohttp certificate error (unwrapped to the verify code)",
     aiohttp.ClientConnectorCertificateError(_key(), _cert_error(20)), F.SSL_UNKNOWN_AUTHORITY),
    ("aiohttp certificate error hostname",
     aiohttp.ClientConnectorCertificateError(_key(), _cert_error(62)), F.SSL_INVALID_HOSTNAME),
    ("aiohttp ssl error", aiohttp.ClientConnectorSSLError(_key(), ssl.SSLError(1, "alert")),
     F.SSL_FAILED_HANDSHAKE),
    ("aiohttp server disconnected", aiohttp.ServerDisconnectedError(), F.EOF_ERROR),
    ("aiohttp server timeout", aiohttp.ServerTimeoutError("read"), F.GENERIC_TIMEOUT),
    ("aiohttp connection lost wraps reset",
     _chained(aiohttp.ClientConnectionError("Connection lost"),
              ConnectionResetError(errno.ECONNRESET, "x")), F.CONNECTION_RESET),
    ("aiohttp payload cut by a reset",
     aiohttp.ClientPayloadError("Response payload is not completed: <ContentLengthError>. "
                                "ConnectionResetError(104, 'Connection reset by peer')"),
     F.CONNECTION_RESET),
    ("aiohttp payload cut by a close",
     aiohttp.ClientPayloadError("Response payload is not completed: <ContentLengthError>"),
     F.EOF_ERROR),
    ("aiohttp unusable redirect location",
     aiohttp.InvalidUrlRedirectClientError("https://[bad", "not a URL"),
     "unknown_failure: invalid redirect location"),
    ("aiohttp redirect to a non-web scheme",
     aiohttp.NonHttpUrlRedirectClientError("ftp://files.test/"),
     "unknown_failure: invalid redirect location"),
    ("aiohttp bytes that are not an HTTP response",
     _chained(aiohttp.ClientResponseError(None, (), message="bad status"),  # type: ignore[arg-type]
              aiohttp.http_exceptions.BadStatusLine("HTTX/9 200")),
     "unknown_failure: malformed response"),
    ("preset failure attribute", type("X", (OSError,), {"ooni_failure": F.DNS_NXDOMAIN})(),
     F.DNS_NXDOMAIN),
]


@pytest.mark.parametrize(("exc", "expected"), [(c[1], c[2]) for c in CASES],
                         ids=[c[0] for c in CASES])
def test_classify(exc: BaseException, expected: str) -> None:
    assert F.classify(exc) == expected


def test_unknown_errors_keep_a_bounded_single_line_text() -> None:
    failure = F.classify(RuntimeError("something\nodd   happened " + "x" * 500))
    assert failure.startswith("unknown_failure: RuntimeError: something odd happened")
    assert "\n" not in failure
    assert len(failure) <= len(F.UNKNOWN_PREFIX) + 200
    assert F.classify(ValueError()) == "unknown_failure: ValueError"
    assert F.unknown("") == "unknown_failure: unspecified"


def test_oserror_with_unmapped_errno_is_unknown() -> None:
    failure = F.classify(OSError(errno.EACCES, "Permission denied"))
    assert failure.startswith(F.UNKNOWN_PREFIX) and "Permission denied" in failure


def test_cycles_in_exception_chains_terminate() -> None:
    a = RuntimeError("a")
    b = RuntimeError("b")
    a.__cause__ = b
    b.__cause__ = a
    assert F.classify(a).startswith(F.UNKNOWN_PREFIX)


@pytest.mark.parametrize(
    ("rcode", "has_addr", "expected"),
    [
        ("NOERROR", True, None),
        ("NOERROR", False, F.DNS_NO_ANSWER),
        ("NXDOMAIN", False, F.DNS_NXDOMAIN),
        ("SERVFAIL", False, F.DNS_SERVFAIL),
        ("REFUSED", False, F.DNS_REFUSED),
        ("FORMERR", False, "unknown_failure: dns rcode FORMERR"),
    ],
)
def test_dns_rcodes(rcode: str, has_addr: bool, expected: str | None) -> None:
    assert F.from_dns_rcode(rcode, has_addr) == expected


def test_every_known_string_is_in_the_guide_vocabulary() -> None:
    guide = {
        "connection_refused", "connection_reset", "generic_timeout_error", "eof_error",
        "dns_nxdomain_error", "dns_no_answer", "dns_servfail_error", "dns_refused_error",
        "host_unreachable", "network_unreachable", "ssl_invalid_hostname",
        "ssl_invalid_certificate", "ssl_unknown_authority", "ssl_failed_handshake",
    }
    assert guide == F.KNOWN
    assert F.is_certificate_failure(F.SSL_UNKNOWN_AUTHORITY)
    assert not F.is_certificate_failure(F.CONNECTION_RESET)
    assert not F.is_certificate_failure(None)
