"""Why the control helper refuses a request: one exception, a closed vocabulary of reasons.

Every refusal reaches the caller as ``{"error": "<reason>", "detail": "<text>"}`` with the HTTP
status below, so the agent can record *why* its control failed (``control.failed`` is then
inconclusive, never blocking) and an operator can count refusals by reason.  Details never
contain the caller's address nor an address the helper refused to contact (that would turn the
helper into an oracle for the operator's internal DNS).
"""

from __future__ import annotations

from typing import Final

BAD_REQUEST: Final = "bad_request"
REQUEST_TOO_LARGE: Final = "request_too_large"
UNAUTHENTICATED: Final = "unauthenticated"
CLOCK_SKEW: Final = "clock_skew"
REPLAYED: Final = "replayed"
PROBE_REVOKED: Final = "probe_revoked"
TARGET_FORBIDDEN: Final = "target_forbidden"
TOO_MANY_REQUESTS: Final = "too_many_requests"
RESPONSE_TOO_LARGE: Final = "response_too_large"
HELPER_BUSY: Final = "helper_busy"
CONTROL_TIMEOUT: Final = "control_timeout"
NOT_FOUND: Final = "not_found"
METHOD_NOT_ALLOWED: Final = "method_not_allowed"
INTERNAL_ERROR: Final = "internal_error"

STATUS: Final[dict[str, int]] = {
    BAD_REQUEST: 400,
    UNAUTHENTICATED: 401,
    CLOCK_SKEW: 401,
    REPLAYED: 401,
    PROBE_REVOKED: 403,
    TARGET_FORBIDDEN: 403,
    NOT_FOUND: 404,
    METHOD_NOT_ALLOWED: 405,
    REQUEST_TOO_LARGE: 413,
    # The target's answer exceeds what the helper reads: the request was fine, the page is not
    # something the helper will fetch.  422, not 413 (which would blame the request body).
    RESPONSE_TOO_LARGE: 422,
    TOO_MANY_REQUESTS: 429,
    INTERNAL_ERROR: 500,
    HELPER_BUSY: 503,
    CONTROL_TIMEOUT: 504,
}


class Refusal(Exception):
    """The helper will not (or cannot) answer this request; rendered as JSON by the app."""

    def __init__(self, reason: str, detail: str, *, retry_after: float | None = None) -> None:
        if reason not in STATUS:
            raise ValueError(f"unknown refusal reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.retry_after = retry_after

    @property
    def status(self) -> int:
        return STATUS[self.reason]

    def to_json(self) -> dict[str, str]:
        return {"error": self.reason, "detail": self.detail}
