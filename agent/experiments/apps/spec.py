"""Endpoint lists of messaging apps and circumvention tools, loaded from TOML (updatable).

Lists live in ``configs/apps/*.toml`` in a deployment (the operator updates them when Telegram
moves a data centre or a new bridge is handed out) and default copies ship in
``agent/data/apps/``.  A file in the configured directory replaces the bundled file of the same
app.  Format::

    name = "telegram"                  # the test name (one file per app)
    updated = "2024-05-01"             # when the list was last checked, for the record
    [[group]]
    name = "dc"                        # the app works when ANY endpoint of each group works
    description = "MTProto data centres"
    [[group.endpoint]]
    name = "DC1"
    host = "149.154.175.50"            # an address, or a name resolved by the system resolver
    port = 443
    check = "tcp"                      # tcp | tls | https | wireguard | openvpn-udp | openvpn-tcp
    # tls/https: sni (default host), path (https, default "/"), verify (default true)
    # wireguard: public_key (base64, required), client_private_key, preshared_key (base64)

Errors name the file and the endpoint; a bad file is a ConfigError, never a silent skip.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from agent.errors import ConfigError

CHECKS = frozenset({"tcp", "tls", "https", "wireguard", "openvpn-udp", "openvpn-tcp"})
UDP_CHECKS = frozenset({"wireguard", "openvpn-udp"})
APP_NAMES = ("telegram", "whatsapp", "signal", "facebook_messenger", "tor", "vpn")
MAX_ENDPOINTS = 64
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{1,40}$")
_HOST_RE = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                      r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


@dataclass(frozen=True, slots=True)
class Endpoint:
    group: str
    name: str
    host: str
    port: int
    check: str
    sni: str | None = None
    path: str = "/"
    verify: bool = True
    public_key: bytes | None = None  # WireGuard server key
    client_private_key: bytes | None = None  # WireGuard client key known to the server
    preshared_key: bytes | None = None

    @property
    def is_address(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    @property
    def server_name(self) -> str:
        return self.sni or self.host

    @property
    def transport(self) -> str:
        return "udp" if self.check in UDP_CHECKS else "tcp"


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    description: str
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True, slots=True)
class AppSpec:
    name: str
    updated: str
    groups: tuple[Group, ...]
    source: str

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(e for g in self.groups for e in g.endpoints)


def _key(where: str, raw: Any, what: str) -> bytes | None:
    if raw is None:
        return None
    try:
        key = base64.b64decode(str(raw), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where}: {what} is not base64") from None
    if len(key) != 32:
        raise ConfigError(f"{where}: {what} must decode to 32 bytes")
    return key


def _endpoint(where: str, group: str, raw: Any) -> Endpoint:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: an endpoint is a table")
    allowed = {"name", "host", "port", "check", "sni", "path", "verify", "public_key",
               "client_private_key", "preshared_key"}
    unknown = set(raw) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    host = raw.get("host")
    if not isinstance(host, str) or not _HOST_RE.match(host):
        raise ConfigError(f"{where}: host must be an address or a host name")
    port = raw.get("port")
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"{where}: port must be an integer 1..65535")
    check = str(raw.get("check", "tcp"))
    if check not in CHECKS:
        raise ConfigError(f"{where}: check must be one of {sorted(CHECKS)}")
    path = str(raw.get("path", "/"))
    if not path.startswith("/"):
        raise ConfigError(f"{where}: path must start with /")
    verify = raw.get("verify", True)
    if not isinstance(verify, bool):
        raise ConfigError(f"{where}: verify must be true or false")
    sni = raw.get("sni")
    if sni is not None and (not isinstance(sni, str) or not _HOST_RE.match(sni)):
        raise ConfigError(f"{where}: sni must be a host name")
    public_key = _key(where, raw.get("public_key"), "public_key")
    if check == "wireguard" and public_key is None:
        raise ConfigError(f"{where}: a wireguard endpoint needs the server's public_key")
    return Endpoint(
        group=group,
        name=str(raw.get("name", f"{host}:{port}")),
        host=host,
        port=port,
        check=check,
        sni=sni,
        path=path,
        verify=verify,
        public_key=public_key,
        client_private_key=_key(where, raw.get("client_private_key"), "client_private_key"),
        preshared_key=_key(where, raw.get("preshared_key"), "preshared_key"),
    )


def parse_app(source: str, data: Mapping[str, Any]) -> AppSpec:
    unknown = set(data) - {"name", "updated", "group"}
    if unknown:
        raise ConfigError(f"{source}: unknown top-level keys {sorted(unknown)}")
    name = data.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"{source}: name must be a lower-case test name")
    groups_raw = data.get("group", [])
    if not isinstance(groups_raw, list) or not groups_raw:
        raise ConfigError(f"{source}: at least one [[group]] is required")
    groups = []
    total = 0
    for gi, g in enumerate(groups_raw):
        where = f"{source}: group[{gi}]"
        if not isinstance(g, dict):
            raise ConfigError(f"{where}: must be a table")
        extra = set(g) - {"name", "description", "endpoint"}
        if extra:
            raise ConfigError(f"{where}: unknown keys {sorted(extra)}")
        gname = g.get("name")
        if not isinstance(gname, str) or not _NAME_RE.match(gname):
            raise ConfigError(f"{where}: name must be a lower-case identifier")
        eps_raw = g.get("endpoint", [])
        if not isinstance(eps_raw, list) or not eps_raw:
            raise ConfigError(f"{where} ({gname}): at least one [[group.endpoint]] is required")
        eps = tuple(_endpoint(f"{where} ({gname}) endpoint[{i}]", gname, e)
                    for i, e in enumerate(eps_raw))
        total += len(eps)
        groups.append(Group(gname, str(g.get("description", "")), eps))
    if total > MAX_ENDPOINTS:
        raise ConfigError(f"{source}: {total} endpoints, more than {MAX_ENDPOINTS}")
    if len({g.name for g in groups}) != len(groups):
        raise ConfigError(f"{source}: duplicate group names")
    return AppSpec(name=name, updated=str(data.get("updated", "")), groups=tuple(groups),
                   source=source)


def load_file(path: Path) -> AppSpec:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return parse_app(str(path), data)


def bundled() -> dict[str, AppSpec]:
    out: dict[str, AppSpec] = {}
    folder = resources.files("agent").joinpath("data/apps")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            data = tomllib.loads(entry.read_text("utf-8"))
            spec = parse_app(f"agent/data/apps/{entry.name}", data)
            out[spec.name] = spec
    return out


def load_specs(directories: Iterable[Path] = ()) -> dict[str, AppSpec]:
    """Bundled lists, each replaced by a file of the same app in a configured directory."""
    specs = bundled()
    for d in directories:
        if not d.is_dir():
            continue
        for path in sorted(d.glob("*.toml")):
            spec = load_file(path)
            specs[spec.name] = spec
    return specs
