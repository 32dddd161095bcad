"""Map OS, SSL, DNS and aiohttp errors to OONI failure strings, at the I/O boundary only.

Everything above ``agent.net`` sees strings such as ``connection_reset``, never exceptions, so
that a reset connection is *data* (docs/design.md, Contracts).  The strings are OONI's
(df-007-errors) so analysts can compare Vigil's evidence with OONI's.

Exceptions are unwrapped before they are classified: aiohttp wraps OS errors
(``ClientConnectorError.os_error``, ``ClientConnectorCertificateError.certificate_error``) and
chains others (``__cause__``); the innermost *meaningful* error decides the string.
"""

from __future__ import annotations

import asyncio
import errno
import ssl
from typing import Final

CONNECTION_REFUSED: Final = "connection_refused"
CONNECTION_RESET: Final = "connection_reset"
GENERIC_TIMEOUT: Final = "generic_timeout_error"
EOF_ERROR: Final = "eof_error"
DNS_NXDOMAIN: Final = "dns_nxdomain_error"
DNS_NO_ANSWER: Final = "dns_no_answer"
DNS_SERVFAIL: Final = "dns_servfail_error"
DNS_REFUSED: Final = "dns_refused_error"
HOST_UNREACHABLE: Final = "host_unreachable"
NETWORK_UNREACHABLE: Final = "network_unreachable"
SSL_INVALID_HOSTNAME: Final = "ssl_invalid_hostname"
SSL_INVALID_CERTIFICATE: Final = "ssl_invalid_certificate"
SSL_UNKNOWN_AUTHORITY: Final = "ssl_unknown_authority"
SSL_FAILED_HANDSHAKE: Final = "ssl_failed_handshake"
UNKNOWN_PREFIX: Final = "unknown_failure: "

KNOWN: Final = frozenset(
    {
        CONNECTION_REFUSED, CONNECTION_RESET, GENERIC_TIMEOUT, EOF_ERROR, DNS_NXDOMAIN,
        DNS_NO_ANSWER, DNS_SERVFAIL, DNS_REFUSED, HOST_UNREACHABLE, NETWORK_UNREACHABLE,
        SSL_INVALID_HOSTNAME, SSL_INVALID_CERTIFICATE, SSL_UNKNOWN_AUTHORITY,
        SSL_FAILED_HANDSHAKE,
    }
)

CERTIFICATE_FAILURES: Final = frozenset(
    {SSL_INVALID_HOSTNAME, SSL_INVALID_CERTIFICATE, SSL_UNKNOWN_AUTHORITY}
)

_MAX_TEXT = 200

# OpenSSL X509_V_ERR_* codes (x509_vfy.h); stable across OpenSSL 1.1 and 3.x.
_X509_HOSTNAME_MISMATCH = 62
_X509_IP_ADDRESS_MISMATCH = 64
_X509_UNKNOWN_AUTHORITY = frozenset(
    {
        2,  # UNABLE_TO_GET_ISSUER_CERT
        18,  # DEPTH_ZERO_SELF_SIGNED_CERT
        19,  # SELF_SIGNED_CERT_IN_CHAIN
        20,  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
        21,  # UNABLE_TO_VERIFY_LEAF_SIGNATURE
        27,  # CERT_UNTRUSTED
    }
)

_ERRNO: Final = {
    errno.ECONNREFUSED: CONNECTION_REFUSED,
    errno.ECONNRESET: CONNECTION_RESET,
    errno.ECONNABORTED: CONNECTION_RESET,
    errno.EPIPE: CONNECTION_RESET,
    errno.ETIMEDOUT: GENERIC_TIMEOUT,
    errno.EHOSTUNREACH: HOST_UNREACHABLE,
    errno.EHOSTDOWN: HOST_UNREACHABLE,
    errno.ENETUNREACH: NETWORK_UNREACHABLE,
    errno.ENETDOWN: NETWORK_UNREACHABLE,
}

_RCODE: Final = {
    "NXDOMAIN": DNS_NXDOMAIN,
    "SERVFAIL": DNS_SERVFAIL,
    "REFUSED": DNS_REFUSED,
}


def unknown(text: str) -> str:
    """``unknown_failure: <text>``, single line and bounded so a record stays small."""
    flat = " ".join(text.split())[:_MAX_TEXT]
    return f"{UNKNOWN_PREFIX}{flat}" if flat else f"{UNKNOWN_PREFIX}unspecified"


def is_certificate_failure(failure: str | None) -> bool:
    return failure in CERTIFICATE_FAILURES


def from_dns_rcode(rcode: str, has_addresses: bool) -> str | None:
    """Failure string for a DNS reply: ``None`` for NOERROR with addresses."""
    if rcode == "NOERROR":
        return None if has_addresses else DNS_NO_ANSWER
    return _RCODE.get(rcode, unknown(f"dns rcode {rcode}"))


def _certificate(exc: ssl.SSLCertVerificationError) -> str:
    code = getattr(exc, "verify_code", None)
    if code in (_X509_HOSTNAME_MISMATCH, _X509_IP_ADDRESS_MISMATCH):
        return SSL_INVALID_HOSTNAME
    if code in _X509_UNKNOWN_AUTHORITY:
        return SSL_UNKNOWN_AUTHORITY
    if code is None and "hostname" in str(exc).lower():  # ssl.match_hostname style
        return SSL_INVALID_HOSTNAME
    return SSL_INVALID_CERTIFICATE


