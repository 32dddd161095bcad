"""A measurement as a page a researcher can read (and cite), rendered on the server. Pure.

What the probe saw, layer by layer: every DNS reply (two replies to one query, or replies
that disagree, are what an on-path injector leaves), the TCP connects (and which addresses
only the control helper supplied), the TLS handshakes (with the harmless-SNI retry that
tells SNI filtering apart), the HTTP exchanges, and the control's view of the same site;
then the verdict, the blockpage fingerprint, and the signature: checked by this server
against the probe's public key, which is shown so anyone can check it again.

Everything from the record is escaped: probes, not this server, wrote it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any


@dataclass(frozen=True, slots=True)
class SignatureCheck:
    verified: bool
    detail: str  # what was checked, or why it failed
    public_key_b64: str | None
    key_matches_probe_id: bool


def _t(value: Any) -> str:
    return "" if value is None else escape(str(value))


def _ms(value: Any) -> str:
    return f"{float(value) * 1000:.0f} ms" if isinstance(value, int | float) else ""


def _result(failure: Any) -> str:
    return "<span class=ok>success</span>" if failure is None else \
        f"<span class=bad>{_t(failure)}</span>"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _answers(answers: Any) -> str:
    return ", ".join(f"{_t(_dict(a).get('answer_type'))} {_t(_dict(a).get('value'))}"
                     for a in _list(answers)) or "(no answer)"


def dns_section(tk: Mapping[str, Any]) -> str:
    out = []
    for q in _list(tk.get("queries")):
        q = _dict(q)
        replies = _list(q.get("replies"))
        distinct = {_answers(_dict(r).get("answers")) for r in replies}
        note = ""
        if len(replies) > 1:
            note = ("<p class=bad>More than one reply to one query"
                    + (" with different answers" if len(distinct) > 1 else "")
                    + ": the first is what an application would use; a later one is often "
                      "the genuine answer arriving after an injected one.</p>")
        rows = [[str(i + 1) + (" (used)" if i == 0 else ""), _ms(_dict(r).get("t")),
                 _t(_dict(r).get("source")), _t(_dict(r).get("rcode")),
                 _answers(_dict(r).get("answers"))] for i, r in enumerate(replies)]
        out.append(
            f"<h3>{_t(q.get('query_type'))} {_t(q.get('hostname'))} via "
            f"{_t(q.get('resolver_address'))} ({_t(q.get('engine'))})</h3>"
            f"<p>Result: {_result(q.get('failure'))}</p>{note}"
            + (_table(["Reply", "Arrived after", "From", "RCODE", "Answers"], rows, "dns")
               if rows else "<p class=muted>No reply.</p>"))
    return "".join(out) or "<p class=muted>No DNS query.</p>"


def tcp_section(tk: Mapping[str, Any]) -> str:
    rows = []
    for c in _list(tk.get("tcp_connect")):
        c = _dict(c)
        origin = str(c.get("origin") or "dns")
        src = {"dns": "system resolver", "control": "control helper only",
               "both": "resolver and control"}.get(origin, origin)
        rows.append([f"{_t(c.get('ip'))}:{_t(c.get('port'))}", escape(src),
                     _result(_dict(c.get("status")).get("failure")), _ms(c.get("t0")),
                     _ms(c.get("t"))])
    return _table(["Address", "Address from", "Result", "Start", "End"], rows, "tcp") \
        if rows else "<p class=muted>No TCP connect.</p>"


def tls_section(tk: Mapping[str, Any]) -> str:
    rows = []
    for h in _list(tk.get("tls_handshakes")):
        h = _dict(h)
        purpose = {"target": "the site's name", "benign_sni": "a harmless name (control)"}.get(
            str(h.get("purpose")), str(h.get("purpose")))
        valid = h.get("cert_valid_for_host")
        rows.append([_t(h.get("address")), _t(h.get("server_name")), escape(purpose),
                     _result(h.get("failure")), _t(h.get("tls_version")),
                     "" if valid is None else ("yes" if valid else "no"),
                     f"<code>{_t(h.get('peer_certificate_sha256'))}</code>"])
    return _table(["Address", "SNI sent", "SNI is", "Result", "Version",
                   "Certificate valid for the site", "Leaf SHA-256"], rows, "tls") \
        if rows else "<p class=muted>No TLS handshake.</p>"


def http_section(tk: Mapping[str, Any]) -> str:
    out = []
    for r in _list(tk.get("requests")):
        r = _dict(r)
        req, resp = _dict(r.get("request")), _dict(r.get("response"))
        headers = "".join(f"<tr><th>{_t(k)}</th><td>{_t(v)}</td></tr>"
                          for k, v in _dict(resp.get("headers")).items())
        out.append(
            f"<h3>{_t(req.get('method'))} {_t(req.get('url'))}</h3>"
            f"<p>Connected to {_t(r.get('address'))}. Result: {_result(r.get('failure'))}. "
            f"Status {_t(resp.get('code'))}, title \u201c{_t(resp.get('title'))}\u201d, "
            f"{_t(resp.get('body_length'))} bytes (SHA-256 "
            f"<code>{_t(resp.get('body_sha256'))}</code>).</p>"
            + (f"<table class=headers>{headers}</table>" if headers else "")
            + (f"<details><summary>Body as received (first part)</summary><pre>"
               f"{_t(resp.get('body_head'))}</pre></details>" if resp.get("body_head") else ""))
    return "".join(out) or "<p class=muted>No HTTP request.</p>"


def control_section(tk: Mapping[str, Any]) -> str:
    c = _dict(tk.get("control"))
    if not c:
        failure = tk.get("control_failure")
        return f"<p class=bad>No control view: {_t(failure)}</p>" if failure else \
            "<p class=muted>This test has no control view.</p>"
    dns, http = _dict(c.get("dns")), _dict(c.get("http_request"))
    tcp = [[_t(k), "reachable" if _dict(v).get("status") else _t(_dict(v).get("failure"))]
           for k, v in _dict(c.get("tcp_connect")).items()]
    tls = [[_t(k), _t(_dict(v).get("server_name")),
            "ok" if _dict(v).get("status") else _t(_dict(v).get("failure"))]
           for k, v in _dict(c.get("tls_handshake")).items()]
    return (
        f"<p>DNS from outside: {_result(dns.get('failure'))}, addresses "
        f"{_t(', '.join(str(a) for a in _list(dns.get('addrs'))) or '(none)')}.</p>"
        + (_table(["Address", "TCP from outside"], tcp, "ctcp") if tcp else "")
        + (_table(["Address", "SNI", "TLS from outside"], tls, "ctls") if tls else "")
        + f"<p>HTTP from outside: {_result(http.get('failure'))}, status "
          f"{_t(http.get('status_code'))}, title \u201c{_t(http.get('title'))}\u201d, "
          f"{_t(http.get('body_length'))} bytes.</p>")


def verdict_section(record: Mapping[str, Any]) -> str:
    v = _dict(record.get("verdict"))
    status = str(v.get("status"))
    cls = {"ok": "ok", "blocked": "bad", "throttled": "bad", "down": "warn"}.get(status, "muted")
    fp = v.get("fingerprint")
    confirmed = ("confirmed by a known blockpage fingerprint" if v.get("confirmed")
                 else "not confirmed by a fingerprint")
    extra = ""
    if v.get("evidence"):
        extra += f" Packet evidence: <code>{_t(v.get('evidence'))}</code>."
    if v.get("interference"):
        extra += (f" Interference without denial: <code>{_t(v.get('interference'))}</code> "
                  "(the genuine content still arrived).")
    return (
        f"<p class=verdict><span class='badge {cls}'>{_t(status)}</span> "
        f"blocking: <b>{_t(v.get('blocking') or 'none')}</b>, reason <code>{_t(v.get('reason'))}"
        f"</code>, {confirmed}"
        f"{f' (<code>{_t(fp)}</code>)' if fp else ''}.{extra}</p>")


_PACKET_COLUMNS = ("endpoint", "resolver", "terminator", "verdict", "reason", "sender_hop",
                   "server_hop", "ttl", "reference_ttl", "ip_id", "window")


def _records(items: Any, columns: Sequence[str]) -> str:
    """A table of the columns the records actually carry (packet flows, DNS replies, hops)."""
    rows = [_dict(i) for i in _list(items)]
    shown = [c for c in columns if any(c in r for r in rows)]
    if not rows or not shown:
        return "<p class=muted>none</p>"
    return _table(shown, [[_t(r.get(c)) for c in shown] for r in rows])


def packets_section(tk: Mapping[str, Any]) -> str:
    """Who sent the packet that ended each failing flow (IP TTL against the server's own)."""
    ev = _dict(tk.get("packet_evidence"))
    if not ev:
        return "<p class=muted>no packet capture in this measurement</p>"
    if ev.get("status") == "not_available":
        return f"<p class=muted>not available: {_t(ev.get('reason'))}</p>"
    return ("<h3>Flows</h3>" + _records(ev.get("flows"), _PACKET_COLUMNS)
            + "<h3>DNS replies</h3>" + _records(ev.get("dns"), _PACKET_COLUMNS))


def _probes(value: Any) -> str:
    """A hop's probes (trigger or twin) in a few words: what came back for each."""
    parts = []
    for probe in _list(value)[:4]:
        d = _dict(probe)
        parts.append(str(d.get("result") or d.get("outcome") or d.get("kind")
                         or json.dumps(d, sort_keys=True)[:40]))
    return ", ".join(parts) or "-"


def trace_section(tk: Mapping[str, Any]) -> str:
    """A censor_trace: per hop, whether the trigger and its benign twin got through."""
    out = [f"<p>{_t(tk.get('conclusion'))}</p>"] if tk.get("conclusion") else []
    for trace in _list(tk.get("traces")):
        tr = _dict(trace)
        out.append(f"<h3>{_t(tr.get('protocol'))} to {_t(tr.get('address'))}:"
                   f"{_t(tr.get('port'))}</h3>")
        rows = [[_t(h.get("ttl")), _t(h.get("address")), _t(h.get("asn")),
                 _t(h.get("network_name")), escape(_probes(h.get("trigger"))),
                 escape(_probes(h.get("twin")))] for h in map(_dict, _list(tr.get("hops")))]
        out.append(_table(["hop (TTL)", "address", "ASN", "network", "trigger", "benign twin"],
                          rows) if rows else "<p class=muted>no hop answered</p>")
    return "".join(out) or "<p class=muted>no trace</p>"


def signature_section(check: SignatureCheck, probe_id: str, envelope_url: str) -> str:
    cls = "ok" if check.verified else "bad"
    word = "verified" if check.verified else "NOT verified"
    hashes = (" hashes to this probe id" if check.key_matches_probe_id
              else " does NOT hash to this probe id")
    return (
        f"<p class=signature><span class='badge {cls}'>signature {word}</span> "
        f"{escape(check.detail)}</p>"
        f"<p>Probe <code>{escape(probe_id)}</code>; Ed25519 public key (base64) "
        f"<code class=pubkey>{_t(check.public_key_b64)}</code>"
        f"{hashes}"
        f". The signed envelope: <a href=\"{escape(envelope_url)}\">{escape(envelope_url)}</a>"
        " (check it yourself: docs/researcher-guide.md).</p>")


def render(record: Mapping[str, Any], check: SignatureCheck, envelope_url: str) -> str:
    tk = _dict(record.get("test_keys"))
    mid = str(record.get("measurement_id"))
    web = "queries" in tk or "requests" in tk
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width, initial-scale=1'>"
        f"<title>Measurement {escape(mid)}</title>"
        "<link rel=stylesheet href=\"../static/style.css\"></head><body class=measurement>",
        "<header><h1>Measurement</h1><a href=\"../\">dashboard</a></header><main>",
        f"<section class=card><h2>{_t(record.get('test_name'))}: {_t(record.get('input'))}</h2>"
        f"<p><code>{escape(mid)}</code>, started {_t(record.get('measurement_start_time'))} "
        f"on {_t(record.get('probe_asn'))} {_t(record.get('probe_network_name'))} "
        f"({_t(record.get('probe_cc'))}), category {_t(record.get('category_code'))}, "
        f"{_t(record.get('software_name'))} {_t(record.get('software_version'))}.</p>",
        verdict_section(record),
        signature_section(check, str(record.get("probe_id")), envelope_url),
        "</section>",
    ]
    if web:
        parts += [
            "<section class=card id=dns><h2>DNS</h2>", dns_section(tk), "</section>",
            "<section class=card id=tcp><h2>TCP</h2>", tcp_section(tk), "</section>",
            "<section class=card id=tls><h2>TLS</h2>", tls_section(tk), "</section>",
            "<section class=card id=http><h2>HTTP</h2>", http_section(tk), "</section>",
            "<section class=card id=control><h2>The control's view</h2>",
            control_section(tk), "</section>",
            "<section class=card id=packets><h2>Packet evidence</h2>", packets_section(tk),
            "</section>",
        ]
    if "traces" in tk:
        parts += ["<section class=card id=trace><h2>Where the censor sits</h2>",
                  trace_section(tk), "</section>"]
    parts += [
        "<section class=card id=raw><h2>The signed record</h2><details><summary>JSON as "
        "signed</summary><pre>",
        escape(json.dumps(record, indent=1, ensure_ascii=False, sort_keys=True)),
        "</pre></details></section></main></body></html>",
    ]
    return "".join(parts)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
