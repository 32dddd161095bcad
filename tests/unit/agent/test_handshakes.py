"""WireGuard and OpenVPN first packets: sizes, fields and round trips with a responder."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.net.handshakes import (
    WG_INITIATION_LEN,
    WG_RESPONSE_LEN,
    ovpn_check_response,
    ovpn_client_reset,
    ovpn_looks_like_client_reset,
    ovpn_tcp_frame,
    raw_public,
    tai64n,
    wg_check_response,
    wg_initiation,
    wg_looks_like_initiation,
)
from lab.vpn_responder import ovpn_server_reset, wg_respond


def test_wireguard_initiation_shape() -> None:
    server = X25519PrivateKey.generate()
    init = wg_initiation(raw_public(server), sender_index=0x01020304)
    p = init.packet
    assert len(p) == WG_INITIATION_LEN
    assert p[0] == 1 and p[1:4] == b"\0\0\0"
    assert struct.unpack_from("<I", p, 4)[0] == 0x01020304
    assert p[132:148] == b"\0" * 16  # no cookie: mac2 zero
    assert wg_looks_like_initiation(p)


def test_wireguard_round_trip_verifies_cryptographically() -> None:
    server = X25519PrivateKey.generate()
    init = wg_initiation(raw_public(server))
    answer = wg_respond(server, init.packet)
    assert answer is not None and len(answer) == WG_RESPONSE_LEN
    assert wg_check_response(init, answer) is None


def test_wireguard_with_psk_and_client_key() -> None:
    server, client = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    psk = bytes(range(32))
    init = wg_initiation(raw_public(server), client, psk=psk)
    answer = wg_respond(server, init.packet, psk=psk)
    assert answer is not None and wg_check_response(init, answer) is None
    wrong = wg_respond(server, init.packet, psk=b"\x01" * 32)
    assert wrong is not None and wg_check_response(init, wrong) is not None


def test_wireguard_wrong_server_key_is_ignored() -> None:
    server, other = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    init = wg_initiation(raw_public(other))
    assert wg_respond(server, init.packet) is None  # mac1 keyed by another server's key


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda p: p[:-1], "length"),
        (lambda p: b"\x03" + p[1:], "message type"),
        (lambda p: p[:8] + b"\0\0\0\0" + p[12:], "receiver index"),
        (lambda p: p[:60] + bytes(16) + p[76:], "mac1"),
    ],
)
def test_wireguard_bad_responses_are_named(mutate: object, why: str) -> None:
    server = X25519PrivateKey.generate()
    init = wg_initiation(raw_public(server), sender_index=7)
    answer = wg_respond(server, init.packet)
    assert answer is not None
    reason = wg_check_response(init, mutate(answer))  # type: ignore[operator]
    assert reason is not None and why in reason


def test_wireguard_forged_payload_does_not_authenticate() -> None:
    server = X25519PrivateKey.generate()
    init = wg_initiation(raw_public(server), sender_index=9)
    forged_init = wg_initiation(raw_public(server), init.static, sender_index=9)
    answer = wg_respond(server, forged_init.packet)  # answers another handshake
    assert answer is not None
    reason = wg_check_response(init, answer)
    assert reason is not None and "authenticate" in reason


def test_tai64n_is_monotonic_and_sized() -> None:
    a, b = tai64n(1000.0), tai64n(1000.5)
    assert len(a) == 12 and a < b


def test_openvpn_reset_round_trip() -> None:
    reset = ovpn_client_reset(b"ABCDEFGH")
    assert reset.packet[0] == 0x38 and len(reset.packet) == 14
    assert ovpn_looks_like_client_reset(reset.packet)
    framed = ovpn_tcp_frame(reset.packet)
    assert framed[:2] == b"\x00\x0e"
    answer = ovpn_server_reset(reset.packet, b"SERVERID")
    assert answer[0] >> 3 == 8
    assert ovpn_check_response(reset, answer) is None


def test_openvpn_answer_for_another_session_is_rejected() -> None:
    mine, other = ovpn_client_reset(b"AAAAAAAA"), ovpn_client_reset(b"BBBBBBBB")
    reason = ovpn_check_response(mine, ovpn_server_reset(other.packet))
    assert reason is not None and "another session" in reason
    assert ovpn_check_response(mine, b"\x38" + b"\0" * 13) is not None
    assert ovpn_check_response(mine, b"\x40") is not None
    with pytest.raises(ValueError):
        ovpn_server_reset(b"garbage")
