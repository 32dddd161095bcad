"""The lab's app endpoint lists, the agent's config, a VPN responder.

``prepare(lab)`` runs while the lab is built (``Lab._build`` calls it before the helper
starts):

* writes the lab's endpoint lists (``<lab>/apps/*.toml``) for ``telegram``, ``tor`` and ``vpn``,
  pointing at the addresses the lab gave the rows of ``scenarios_apps.toml``;
* writes the lab agent's config (``[apps] directories``, ``[connectivity]`` anchors and DNS
  names), so the real agent measures lab endpoints and never the real ones;
* starts the VPN responder in the inet namespace on the ``vpn.lab.test`` address: a real
  WireGuard responder (Noise IK, ``lab.vpn_responder.wg_respond``) on UDP 51820
  and an OpenVPN hard-reset responder on UDP and TCP 1194.

Run as ``python -m lab.app_endpoints CONFIG.json`` for the responder process itself
(bounded lifetime and ready file as every lab server, ``lab.servers.common``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from lab import addressing as A

WG_PORT = 51820
OVPN_PORT = 1194
BULK_PORT = 443  # the helper's bulk endpoint: on 443 so the censor's SNI rules see it
TELEGRAM_DC_HOST = "dc.telegram.lab.test"
TELEGRAM_WEB_HOST = "web.telegram.lab.test"
TOR_RELAY_HOST = "relay.tor.lab.test"
VPN_HOST = "vpn.lab.test"
DNS_CHECK_NAME = "www.news.lab.test"


def _addr(lab: Any, host: str) -> str | None:
    try:
        return str(lab.plan.site(host).address)
    except KeyError:
        return None


def app_lists(lab: Any, wg_public: bytes) -> dict[str, str]:
    """TOML text per app for the hosts this lab has (apps whose hosts are absent are left out)."""
    out: dict[str, str] = {}
    dc, web = _addr(lab, TELEGRAM_DC_HOST), _addr(lab, TELEGRAM_WEB_HOST)
    if dc and web:
        out["telegram"] = f"""name = "telegram"
updated = "lab"
[[group]]
name = "dc"
[[group.endpoint]]
name = "DC-lab"
host = "{dc}"
port = 443
check = "tcp"
[[group.endpoint]]
name = "DC-lab-80"
host = "{dc}"
port = 80
check = "tcp"
[[group]]
name = "web"
[[group.endpoint]]
name = "{TELEGRAM_WEB_HOST}"
host = "{TELEGRAM_WEB_HOST}"
port = 443
check = "https"
"""
    relay = _addr(lab, TOR_RELAY_HOST)
    if relay:
        out["tor"] = f"""name = "tor"
updated = "lab"
[[group]]
name = "authorities"
[[group.endpoint]]
name = "relay-lab"
host = "{relay}"
port = 443
check = "tls"
sni = "{TOR_RELAY_HOST}"
verify = false
"""
    vpn = _addr(lab, VPN_HOST)
    if vpn:
        key = base64.b64encode(wg_public).decode("ascii")
        out["vpn"] = f"""name = "vpn"
updated = "lab"
[[group]]
name = "wireguard"
[[group.endpoint]]
name = "wg-lab"
host = "{vpn}"
port = {WG_PORT}
check = "wireguard"
public_key = "{key}"
[[group]]
name = "openvpn"
[[group.endpoint]]
name = "ovpn-udp-lab"
host = "{vpn}"
port = {OVPN_PORT}
check = "openvpn-udp"
"""
    return out


def agent_config(lab: Any, apps_dir: Path) -> str:
    anchors = [f"{A.HELPER_ADDR}:{A.HELPER_PORT}@international"]
    news = _addr(lab, DNS_CHECK_NAME)
    if news:
        anchors.append(f"{news}:443@international")
    return (
        "# vigil lab agent (written by lab/app_endpoints.py)\n"
        "[apps]\n"
        f"directories = [{json.dumps(str(apps_dir))}]\n"
        "[connectivity]\n"
        f"anchors = {json.dumps(anchors)}\n"
        f"dns_names = [{json.dumps(DNS_CHECK_NAME)}]\n"
        "timeout = 2.0\n"
    )


def prepare(lab: Any) -> None:
    """Write lists and agent config; start the VPN responder (registered with the lab)."""
    server = X25519PrivateKey.generate()
    wg_public = server.public_key().public_bytes_raw()
    apps_dir = lab.dir / "apps"
    apps_dir.mkdir(exist_ok=True)
    for name, text in app_lists(lab, wg_public).items():
        (apps_dir / f"{name}.toml").write_text(text, encoding="utf-8")
    env = lab.agent_env()
    Path(env["VIGIL_CONFIG"]).write_text(agent_config(lab, apps_dir), encoding="utf-8")
    vpn = _addr(lab, VPN_HOST)
    if vpn is None:
        return
    key_pem = server.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    key_path = lab.dir / "wg-server.key"
    key_path.touch(mode=0o600)
    key_path.write_bytes(key_pem)
    cfg = {**lab._common_cfg("vpn-responder"), "address": vpn, "wg_port": WG_PORT,
           "ovpn_port": OVPN_PORT, "wg_key_file": str(key_path)}
    cfg_path = lab.dir / "vpn-responder.json"
    cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
    lab._spawn("vpn-responder", "inet",
               [sys.executable, "-m", "lab.app_endpoints", str(cfg_path)])
    lab._wait_ready(["vpn-responder"])


# ---- the responder process ---------------------------------------------------------------------
class _UDP(asyncio.DatagramProtocol):
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        reply = self.answer(data[:2048])
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


async def _ovpn_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    from agent.net.handshakes import ovpn_tcp_frame
    from lab.vpn_responder import ovpn_server_reset

    try:
        head = await asyncio.wait_for(reader.readexactly(2), 10)
        packet = await asyncio.wait_for(reader.readexactly(min(int.from_bytes(head, "big"), 512)),
                                        10)
        writer.write(ovpn_tcp_frame(ovpn_server_reset(packet)))
        await writer.drain()
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def serve(cfg: dict[str, Any]) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from lab.servers.common import Lifetime, mark_ready
    from lab.vpn_responder import ovpn_server_reset, wg_respond

    life = Lifetime(cfg)
    key = load_pem_private_key(Path(cfg["wg_key_file"]).read_bytes(), password=None)
    if not isinstance(key, X25519PrivateKey):
        sys.exit("wg_key_file is not an X25519 key")

    def ovpn_udp(data: bytes) -> bytes | None:
        try:
            return ovpn_server_reset(data)
        except ValueError:
            return None

    loop = asyncio.get_running_loop()
    addr = cfg["address"]
    wg_t, _ = await loop.create_datagram_endpoint(
        lambda: _UDP(lambda d: wg_respond(key, d)), local_addr=(addr, int(cfg["wg_port"])))
    ov_t, _ = await loop.create_datagram_endpoint(
        lambda: _UDP(ovpn_udp), local_addr=(addr, int(cfg["ovpn_port"])))
    tcp = await asyncio.start_server(_ovpn_tcp, addr, int(cfg["ovpn_port"]))
    mark_ready(cfg)
    try:
        await life.wait()
    finally:
        wg_t.close()
        ov_t.close()
        tcp.close()
        await tcp.wait_closed()


def main() -> None:
    from lab.servers.common import load_config

    asyncio.run(serve(load_config(sys.argv)))


if __name__ == "__main__":
    main()
