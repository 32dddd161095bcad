"""The first packets a censor reacts to, built without touching the network.

A ClientHello is produced by the ssl module itself (a memory BIO, no socket), so it looks like
every other ClientHello this agent sends; the HTTP request and the DNS query are the ordinary
ones.  Each has a benign twin: the same bytes with a harmless name.
"""

from __future__ import annotations

import contextlib
import ssl

import dns.message
import dns.rdatatype

PROTOCOLS = ("tls", "http", "dns")


def client_hello(server_name: str) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):  # no server: it waits for the reply
        obj.do_handshake()
    return outgoing.read()


def http_request(host: str, path: str = "/") -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: Mozilla/5.0\r\n"
            "Accept: */*\r\nConnection: close\r\n\r\n").encode("ascii")


def dns_query(name: str, qid: int) -> bytes:
    msg = dns.message.make_query(name, dns.rdatatype.A)
    msg.id = qid & 0xFFFF
    return msg.to_wire()


def payload(protocol: str, name: str, qid: int = 0) -> bytes:
    if protocol == "tls":
        return client_hello(name)
    if protocol == "http":
        return http_request(name)
    if protocol == "dns":
        return dns_query(name, qid)
    raise ValueError(f"unknown trigger protocol {protocol!r} (one of {PROTOCOLS})")
