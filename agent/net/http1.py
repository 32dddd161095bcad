"""The one HTTP/1.1 codec for raw connections: one request per connection, no I/O here.

aiohttp fetches pages.  Some measurements need the bytes themselves: the throttling transfer
counts every byte on the wire, the app checks read only a status line, the control helper's
throughput check and its bulk endpoint stream a body of a known size.  They all write and read
HTTP/1.1 through these pure functions, so probe and helper speak exactly the same dialect.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

MAX_HEAD_BYTES = 65_536
HEAD_END = b"\r\n\r\n"

REASONS = {
    200: "OK", 204: "No Content", 301: "Moved Permanently", 302: "Found", 400: "Bad Request",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
    503: "Service Unavailable",
}


class HeadError(ValueError):
    """A malformed or oversized HTTP head (the peer's fault)."""


def _safe(value: str) -> str:
    """Printable ASCII only: a header value can never smuggle a line break."""
    return "".join(c for c in value if 0x20 <= ord(c) < 0x7F)


def request(
    path: str,
    host: str,
    *,
    user_agent: str = "Mozilla/5.0",
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """A ``Connection: close`` request with identity encoding (byte counts stay honest)."""
    lines = [
        f"{method} {_safe(path) or '/'} HTTP/1.1",
        f"Host: {_safe(host)}",
        f"User-Agent: {_safe(user_agent)}",
        "Accept: */*",
        "Accept-Encoding: identity",
        "Connection: close",
    ]
    lines += [f"{_safe(k)}: {_safe(v)}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii", "replace")


def response_head(status: int, headers: Mapping[str, str]) -> bytes:
    """A ``Connection: close`` response head for a server of our own."""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}"]
    lines += [f"{_safe(k)}: {_safe(v)}" for k, v in headers.items()]
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def split_head(buffer: bytes) -> tuple[bytes, bytes] | None:
    """(head, what follows it) once the head is complete, None while it is not.

    Raises :class:`HeadError` when the head grows past :data:`MAX_HEAD_BYTES`.
    """
    end = buffer.find(HEAD_END)
    if end < 0:
        if len(buffer) > MAX_HEAD_BYTES:
            raise HeadError("response head too large")
        return None
    if end > MAX_HEAD_BYTES:
        raise HeadError("response head too large")
    return buffer[: end + len(HEAD_END)], buffer[end + len(HEAD_END) :]


def status_code(head: bytes) -> int:
    """The status code of a response head (or of its first line); HeadError if not HTTP."""
    parts = head.split(b"\r\n", 1)[0].split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise HeadError("not an HTTP response")
    return int(parts[1])


def parse_response_head(head: bytes) -> tuple[int | None, dict[str, str]]:
    """(status or None when not HTTP, headers with lower-case names; the last one wins)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return status, headers


@dataclass(frozen=True, slots=True)
class RequestLine:
    method: str
    target: str
    version: str


def request_line(head: bytes) -> RequestLine:
    """The request line of a request head; HeadError when malformed."""
    try:
        method, target, version = head.split(b"\r\n", 1)[0].decode("ascii").split(" ", 2)
    except (UnicodeDecodeError, ValueError):
        raise HeadError("bad request line") from None
    if not version.startswith("HTTP/"):
        raise HeadError("bad request line")
    return RequestLine(method, target, version)
