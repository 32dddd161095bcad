"""HTTP client for the control helper (docs/control-protocol.md).

The helper tells the agent what a site looks like from an uncensored vantage point, and which
network the agent's requests come from.  Any failure to ask it (network, HTTP status, malformed
JSON) raises :class:`ControlError` carrying an OONI-style failure string; the experiment turns
that into ``control_failure`` in its observations, so the verdict is ``inconclusive`` and the
run goes on.

One ``ClientSession`` for the whole run (keep-alive to the helper is fine: the helper is ours,
not a measured site).  ``whoami`` returns the agent's public IP *only* so the runner can scrub
it from records; it is never recorded.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from agent.errors import ControlError
from agent.net import failures
from agent.wire.helper_api import (
    ClientInfo,
    ControlResponse,
    ResolverSighting,
    client_info_from,
    control_from_json,
    resolver_sighting_from,
)

MAX_ANSWER_BYTES = 1_048_576
RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_RETRY_WAIT = 5.0

# (method, request path, body) -> extra headers, called for *every* attempt (a signature's nonce
# must never be replayed); agent.wire.helper_auth.sign_request fits it.
Authenticator = Callable[[str, str, bytes], Mapping[str, str]]


class ControlFailed(ControlError):
    """The helper could not be asked or answered garbage; ``failure`` goes into the record."""

    def __init__(
        self,
        failure: str,
        detail: str = "",
        *,
        status: int | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(detail or failure)
        self.failure = failure
        self.detail = detail or failure
        self.status = status  # the helper's HTTP status when it answered, else None
        self.reason = reason  # the helper's refusal reason ("unauthenticated", ...), if any


@dataclass(frozen=True, slots=True)
class WhoAmI:
    """The agent's network as the helper sees it.  ``ip`` is for scrubbing, never recording."""

    ip: str | None
    client: ClientInfo
    dns_whoami: str | None = None  # the helper's DNS whoami zone, when it serves one


class ControlClient:
    def __init__(
        self,
        base_url: str,
        *,
        ssl_context: ssl.SSLContext,
        timeout: float = 45.0,
        max_connections: int = 16,
        retries: int = 1,
        authenticator: Authenticator | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._prefix = urlsplit(self.base_url).path  # a helper may live under a path prefix
        self._ssl = ssl_context
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_connections = max_connections
        self._retries = retries
        self._auth = authenticator
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ControlClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl, limit=self._max_connections)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                headers={"User-Agent": "vigil-agent", "Accept": "application/json"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ---- API -------------------------------------------------------------------------------
    async def control(
        self, url: str, tcp_connect: Sequence[str], body_cap: int | None = None
    ) -> ControlResponse:
        """The helper's view of ``url``; ``body_cap`` asks it to read as many body bytes as we do
        (so a page larger than both caps compares equal instead of failing the control)."""
        request: dict[str, Any] = {"url": url, "tcp_connect": list(tcp_connect)}
        if body_cap is not None:
            request["body_cap"] = body_cap
        body = json.dumps(request).encode()
        data = await self._request("POST", "/api/v1/control", body)
        try:
            return control_from_json(data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ControlFailed(
                failures.unknown(f"malformed control answer: {type(exc).__name__} {exc}")
            ) from None

    async def whoami(self) -> WhoAmI:
        data = await self._request("GET", "/api/v1/whoami", b"")
        try:
            ip = data.get("ip")
            client = client_info_from(data)
            zone = data.get("dns_whoami")
        except (KeyError, TypeError, AttributeError) as exc:
            raise ControlFailed(failures.unknown(f"malformed whoami answer: {exc}")) from None
        return WhoAmI(
            ip=str(ip) if ip else None,
            client=client,
            dns_whoami=zone if isinstance(zone, str) and zone else None,
        )

    async def resolver(self, nonce: str) -> ResolverSighting:
        """What the helper's DNS whoami zone saw for ``nonce`` (docs/control-protocol.md)."""
        body = json.dumps({"nonce": nonce}).encode()
        data = await self._request("POST", "/api/v1/resolver", body)
        try:
            return resolver_sighting_from(data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ControlFailed(failures.unknown(f"malformed resolver answer: {exc}")) from None

    async def request_json(
        self, method: str, path: str, payload: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Any other helper route (``/api/v1/bulk``, ``/api/v1/throughput``, ``/api/v1/reach``),
        signed and decoded like ``control()``; raises ControlFailed."""
        body = b"" if payload is None else json.dumps(payload).encode()
        return await self._request(method, path, body)

    # ---- transport -----------------------------------------------------------------------
    async def _request(self, method: str, path: str, body: bytes) -> dict[str, Any]:
        attempt = 0
        while True:
            headers = {"Content-Type": "application/json"} if body else {}
            if self._auth is not None:
                headers.update(self._auth(method, self._prefix + path, body))
            try:
                status, retry_after, payload = await self._once(method, path, body, headers)
            except (aiohttp.ClientError, OSError, TimeoutError, ssl.SSLError) as exc:
                raise ControlFailed(failures.classify(exc), f"control helper: {exc}") from None
            if status in RETRY_STATUSES and attempt < self._retries:
                attempt += 1
                await asyncio.sleep(min(retry_after, MAX_RETRY_WAIT))
                continue
            return _decode(status, payload)

    async def _once(
        self, method: str, path: str, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int, float, bytes]:
        session = self._get_session()
        async with session.request(
            method, self.base_url + path, data=body or None, headers=headers
        ) as resp:
            payload = await resp.content.read(MAX_ANSWER_BYTES + 1)
            retry_after = _retry_after(resp.headers.get("Retry-After"))
            return resp.status, retry_after, payload


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 1.0
    except ValueError:
        return 1.0


def _decode(status: int, payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_ANSWER_BYTES:
        raise ControlFailed(failures.unknown("control answer too large"))
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        data = None
    if status != 200:
        reason = data.get("error") if isinstance(data, dict) else None
        detail = data.get("detail") if isinstance(data, dict) else None
        text = f"control helper answered HTTP {status}" + (f" ({reason})" if reason else "")
        raise ControlFailed(
            failures.unknown(text),
            f"{text}: {detail}" if isinstance(detail, str) and detail else text,
            status=status,
            reason=reason if isinstance(reason, str) else None,
        )
    if not isinstance(data, dict):
        raise ControlFailed(failures.unknown("control answer is not a JSON object"))
    return data
