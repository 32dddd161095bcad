"""First handshake packets of WireGuard and OpenVPN, and checks of the answers (pure).

A VPN endpoint that accepts TCP or receives UDP proves little: the question is whether the
*protocol* gets through, since censors (Iran, China, Russia's TSPU) classify VPN protocols by
their first packets.  So the agent sends each protocol's real first message and records whether
a well-formed answer comes back.

WireGuard (https://www.wireguard.com/protocol/): a full Noise_IKpsk2 handshake initiation
(148 bytes: ephemeral key, encrypted static key, encrypted TAI64N timestamp, mac1 keyed by the
server's public key), built with X25519, ChaCha20-Poly1305 and BLAKE2s.  A WireGuard server
answers only a peer it knows, so a meaningful test needs the client key configured for that
server; with an unknown key a live server stays silent, exactly as a blocked one would.  The
handshake response (92 bytes) is checked cryptographically, which proves the real server (not
a middlebox) answered.

OpenVPN: ``P_CONTROL_HARD_RESET_CLIENT_V2`` (opcode 7), the first packet of every OpenVPN
session without ``tls-auth``/``tls-crypt``; the server's ``P_CONTROL_HARD_RESET_SERVER_V2``
(opcode 8) must acknowledge our packet id 0 and name our session id.  Over TCP each packet is
prefixed with its 16-bit length.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

# ---- WireGuard ---------------------------------------------------------------------------------
CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
WG_INITIATION_LEN = 148
WG_RESPONSE_LEN = 92


def wg_hash(data: bytes) -> bytes:
    return hashlib.blake2s(data).digest()


def wg_mac(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2s(data, digest_size=16, key=key).digest()


def wg_hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


def wg_kdf(key: bytes, data: bytes, n: int) -> list[bytes]:
    t0 = wg_hmac(key, data)
    out: list[bytes] = []
    prev = b""
    for i in range(1, n + 1):
        prev = wg_hmac(t0, prev + bytes([i]))
        out.append(prev)
    return out


def wg_aead(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    nonce = b"\x00" * 4 + struct.pack("<Q", counter)
    return ChaCha20Poly1305(key).encrypt(nonce, plaintext, ad)


def wg_aead_open(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes:
    nonce = b"\x00" * 4 + struct.pack("<Q", counter)
    return ChaCha20Poly1305(key).decrypt(nonce, ciphertext, ad)


def raw_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def dh(private: X25519PrivateKey, public: bytes) -> bytes:
    return private.exchange(X25519PublicKey.from_public_bytes(public))


def tai64n(now: float | None = None) -> bytes:
    t = time.time() if now is None else now
    seconds = int(t)
    nanos = int((t - seconds) * 1e9)
    return struct.pack(">QI", (1 << 62) + seconds, nanos)


def initial_chain(responder_public: bytes) -> tuple[bytes, bytes]:
    """(chaining key, hash) after mixing in the responder's static public key."""
    ck = wg_hash(CONSTRUCTION)
    h = wg_hash(ck + IDENTIFIER)
    h = wg_hash(h + responder_public)
    return ck, h


@dataclass(frozen=True)
class WGInitiation:
    packet: bytes
    sender_index: int
    ephemeral: X25519PrivateKey
    static: X25519PrivateKey
    chaining_key: bytes
    hash: bytes
    psk: bytes


def wg_initiation(
    server_public: bytes,
    client_private: X25519PrivateKey | None = None,
    *,
    psk: bytes | None = None,
    now: float | None = None,
    sender_index: int | None = None,
) -> WGInitiation:
    """A real handshake initiation to a server whose static public key is ``server_public``."""
    if len(server_public) != 32:
        raise ValueError("a WireGuard public key is 32 bytes")
    static = client_private or X25519PrivateKey.generate()
    eph = X25519PrivateKey.generate()
    index = int.from_bytes(os.urandom(4), "little") if sender_index is None else sender_index
    ck, h = initial_chain(server_public)
    e_pub = raw_public(eph)
    (ck,) = wg_kdf(ck, e_pub, 1)
    h = wg_hash(h + e_pub)
    ck, k = wg_kdf(ck, dh(eph, server_public), 2)
    enc_static = wg_aead(k, 0, raw_public(static), h)
    h = wg_hash(h + enc_static)
    ck, k = wg_kdf(ck, dh(static, server_public), 2)
    enc_time = wg_aead(k, 0, tai64n(now), h)
    h = wg_hash(h + enc_time)
    body = struct.pack("<B3xI", 1, index) + e_pub + enc_static + enc_time
    mac1 = wg_mac(wg_hash(LABEL_MAC1 + server_public), body)
    packet = body + mac1 + b"\x00" * 16
    return WGInitiation(packet, index, eph, static, ck, h, psk or b"\x00" * 32)


