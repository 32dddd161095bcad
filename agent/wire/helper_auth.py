"""Signed requests to the control helper: the probe proves it holds an enrolled key.

The helper fetches pages on request, so it only serves enrolled probes (unless its operator runs
it in ``open`` mode).  Each request carries four headers::

    Vigil-Probe-Id:   the probe id (derived from the public key, agent.wire.envelope.probe_id_for)
    Vigil-Timestamp:  Unix seconds, decimal; the helper rejects stale ones (clock skew window)
    Vigil-Nonce:      22+ random url-safe base64 characters; the helper rejects a replay
    Vigil-Signature:  base64 of Ed25519(private key, signing_message(...))

The signed message binds everything that gives the request its meaning::

    vigil-helper-request-v1 LF METHOD LF path-with-query LF probe-id LF timestamp LF nonce LF
    lower-hex SHA-256 of the exact body bytes

(LF = one ``\\n`` byte; no trailing LF.)  The collector imports ``signing_message`` from here so
both sides build the same bytes.  Standard library and ``cryptography`` only.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

HEADER_PROBE_ID = "Vigil-Probe-Id"
HEADER_TIMESTAMP = "Vigil-Timestamp"
HEADER_NONCE = "Vigil-Nonce"
HEADER_SIGNATURE = "Vigil-Signature"
SIGNING_DOMAIN = "vigil-helper-request-v1"



class Signer(Protocol):
    """Whoever signs a request: a probe id and its Ed25519 key (``agent.identity.Identity``)."""

    @property
    def probe_id(self) -> str: ...

    @property
    def private_key(self) -> Ed25519PrivateKey: ...


NONCE_RE = re.compile(r"[A-Za-z0-9_-]{22,64}")
_FIELD_RE = re.compile(r"[\x21-\x7e]+")  # visible ASCII, no spaces or line breaks


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def signing_message(
    method: str, path: str, probe_id: str, timestamp: str, nonce: str, body_sha256: str
) -> bytes:
    """The exact bytes signed and verified.  Raises ValueError on a field that could be
    ambiguous (whitespace or a line break would let two different requests sign alike)."""
    fields = (method.upper(), path, probe_id, timestamp, nonce, body_sha256)
    for value in fields:
        if not _FIELD_RE.fullmatch(value):
            raise ValueError(f"field {value[:40]!r} is not visible ASCII without spaces")
    return "\n".join((SIGNING_DOMAIN, *fields)).encode("ascii")


def new_nonce() -> str:
    return base64.urlsafe_b64encode(os.urandom(18)).decode("ascii")


def sign_request(
    identity: Signer,
    method: str,
    path: str,
    body: bytes,
    now: float,
    *,
    nonce: str | None = None,
) -> dict[str, str]:
    """Headers that authenticate one request to the control helper.

    ``path`` is the request target exactly as sent (path and query, e.g. ``/api/v1/control``);
    ``body`` the exact body bytes (``b""`` for GET); ``now`` Unix seconds.  A fresh random nonce
    is used unless one is given (tests pin it).
    """
    timestamp = str(int(now))
    nonce = new_nonce() if nonce is None else nonce
    if not NONCE_RE.fullmatch(nonce):
        raise ValueError("nonce must be 22-64 url-safe base64 characters")
    message = signing_message(
        method, path, identity.probe_id, timestamp, nonce, body_digest(body)
    )
    signature = identity.private_key.sign(message)
    return {
        HEADER_PROBE_ID: identity.probe_id,
        HEADER_TIMESTAMP: timestamp,
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: base64.b64encode(signature).decode("ascii"),
    }
