"""What stands between a probe and a conclusive measurement, in plain words, with the fix.

``vigil-agent run --once`` and ``vigil-agent doctor`` both ask these questions; the answers are
pure functions of what was observed (the helper's refusal, the clock, the URL, the verdicts),
so both commands say the same thing for the same cause:

* the control helper refused the probe: not enrolled (the fix is the enrolment line to send
  to the operator), revoked, or the clock is off;
* the control helper cannot be reached, or its certificate is not trusted;
* the helper is plain http on a public network: a censor on the path can rewrite its answers;
* the clock is implausible (a Pi without a battery clock boots in 1970);
* every measurement came back inconclusive: nothing was learnt.

Imports nothing but the standard library, so ``doctor`` stays light.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

MIN_PLAUSIBLE = datetime(2025, 1, 1, tzinfo=UTC)  # a Pi without RTC boots in 1970
TIME_SYNC_FIX = "enable time sync: sudo timedatectl set-ntp true (a Pi has no battery clock)"


@dataclass(frozen=True, slots=True)
class Problem:
    name: str  # short: "not enrolled", "helper unreachable", "clock", "plain http", ...
    message: str  # what is wrong, in a sentence
    fix: str  # what to do about it
    # True when measuring is pointless until it is fixed (a refusal); False when measuring
    # still records the truth (a helper that is down gives inconclusive records, and may
    # come back during the run)
    stops_run: bool = True

    def render(self) -> str:
        return f"problem: {self.message}\n    fix: {self.fix}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plain_http_problem(url: str) -> Problem | None:
    """A helper reached over plain http, unless on this machine (labs, tests)."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "http" or _is_loopback(parts.hostname or ""):
        return None
    return Problem(
        "plain http",
        f"the control helper {url} is plain http: anyone on the path (the censor included) "
        "can read and rewrite its answers, and the verdicts that rely on them",
        "use the helper's https:// URL in [control] url (ask your operator for it)",
    )


def clock_problem(now: datetime) -> Problem | None:
    if now >= MIN_PLAUSIBLE:
        return None
    return Problem("clock", f"the system clock says {now:%Y-%m-%d}", TIME_SYNC_FIX)


def helper_problem(error: Exception, url: str, enrol_line: str | None) -> Problem:
    """Why the helper's ``whoami`` failed, and the fix.

    ``error`` is the helper client's ControlFailed (``status``, ``reason`` and ``detail`` when
    the helper answered; ``failure``, an OONI failure string, when it could not be reached);
    ``enrol_line`` is the command the operator runs to enrol this probe.
    """
    status = getattr(error, "status", None)
    reason = getattr(error, "reason", None) or ""
    detail = getattr(error, "detail", None) or str(error)
    failure = getattr(error, "failure", None) or str(error)
    if status is None:
        if failure.startswith("ssl_"):
            return Problem(
                "helper certificate",
                f"the control helper {url} has a certificate this probe does not trust "
                f"({failure})",
                "check [control] url; a private helper needs its CA in [net] ca_file",
            )
        return Problem(
            "helper unreachable",
            f"the control helper {url} cannot be reached ({failure})",
            "check [control] url (your operator gives it) and this machine's internet "
            "connection; if the helper is blocked on this network, tell your operator",
            stops_run=False,
        )
    if reason == "clock_skew":
        return Problem("clock", f"the control helper refused the probe's clock: {detail}",
                       TIME_SYNC_FIX)
    if reason == "probe_revoked":
        return Problem(
            "revoked",
            "the operator has revoked this probe's key",
            "ask your operator; a new key (remove probe.key, run `vigil-agent init`) needs a "
            "new enrolment",
        )
    if status in (401, 403):
        line = enrol_line or "vigil-agent init prints it"
        if "unknown probe" in detail:
            return Problem(
                "not enrolled",
                "the control helper does not know this probe yet: the operator has not "
                "enrolled it",
                f"send this line to your operator, who runs it on the collector, then run "
                f"again:\n        {line}",
            )
        return Problem("helper refused", f"the control helper refused the probe ({detail})",
                       f"ask your operator; the probe's enrolment line is:\n        {line}")
    if status == 404:
        return Problem("not a helper", f"{url} answered HTTP 404: it is not a control helper",
                       "check [control] url (your operator gives it)")
    if status in (429, 502, 503, 504):
        return Problem("helper busy", f"the control helper {url} is busy (HTTP {status})",
                       "try again in a few minutes", stops_run=False)
    return Problem("helper error", f"the control helper {url} failed: {detail}",
                   "try again later; if it persists, tell your operator")


def inconclusive_problem(by_status: Mapping[str, int],
                         reasons: Mapping[str, int]) -> Problem | None:
    """Every measurement inconclusive (or none made): nothing was learnt."""
    conclusive = sum(n for status, n in by_status.items() if status != "inconclusive")
    if conclusive:
        return None
    total = by_status.get("inconclusive", 0)
    if not total:
        return Problem("nothing measured", "no measurement was made",
                       "see the messages above; `vigil-agent doctor` checks the setup")
    top = ", ".join(f"{r} x{n}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:3])
    return Problem(
        "inconclusive",
        f"nothing could be measured conclusively: all {total} measurement(s) are inconclusive"
        + (f" ({top})" if top else ""),
        "`vigil-agent doctor` checks the control helper, the clock and the network; "
        "control.failed means the helper could not fetch the sites",
    )
