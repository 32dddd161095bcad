"""The lab's VPN endpoints: a WireGuard responder and an OpenVPN server reset.

They answer the probe's first packets (``agent.net.handshakes``) the way real servers do, so the
lab can prove a VPN handshake got through (or that a censor stopped it).  Lab code only: the
agent never answers anyone.
"""

from __future__ import annotations

import hmac
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.net.handshakes import (
    LABEL_MAC1,
    P_CONTROL_HARD_RESET_SERVER_V2,
    dh,
    initial_chain,
    ovpn_looks_like_client_reset,
    raw_public,
    wg_aead,
    wg_aead_open,
    wg_hash,
    wg_kdf,
    wg_looks_like_initiation,
    wg_mac,
)


def ovpn_server_reset(client_packet: bytes, session_id: bytes | None = None) -> bytes:
    """The server's answer to a client reset (the lab's responder uses it)."""
    if not ovpn_looks_like_client_reset(client_packet):
        raise ValueError("not an OpenVPN client hard reset")
    sid = os.urandom(8) if session_id is None else session_id
    client_sid = client_packet[1:9]
    return (
        bytes([P_CONTROL_HARD_RESET_SERVER_V2 << 3]) + sid + b"\x01" + struct.pack(">I", 0)
        + client_sid + struct.pack(">I", 0)
    )


def wg_respond(
    server_private: X25519PrivateKey, packet: bytes, *, psk: bytes | None = None
) -> bytes | None:
    """A WireGuard responder's answer to an initiation, or None when it does not verify.

    The lab's VPN responder uses it; unlike a real server it accepts any initiator key (it
    proves the protocol got through, not that the client is authorised).
    """
    if not wg_looks_like_initiation(packet):
        return None
    s_pub = raw_public(server_private)
    mac1 = wg_mac(wg_hash(LABEL_MAC1 + s_pub), packet[:116])
    if not hmac.compare_digest(mac1, packet[116:132]):
        return None
    (sender,) = struct.unpack_from("<I", packet, 4)
    e_i = packet[8:40]
    ck, h = initial_chain(s_pub)
    (ck,) = wg_kdf(ck, e_i, 1)
    h = wg_hash(h + e_i)
    ck, k = wg_kdf(ck, dh(server_private, e_i), 2)
    try:
        s_i = wg_aead_open(k, 0, packet[40:88], h)
        h = wg_hash(h + packet[40:88])
        ck, k = wg_kdf(ck, dh(server_private, s_i), 2)
        wg_aead_open(k, 0, packet[88:116], h)
    except InvalidTag:
        return None
    h = wg_hash(h + packet[88:116])
    eph = X25519PrivateKey.generate()
    e_r = raw_public(eph)
    (ck,) = wg_kdf(ck, e_r, 1)
    h = wg_hash(h + e_r)
    (ck,) = wg_kdf(ck, dh(eph, e_i), 1)
    (ck,) = wg_kdf(ck, dh(eph, s_i), 1)
    ck, tau, k = wg_kdf(ck, psk or b"\x00" * 32, 3)
    h = wg_hash(h + tau)
    empty = wg_aead(k, 0, b"", h)
    index = int.from_bytes(os.urandom(4), "little")
    body = struct.pack("<B3xII", 2, index, sender) + e_r + empty
    mac = wg_mac(wg_hash(LABEL_MAC1 + s_i), body)
    return body + mac + b"\x00" * 16
