"""The raw HTTP/1.1 codec shared by the throttling transfer, app checks and the helper."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.net import http1


def test_request_is_one_close_request_with_identity_encoding() -> None:
    raw = http1.request("/a?b=1", "example.org")
    head, rest = http1.split_head(raw) or (b"", b"")
    assert rest == b""
    line = http1.request_line(head)
    assert (line.method, line.target, line.version) == ("GET", "/a?b=1", "HTTP/1.1")
    assert b"\r\nHost: example.org\r\n" in head
    assert b"\r\nAccept-Encoding: identity\r\n" in head
    assert b"\r\nConnection: close\r\n" in head


@given(st.text(max_size=40), st.text(max_size=40), st.text(max_size=40))
def test_no_value_can_inject_a_header(path: str, host: str, value: str) -> None:
    raw = http1.request(path, host, headers={"X-Test": value})
    head, rest = http1.split_head(raw) or (b"", b"")
    assert rest == b""
    lines = head.split(b"\r\n")
    assert len(lines) == 9  # request line, 6 fixed headers, X-Test, the empty line pair
    assert sum(1 for x in lines if x.lower().startswith(b"host:")) == 1


def test_response_head_round_trip() -> None:
    head = http1.response_head(200, {"Content-Length": "5", "X-Vigil-SNI": "a\r\nb"})
    status, headers = http1.parse_response_head(head)
    assert status == 200
    assert headers == {"content-length": "5", "x-vigil-sni": "ab", "connection": "close"}
    assert http1.status_code(head) == 200


def test_split_head_waits_then_refuses_oversized_heads() -> None:
    assert http1.split_head(b"HTTP/1.1 200 OK\r\nA: b\r\n") is None
    assert http1.split_head(b"HTTP/1.1 200 OK\r\n\r\nbody") == (b"HTTP/1.1 200 OK\r\n\r\n", b"body")
    with pytest.raises(http1.HeadError):
        http1.split_head(b"x" * (http1.MAX_HEAD_BYTES + 1))


@pytest.mark.parametrize("line", [b"", b"SSH-2.0-OpenSSH", b"HTTP/1.1 abc", b"220 smtp ready"])
def test_status_code_of_something_else_is_a_head_error(line: bytes) -> None:
    with pytest.raises(http1.HeadError):
        http1.status_code(line)


@pytest.mark.parametrize("head", [b"GET /\r\n\r\n", b"\xff\xfe / HTTP/1.1\r\n\r\n", b"A B C\r\n"])
def test_malformed_request_lines(head: bytes) -> None:
    with pytest.raises(http1.HeadError):
        http1.request_line(head)
