"""Render Vigil records in OONI's data format, pure functions only.

Analysts compare Vigil's evidence with OONI's using OONI's tooling (the ``oonidata`` parser and
what is built on it), so ``vigil-agent export --format ooni`` writes one OONI measurement per
line:

* the df-000 base keys (``data_format_version`` 0.2.0, ``measurement_start_time`` and
  ``test_start_time`` as ``YYYY-MM-DD HH:MM:SS`` UTC, ``probe_ip`` always ``127.0.0.1``: Vigil
  never records the volunteer's address, a ``report_id`` derived from time, network and probe);
* ``web_connectivity`` test keys as ts-017 describes them: DNS queries in df-002's shape
  (``rcode`` an integer, answers with ``ipv4``/``ipv6``/``hostname``), TCP connects in df-005's,
  TLS handshakes in df-006's, HTTP transactions in df-001's with the body Vigil kept (up to
  16,384 characters, ``agent.net.http.BODY_HEAD_CHARS``; ``body_is_truncated`` when the page
  was longer),
  and the analysis keys (``dns_consistency``, ``body_length_match``, ``body_proportion``,
  ``status_code_match``, ``headers_match``, ``title_match``, ``dns_experiment_failure``,
  ``http_experiment_failure``, ``control_failure``, ``accessible``, ``blocking``);
* ``blocking`` in OONI's vocabulary (false, "dns", "tcp_ip", "http-failure", "http-diff" or
  null): Vigil's ``tls`` becomes "http-failure" (OONI counts a failed TLS handshake as a failed
  HTTPS request) and ``throttling`` becomes false with ``accessible`` true (OONI has no word for
  a slow but working site); Vigil's own verdict always stays in ``x_vigil_*`` keys;
* connects to addresses only the control helper supplied carry the tag
  ``x_vigil_origin=control`` (OONI's probe also tries the helper's addresses and tags them);
* experiments whose keys do not follow OONI's (Vigil's app reachability tests, throttling,
  connectivity) are written under names of their own, ``vigil_<name>``, so OONI's tools do not
  read them as their own ``telegram`` or ``tor`` and find nothing.

Vigil's verdict and measurement id are kept (``test_keys.x_vigil_verdict``,
``annotations.vigil_measurement_id``) so nothing is lost in translation.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

DATA_FORMAT_VERSION = "0.2.0"

# OONI test names whose test keys Vigil writes in OONI's shape; every other experiment is
# exported as ``vigil_<name>``.
OONI_SHAPED = frozenset({"web_connectivity"})
RENAMED_PREFIX = "vigil_"

# df-002: the DNS RCODEs by name (RFC 1035, 2136, 6891).
RCODES: Mapping[str, int] = {
    "NOERROR": 0, "FORMERR": 1, "SERVFAIL": 2, "NXDOMAIN": 3, "NOTIMP": 4, "REFUSED": 5,
    "YXDOMAIN": 6, "YXRRSET": 7, "NXRRSET": 8, "NOTAUTH": 9, "NOTZONE": 10, "BADVERS": 16,
}

# Vigil's blocking word -> OONI's (ts-017 allows false, dns, tcp_ip, http-failure, http-diff).
OONI_BLOCKING: Mapping[str, str | bool] = {
    "dns": "dns",
    "tcp_ip": "tcp_ip",
    "tls": "http-failure",
    "http-failure": "http-failure",
    "http-diff": "http-diff",
    "throttling": False,
}

# ts-017's headers_match ignores the headers every server sends.
COMMON_HEADERS = frozenset({
    "date", "content-type", "server", "cache-control", "vary", "set-cookie", "location",
    "expires", "x-powered-by", "content-encoding", "last-modified", "accept-ranges", "pragma",
    "x-frame-options", "etag", "x-content-type-options", "age", "via", "p3p",
    "x-xss-protection", "content-language", "cf-ray", "strict-transport-security", "link",
    "x-varnish", "content-length", "connection", "transfer-encoding", "keep-alive",
})
_TITLE_WORD = re.compile(r"\w{5,}", re.UNICODE)
BODY_PROPORTION_MATCH = 0.7  # ts-017: bodies whose lengths differ by less than 30 % match


class ExportError(ValueError):
    """A record lacks what the conversion needs; the text says which key."""


def rcode_number(value: Any) -> int | None:
    """df-002 wants the RCODE as an integer; Vigil records its name."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    text = str(value).strip().upper()
    if text.isdigit():
        return int(text)
    return RCODES.get(text)