def _inner(exc: BaseException) -> BaseException | None:
    """The wrapped error worth classifying instead of ``exc``, if any."""
    cert = getattr(exc, "certificate_error", None)  # aiohttp ClientConnectorCertificateError
    if isinstance(cert, BaseException) and cert is not exc:
        return cert
    os_error = getattr(exc, "os_error", None)  # aiohttp ClientConnectorError
    if isinstance(os_error, BaseException) and os_error is not exc:
        return os_error
    if exc.__cause__ is not None:
        return exc.__cause__
    return None


def _direct(exc: BaseException) -> str | None:
    """Classify one exception without unwrapping; None when it says nothing specific."""
    preset = getattr(exc, "ooni_failure", None)  # our own errors that already know their string
    if isinstance(preset, str):
        return preset
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _certificate(exc)
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, EOFError)):
        return EOF_ERROR  # asyncio.IncompleteReadError is an EOFError
    if isinstance(exc, ssl.SSLError):
        return SSL_FAILED_HANDSHAKE
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return GENERIC_TIMEOUT
    if type(exc).__module__.startswith("dns.") and type(exc).__name__ in (
        "Timeout", "LifetimeTimeout"
    ):
        return GENERIC_TIMEOUT  # dnspython's own timeouts are not TimeoutError
    if isinstance(exc, ConnectionRefusedError):
        return CONNECTION_REFUSED
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return CONNECTION_RESET
    if isinstance(exc, OSError) and exc.errno is not None:
        return _ERRNO.get(exc.errno)
    return _aiohttp_specific(exc)


# aiohttp's parser errors: the server's bytes are not HTTP (a censor may forge them in clear
# text; over TLS valid for the site they are the site's own)
_MALFORMED_RESPONSE: Final = frozenset(
    {"BadStatusLine", "BadHttpMessage", "LineTooLong", "InvalidHeader", "BadHttpMethod",
     "InvalidURLError"}
)


def _aiohttp_specific(exc: BaseException) -> str | None:
    # Imported lazily by name: this module must stay importable without aiohttp in the path.
    name = type(exc).__name__
    if name == "ServerDisconnectedError":
        return EOF_ERROR
    if name == "ClientPayloadError":
        # aiohttp keeps the connection error that cut the body short only in the message.
        text = str(exc)
        if "ConnectionResetError" in text or "Connection reset" in text:
            return CONNECTION_RESET
        if "TimeoutError" in text:
            return GENERIC_TIMEOUT
        return EOF_ERROR  # the peer closed before the announced length: truncated body
    if name == "TooManyRedirects":
        return unknown("too many redirects")
    if name in ("InvalidUrlRedirectClientError", "NonHttpUrlRedirectClientError"):
        return unknown("invalid redirect location")
    if name in _MALFORMED_RESPONSE:
        return unknown("malformed response")
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 8 and all(current is not c for c in chain):
        chain.append(current)
        current = _inner(current)
    return chain


def _specific(exc: BaseException) -> str | None:
    """The string of the innermost error that says something specific, if any."""
    for candidate in reversed(_chain(exc)):
        found = _direct(candidate)
        if found is not None:
            return found
    return None


def classify(exc: BaseException) -> str:
    """The OONI failure string for ``exc`` (never raises, never returns None).

    The innermost error that says something specific wins: aiohttp's
    ``ClientConnectorCertificateError`` is itself an ``ssl.CertificateError`` but the
    ``SSLCertVerificationError`` it wraps knows whether the name or the authority was wrong.
    An unknown error keeps its text (the probe's own addresses are scrubbed from records later).
    """
    found = _specific(exc)
    if found is not None:
        return found
    text = str(exc)
    return unknown(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def classify_quietly(exc: BaseException) -> str:
    """Like :func:`classify`, but an unknown error says only its kind, never its text.

    For the control helper, which answers strangers: ``str(OSError)`` and aiohttp's messages
    often carry addresses (the helper's own, or a refused target's), so only the OS error's
    ``strerror`` or the exception's type name is kept.
    """
    found = _specific(exc)
    if found is not None:
        return found
    if type(exc).__name__ == "ClientResponseError":
        return unknown("invalid HTTP response")
    for candidate in reversed(_chain(exc)):
        if isinstance(candidate, OSError) and candidate.strerror:
            return unknown(candidate.strerror)
    return unknown(type(exc).__name__)


def classify_dns(exc: BaseException) -> str:
    """Failure string for a dnspython stub-resolver error (NXDOMAIN, no answer, no server)."""
    name = type(exc).__name__
    if name == "NXDOMAIN":
        return DNS_NXDOMAIN
    if name == "NoAnswer":
        return DNS_NO_ANSWER
    if name == "NoNameservers":
        kwargs = getattr(exc, "kwargs", {}) or {}
        errors = kwargs.get("errors", ())
        rcodes = {str(e[3]) for e in errors if len(e) > 3 and isinstance(e[3], str)}
        if "SERVFAIL" in rcodes:
            return DNS_SERVFAIL
        if "REFUSED" in rcodes:
            return DNS_REFUSED
        return DNS_SERVFAIL if rcodes else unknown("no nameserver answered")
    if name in ("Timeout", "LifetimeTimeout"):
        return GENERIC_TIMEOUT
    return classify_quietly(exc)
