"""Remove the volunteer's addresses from everything recorded.

The probe's public IP (learnt from the control helper's ``whoami``) and the addresses of its own
interfaces (read from /proc and from the local end of every socket the agent opens) are
replaced by ``[scrubbed]`` in every string and every mapping key of a record: headers, bodies,
endpoints.  A site that echoes the visitor's address (``what is my IP`` pages, ``X-Forwarded-For``
reflections) must not turn a measurement into a way of locating the volunteer.

Loopback and unspecified addresses identify nobody and are left alone, as are addresses that
are part of longer numbers (``1.2.3.45`` does not contain the address ``1.2.3.4``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PLACEHOLDER = "[scrubbed]"


# An address must not be glued to a longer one: digits/dots around IPv4, hex digits/colons
# around IPv6 ("1.2.3.45" does not contain 1.2.3.4; "1.2.3.4:443" does).
_V4 = r"(?<![0-9.]){}(?![0-9]|\.[0-9])"
_V6 = r"(?<![0-9A-Fa-f:]){}(?![0-9A-Fa-f:])"


def _variants(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[str]:
    if isinstance(ip, ipaddress.IPv4Address):
        return [_V4.format(re.escape(str(ip)))]
    forms = {ip.compressed, ip.exploded}
    return [_V6.format(re.escape(f)) for f in sorted(forms, key=len, reverse=True)]


class Scrubber:
    """A growing set of addresses and a compiled pattern that removes them."""

    def __init__(self, addresses: Iterable[str] = ()) -> None:
        self._addresses: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        for a in addresses:
            self.add(a)

    @property
    def addresses(self) -> frozenset[str]:
        return frozenset(self._addresses)

    def add(self, address: str | None) -> bool:
        """Add an address to scrub; returns True if it is new and worth scrubbing."""
        if not address:
            return False
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0].strip("[]"))
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_loopback or ip.is_unspecified:
            return False
        key = ip.compressed
        if key in self._addresses:
            return False
        self._addresses.add(key)
        self._pattern = None
        return True

    def _compiled(self) -> re.Pattern[str] | None:
        if self._pattern is None and self._addresses:
            alternatives: list[str] = []
            for text in sorted(self._addresses):
                alternatives.extend(_variants(ipaddress.ip_address(text)))
            self._pattern = re.compile("|".join(alternatives), re.IGNORECASE)
        return self._pattern

    def text(self, value: str) -> str:
        pattern = self._compiled()
        return value if pattern is None else pattern.sub(PLACEHOLDER, value)

    def scrub(self, value: Any) -> Any:
        """A copy of ``value`` (JSON-like) with every address replaced, keys included."""
        if self._compiled() is None:
            return value
        return self._walk(value)

    def _walk(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {
                (self.text(k) if isinstance(k, str) else k): self._walk(v) for k, v in value.items()
            }
        if isinstance(value, (list, tuple)):
            return [self._walk(v) for v in value]
        return value


def local_addresses(proc: Path = Path("/proc/net")) -> set[str]:
    """Addresses of this host's interfaces (Linux /proc; empty elsewhere or on error)."""
    found: set[str] = set()
    try:
        lines = (proc / "fib_trie").read_text().splitlines()
    except OSError:
        lines = []
    previous = ""
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("/32 host LOCAL") and previous.startswith("|-- "):
            found.add(previous[4:].strip())
        previous = stripped
    try:
        v6 = (proc / "if_inet6").read_text().splitlines()
    except OSError:
        v6 = []
    for line in v6:
        fields = line.split()
        if fields and len(fields[0]) == 32:
            try:
                found.add(str(ipaddress.IPv6Address(int(fields[0], 16))))
            except ValueError:
                continue
    return found