def ooni_time(rfc3339: str) -> str:
    try:
        when = datetime.strptime(rfc3339.rstrip("Z").split(".")[0], "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        raise ExportError(f"measurement_start_time {rfc3339[:40]!r} is not RFC 3339") from None
    return when.strftime("%Y-%m-%d %H:%M:%S")


def report_id(record: Mapping[str, Any]) -> str:
    when = datetime.strptime(ooni_time(str(record["measurement_start_time"])),
                             "%Y-%m-%d %H:%M:%S")
    asn = str(record["probe_asn"]).removeprefix("AS")
    test = str(record["test_name"]).replace("_", "")
    probe = str(record["probe_id"])[:16]
    return f"{when:%Y%m%dT%H%M%SZ}_{test}_{record['probe_cc']}_{asn}_n1_{probe}"


def _answer(a: Any) -> dict[str, Any]:
    a = a if isinstance(a, dict) else {}
    kind = str(a.get("answer_type") or "")
    ttl = a.get("ttl")
    out: dict[str, Any] = {"answer_type": kind, "ttl": ttl if isinstance(ttl, int) else None}
    value = a.get("value")
    if kind == "A":
        out["ipv4"] = value
    elif kind == "AAAA":
        out["ipv6"] = value
    else:
        out["hostname"] = value
    return out


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def _query(q: Any) -> dict[str, Any]:
    q = _dict(q)
    replies = []
    for r in _list(q.get("replies")):
        r = _dict(r)
        replies.append({
            "t": r.get("t"),
            "rcode": rcode_number(r.get("rcode")),
            "source": r.get("source"),
            "answers": [_answer(a) for a in _list(r.get("answers"))],
        })
    return {
        "hostname": str(q.get("hostname") or ""),
        "query_type": str(q.get("query_type") or ""),
        "resolver_address": q.get("resolver_address"),
        "engine": q.get("engine"),
        "failure": q.get("failure"),
        "answers": [_answer(a) for a in _list(q.get("answers"))],
        "rcode": rcode_number(q.get("rcode")),
        "t0": q.get("t0"),
        "t": q.get("t"),
        # Every datagram received, in order: two replies to one query are DNS injection.
        "x_vigil_replies": replies,
    }


def _tcp(c: Any) -> dict[str, Any]:
    c = _dict(c)
    status = _dict(c.get("status"))
    origin = str(c.get("origin") or "dns")
    out: dict[str, Any] = {
        "ip": str(c.get("ip") or ""),
        "port": c.get("port") if isinstance(c.get("port"), int) else 0,
        "status": {
            "success": bool(status.get("success")),
            "failure": status.get("failure"),
            "blocked": None,
        },
        "t0": c.get("t0"),
        "t": c.get("t"),
        "tags": [f"x_vigil_origin={origin}"],
    }
    return out


def _tls(h: Any) -> dict[str, Any]:
    h = _dict(h)
    return {
        "network": "tcp",
        "address": h.get("address"),
        "server_name": h.get("server_name"),
        "failure": h.get("failure"),
        "tls_version": h.get("tls_version"),
        "cipher_suite": h.get("cipher_suite"),
        "no_tls_verify": False,
        "t0": h.get("t0"),
        "t": h.get("t"),
        "tags": [f"x_vigil_purpose={h.get('purpose') or 'target'}"],
        "x_vigil_peer_certificate_sha256": h.get("peer_certificate_sha256"),
        "x_vigil_cert_valid_for_host": h.get("cert_valid_for_host"),
    }


def _request(req: Any) -> dict[str, Any]:
    req = _dict(req)
    resp = _dict(req.get("response"))
    request = _dict(req.get("request"))
    body = resp.get("body_head")
    body = body if isinstance(body, str) else ""
    length = resp.get("body_length")
    headers = {str(k): str(v) for k, v in _dict(resp.get("headers")).items()}
    code = resp.get("code")
    return {
        "failure": req.get("failure"),
        "address": req.get("address"),
        "t0": req.get("t0"),
        "t": req.get("t"),
        "request": {
            "url": str(request.get("url") or ""),
            "method": request.get("method"),
            "headers": {},
            "headers_list": [],
            "body": "",
            "body_is_truncated": False,
        },
        "response": {
            "code": code if isinstance(code, int) and not isinstance(code, bool) else None,
            "headers": headers,
            "headers_list": [[k, v] for k, v in headers.items()],
            "body": body,
            "body_is_truncated": bool(
                isinstance(length, int) and length > len(body.encode("utf-8", "replace"))
            ),
            "x_vigil_body_length": length,
            "x_vigil_body_sha256": resp.get("body_sha256"),
            "x_vigil_title": resp.get("title"),
        },
        "x_vigil_redirects": _list(req.get("redirects")),
    }


def _control(control: Any) -> dict[str, Any] | None:
    if not isinstance(control, dict):
        return None
    out = copy.deepcopy(control)
    out.pop("client", None)  # Vigil's addition (the caller's network); not OONI's key
    http = _dict(out.get("http_request"))
    if http:
        out["http_request"] = http
    return out


def _final_request(requests: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The transaction whose response the page came from: the last one of the chain."""
    return requests[-1] if requests else None


def title_match(ours: str | None, theirs: str | None) -> bool | None:
    """ts-017: the control title's first word of five or more letters appears in ours."""
    if not theirs or ours is None:
        return None
    words = _TITLE_WORD.findall(theirs)
    if not words:
        return None
    return words[0].lower() in ours.lower()


def headers_match(ours: Mapping[str, str] | None, theirs: Mapping[str, str] | None
                  ) -> bool | None:
    """ts-017: the uncommon header names of both responses are the same set."""
    if ours is None or theirs is None:
        return None
    a = {k.lower() for k in ours} - COMMON_HEADERS
    b = {k.lower() for k in theirs} - COMMON_HEADERS
    if not a and not b:
        return True
    return a == b or bool(a & b)


def body_proportion(ours: int | None, theirs: int | None) -> float | None:
    if ours is None or theirs is None or ours < 0 or theirs < 0:
        return None
    if ours == theirs:
        return 1.0
    return min(ours, theirs) / max(ours, theirs)


def dns_consistency(tk: Mapping[str, Any], verdict: Mapping[str, Any]) -> str | None:
    """ts-017's "consistent" | "inconsistent" | null (no control to compare with)."""
    control = _dict(tk.get("control"))
    cdns = _dict(control.get("dns"))
    if not cdns:
        return None
    if verdict.get("blocking") == "dns":
        return "inconsistent"
    ours: set[str] = set()
    failures: set[Any] = set()
    for q in _list(tk.get("queries")):
        q = _dict(q)
        failures.add(q.get("failure"))
        for a in _list(q.get("answers")):
            a = _dict(a)
            if a.get("answer_type") in ("A", "AAAA"):
                ours.add(str(a.get("value")))
    theirs = {str(a) for a in _list(cdns.get("addrs"))}
    if ours & theirs:
        return "consistent"
    if not ours and cdns.get("failure") is not None and cdns.get("failure") in failures:
        return "consistent"  # both vantage points fail the same way: the name is broken
    if ours and not any(_is_bogon(a) for a in ours):
        # Different public addresses that Vigil did not call blocking: TLS proved them the
        # site's own (CDNs), which ts-017 also counts as consistent.
        return "consistent"
    return "inconsistent"


def _is_bogon(text: str) -> bool:
    try:
        return not ipaddress.ip_address(text).is_global
    except ValueError:
        return False


def blocking_accessible(verdict: Mapping[str, Any]) -> tuple[str | bool | None, bool | None]:
    """OONI's pair: ``blocking`` false | "dns" | "tcp_ip" | "http-failure" | "http-diff" |
    null, ``accessible`` true | false | null."""
    status = verdict.get("status")
    if status == "ok":
        return False, True
    if status in ("blocked", "throttled"):
        mapped = OONI_BLOCKING.get(str(verdict.get("blocking")), None)
        if mapped is False:
            return False, True
        return mapped, False
    if status == "down":
        return False, False
    return None, None


def web_test_keys(tk: Mapping[str, Any], verdict: Mapping[str, Any]) -> dict[str, Any]:
    queries = [_query(q) for q in _list(tk.get("queries"))]
    requests = [_request(r) for r in _list(tk.get("requests"))]
    control = _control(tk.get("control"))
    chttp = _dict((control or {}).get("http_request"))
    final = _final_request(requests)
    resp = _dict((final or {}).get("response"))
    ours_len = resp.get("x_vigil_body_length") if final and final.get("failure") is None else None
    theirs_len = chttp.get("body_length") if chttp.get("failure") is None else None
    proportion = body_proportion(
        ours_len if isinstance(ours_len, int) else None,
        theirs_len if isinstance(theirs_len, int) else None,
    )
    compare = final is not None and final.get("failure") is None and bool(chttp) \
        and chttp.get("failure") is None
    code, ccode = resp.get("code"), chttp.get("status_code")
    blocking, accessible = blocking_accessible(verdict)
    http_failure = next((r["failure"] for r in requests if r.get("failure")), None)
    out: dict[str, Any] = {
        "client_resolver": None,
        "queries": queries,
        "tcp_connect": [_tcp(c) for c in _list(tk.get("tcp_connect"))],
        "tls_handshakes": [_tls(h) for h in _list(tk.get("tls_handshakes"))],
        "requests": requests,
        "control": control,
        "control_failure": tk.get("control_failure"),
        "dns_experiment_failure": queries[0]["failure"] if queries else None,
        "http_experiment_failure": http_failure,
        "dns_consistency": dns_consistency(tk, verdict),
        "body_proportion": proportion if compare else None,
        "body_length_match": (proportion > BODY_PROPORTION_MATCH)
        if compare and proportion is not None else None,
        "status_code_match": (code == ccode) if compare and code is not None
        and ccode is not None else None,
        "headers_match": headers_match(resp.get("headers"), chttp.get("headers"))
        if compare else None,
        "title_match": title_match(resp.get("x_vigil_title"), chttp.get("title"))
        if compare else None,
        "blocking": blocking,
        "accessible": accessible,
        "x_vigil_hostname": tk.get("hostname"),
        "x_vigil_extra": copy.deepcopy(_dict(tk.get("extra"))),
    }
    if control is not None and "client" in _dict(tk.get("control")):
        out["x_vigil_control_client"] = copy.deepcopy(_dict(tk["control"])["client"])
    if tk.get("packet_evidence") is not None:  # who sent the reset: TTLs of the flow's packets
        out["x_vigil_packet_evidence"] = copy.deepcopy(tk["packet_evidence"])
    return out


UNKNOWN_RESOLVER_IP = "127.0.0.2"  # what OONI Probe writes when the lookup failed


def _resolver_ip(record: Mapping[str, Any]) -> str:
    """The resolver's egress seen from outside (the helper's DNS whoami), as OONI records it.

    Never the address in resolv.conf: that is the home router's private address, which says
    nothing about where the queries leave, and may identify the volunteer's network.
    """
    value = record.get("resolver_ip")
    return str(value) if value else UNKNOWN_RESOLVER_IP


def exported_test_name(test_name: str) -> str:
    return test_name if test_name in OONI_SHAPED else RENAMED_PREFIX + test_name


def to_ooni(record: Mapping[str, Any]) -> dict[str, Any]:
    """One Vigil record (schema-valid) as an OONI measurement.

    Raises ExportError when a key the conversion needs is missing or of the wrong type.
    """
    try:
        return _to_ooni(record)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ExportError(f"record cannot be converted: missing or odd key {exc}") from None


def _to_ooni(record: Mapping[str, Any]) -> dict[str, Any]:
    tk = _dict(record["test_keys"])
    verdict = _dict(record["verdict"])
    name = str(record["test_name"])
    if name in OONI_SHAPED:
        test_keys = web_test_keys(tk, verdict)
    else:
        test_keys = copy.deepcopy(tk)
        test_keys["blocking"], test_keys["accessible"] = blocking_accessible(verdict)
    test_keys["x_vigil_verdict"] = copy.deepcopy(verdict)
    test_keys["x_vigil_status"] = verdict.get("status")
    test_keys["x_vigil_blocking"] = verdict.get("blocking")
    test_keys["x_vigil_reason"] = verdict.get("reason")
    test_keys["x_vigil_confirmed"] = verdict.get("confirmed")
    annotations = {str(k): str(v) for k, v in _dict(record.get("annotations")).items()}
    annotations["vigil_measurement_id"] = str(record["measurement_id"])
    annotations["vigil_probe_id"] = str(record["probe_id"])
    annotations["vigil_test_name"] = name
    start = ooni_time(str(record["measurement_start_time"]))
    runtime = record.get("test_runtime")
    return {
        "annotations": annotations,
        "data_format_version": DATA_FORMAT_VERSION,
        "id": str(record["measurement_id"]),
        "input": record.get("input"),
        "measurement_start_time": start,
        "probe_asn": str(record["probe_asn"]),
        "probe_cc": str(record["probe_cc"]),
        "probe_ip": "127.0.0.1",
        "probe_network_name": str(record.get("probe_network_name") or ""),
        "report_id": report_id(record),
        "resolver_asn": str(record.get("resolver_asn") or "AS0"),
        "resolver_ip": _resolver_ip(record),
        "resolver_network_name": str(record.get("resolver_network_name") or ""),
        "software_name": str(record.get("software_name") or "vigil-agent"),
        "software_version": str(record.get("software_version") or ""),
        "test_helpers": {"backend": {"address": "vigil-control-helper", "type": "vigil"}},
        "test_keys": test_keys,
        "test_name": exported_test_name(name),
        "test_runtime": float(runtime) if isinstance(runtime, int | float) else 0.0,
        "test_start_time": start,
        "test_version": str(record.get("test_version") or "0.0.0"),
    }