def wg_check_response(init: WGInitiation, packet: bytes) -> str | None:
    """None when ``packet`` is a valid handshake response to ``init``, else why not."""
    if len(packet) != WG_RESPONSE_LEN:
        return f"length {len(packet)} is not {WG_RESPONSE_LEN}"
    if packet[0] != 2 or packet[1:4] != b"\x00\x00\x00":
        return f"message type {packet[0]} is not 2 (handshake response)"
    (_sender, receiver) = struct.unpack_from("<II", packet, 4)
    if receiver != init.sender_index:
        return "receiver index does not match our sender index"
    mac1 = wg_mac(wg_hash(LABEL_MAC1 + raw_public(init.static)), packet[:60])
    if not hmac.compare_digest(mac1, packet[60:76]):
        return "mac1 does not verify"
    e_r = packet[12:44]
    ck, h = init.chaining_key, init.hash
    (ck,) = wg_kdf(ck, e_r, 1)
    h = wg_hash(h + e_r)
    (ck,) = wg_kdf(ck, dh(init.ephemeral, e_r), 1)
    (ck,) = wg_kdf(ck, dh(init.static, e_r), 1)
    ck, tau, k = wg_kdf(ck, init.psk, 3)
    h = wg_hash(h + tau)
    try:
        wg_aead_open(k, 0, packet[44:60], h)
    except InvalidTag:
        return "encrypted payload does not authenticate (not the configured server)"
    return None


def wg_looks_like_initiation(packet: bytes) -> bool:
    return len(packet) == WG_INITIATION_LEN and packet[0] == 1 and packet[1:4] == b"\x00" * 3


# ---- OpenVPN -----------------------------------------------------------------------------------
P_CONTROL_HARD_RESET_CLIENT_V2 = 7
P_CONTROL_HARD_RESET_SERVER_V2 = 8


@dataclass(frozen=True, slots=True)
class OVPNReset:
    packet: bytes  # without the TCP length prefix
    session_id: bytes


def ovpn_client_reset(session_id: bytes | None = None) -> OVPNReset:
    sid = os.urandom(8) if session_id is None else session_id
    if len(sid) != 8:
        raise ValueError("an OpenVPN session id is 8 bytes")
    packet = bytes([P_CONTROL_HARD_RESET_CLIENT_V2 << 3]) + sid + b"\x00" + struct.pack(">I", 0)
    return OVPNReset(packet, sid)


def ovpn_tcp_frame(packet: bytes) -> bytes:
    return struct.pack(">H", len(packet)) + packet


def ovpn_looks_like_client_reset(packet: bytes) -> bool:
    return len(packet) == 14 and packet[0] >> 3 == P_CONTROL_HARD_RESET_CLIENT_V2


def ovpn_check_response(reset: OVPNReset, packet: bytes) -> str | None:
    """None when ``packet`` is the server's hard reset acknowledging ours, else why not."""
    if len(packet) < 1 + 8 + 1:
        return f"too short ({len(packet)} bytes)"
    opcode = packet[0] >> 3
    if opcode != P_CONTROL_HARD_RESET_SERVER_V2:
        return f"opcode {opcode} is not {P_CONTROL_HARD_RESET_SERVER_V2} (server hard reset)"
    n_acks = packet[9]
    need = 10 + 4 * n_acks + (8 if n_acks else 0)
    if n_acks == 0 or len(packet) < need:
        return "the reset does not acknowledge our packet"
    acks = [struct.unpack_from(">I", packet, 10 + 4 * i)[0] for i in range(n_acks)]
    remote = packet[10 + 4 * n_acks : 18 + 4 * n_acks]
    if 0 not in acks or remote != reset.session_id:
        return "the acknowledgement names another session"
    return None
