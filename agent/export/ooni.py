"""Render Vigil records in OONI's data format (df-000 base keys), pure functions only.

Analysts compare Vigil's evidence with OONI's using OONI's tooling, so ``vigil-agent export
--format ooni`` writes one OONI-shaped measurement per line:

* the df-000 base keys (``data_format_version`` 0.2.0, ``measurement_start_time`` and
  ``test_start_time`` as ``YYYY-MM-DD HH:MM:SS`` UTC, ``probe_ip`` always ``127.0.0.1``: Vigil
  never records the volunteer's address, a ``report_id`` derived from time, network and probe);
* web_connectivity test keys in OONI's shape: DNS answers with ``ipv4``/``ipv6``/``hostname``,
  ``requests[].response.body`` (the head Vigil keeps, ``body_is_truncated`` when shorter than the
  page), the verdict as OONI's ``blocking``/``accessible`` pair;
* Vigil's own verdict and measurement id are kept (``test_keys.vigil_verdict``,
  ``annotations.vigil_measurement_id``) so nothing is lost in translation.
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

DATA_FORMAT_VERSION = "0.2.0"


def _ooni_time(rfc3339: str) -> str:
    when = datetime.strptime(rfc3339.rstrip("Z").split(".")[0], "%Y-%m-%dT%H:%M:%S")
    return when.strftime("%Y-%m-%d %H:%M:%S")


def report_id(record: dict[str, Any]) -> str:
    when = datetime.strptime(record["measurement_start_time"].rstrip("Z").split(".")[0],
                             "%Y-%m-%dT%H:%M:%S")
    asn = str(record["probe_asn"]).removeprefix("AS")
    test = str(record["test_name"]).replace("_", "")
    return f"{when:%Y%m%dT%H%M%SZ}_{test}_{record['probe_cc']}_{asn}_n1_{record['probe_id'][:16]}"


def _answer(a: dict[str, Any]) -> dict[str, Any]:
    kind = a.get("answer_type")
    out: dict[str, Any] = {"answer_type": kind, "ttl": a.get("ttl")}
    value = a.get("value")
    if kind == "A":
        out["ipv4"] = value
    elif kind == "AAAA":
        out["ipv6"] = value
    else:
        out["hostname"] = value
    return out


def _blocking_accessible(verdict: dict[str, Any]) -> tuple[Any, Any]:
    """OONI's pair: blocking = false|"dns"|...|null, accessible = true|false|null."""
    status = verdict.get("status")
    if status == "ok":
        return False, True
    if status in ("blocked", "throttled"):
        return verdict.get("blocking"), False
    if status == "down":
        return False, False
    return None, None


def _web_test_keys(tk: dict[str, Any], verdict: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(tk)
    for q in out.get("queries", []):
        q["answers"] = [_answer(a) for a in q.get("answers", [])]
        for r in q.get("replies", []):
            r["answers"] = [_answer(a) for a in r.get("answers", [])]
    for req in out.get("requests", []):
        resp = req.get("response", {})
        head = resp.pop("body_head", "")
        length = resp.get("body_length")
        resp["body"] = head
        resp["body_is_truncated"] = bool(length is not None and length > len(head.encode()))
        req.setdefault("request", {}).setdefault("headers", {})
    control = out.get("control")
    if isinstance(control, dict):
        control.pop("client", None)  # Vigil's addition; OONI's control has no such key
    evidence = out.pop("packet_evidence", None)
    if evidence is not None:  # Vigil's raw-packet forensics: an extension key for OONI
        out["x_packet_evidence"] = evidence
    blocking, accessible = _blocking_accessible(verdict)
    out["blocking"] = blocking
    out["accessible"] = accessible
    return out


UNKNOWN_RESOLVER_IP = "127.0.0.2"  # what OONI Probe writes when the lookup failed


def _resolver_ip(record: dict[str, Any]) -> str:
    """The resolver's egress seen from outside (the helper's DNS whoami), as OONI records it.

    Never the address in resolv.conf: that is the home router's private address, which says
    nothing about where the queries leave, and may identify the volunteer's network.
    """
    value = record.get("resolver_ip")
    return str(value) if value else UNKNOWN_RESOLVER_IP


def to_ooni(record: dict[str, Any]) -> dict[str, Any]:
    """One Vigil record (schema-valid) as an OONI measurement."""
    tk = record["test_keys"]
    verdict = record["verdict"]
    if record["test_name"] == "web_connectivity":
        test_keys = _web_test_keys(tk, verdict)
    else:
        test_keys = copy.deepcopy(tk)
    test_keys["vigil_verdict"] = copy.deepcopy(verdict)
    annotations = dict(record.get("annotations", {}))
    annotations["vigil_measurement_id"] = record["measurement_id"]
    annotations["vigil_probe_id"] = record["probe_id"]
    start = _ooni_time(record["measurement_start_time"])
    return {
        "annotations": annotations,
        "data_format_version": DATA_FORMAT_VERSION,
        "id": record["measurement_id"],
        "input": record["input"],
        "measurement_start_time": start,
        "probe_asn": record["probe_asn"],
        "probe_cc": record["probe_cc"],
        "probe_ip": "127.0.0.1",
        "probe_network_name": record["probe_network_name"],
        "report_id": report_id(record),
        "resolver_asn": record["resolver_asn"],
        "resolver_ip": _resolver_ip(record),
        "resolver_network_name": record.get("resolver_network_name", ""),
        "software_name": record["software_name"],
        "software_version": record["software_version"],
        "test_helpers": {"backend": {"address": "vigil-control-helper", "type": "vigil"}},
        "test_keys": test_keys,
        "test_name": record["test_name"],
        "test_runtime": record["test_runtime"],
        "test_start_time": start,
        "test_version": record["test_version"],
    }
