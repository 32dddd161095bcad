"""Blockpages the lab's censor serves or injects.

"iran" imitates the Iranian national filter's page (an iframe to 10.10.34.34), which the
shipped fingerprint file knows; "custom" is a page no fingerprint knows, so an agent can only
find it by comparing with the control.  Both must fit in one TCP segment when injected.
"""

from __future__ import annotations

PAGES: dict[str, tuple[int, str, str]] = {
    # name: (status, reason phrase, body)
    "iran": (
        403,
        "Forbidden",
        '<html><head><meta http-equiv="Content-Type" content="text/html; charset=windows-1256">'
        "<title>M1-6</title></head><body>"
        '<iframe src="http://10.10.34.34?type=Invalid Site&policy=MainPolicy " '
        'style="width: 100%; height: 100%" scrolling="no" marginwidth="0" marginheight="0" '
        'frameborder="0" vspace="0" hspace="0"></iframe></body></html>\r\n',
    ),
    "custom": (
        200,
        "OK",
        "<html><head><title>Access restricted</title></head><body>"
        "<h1>Access to this website has been restricted</h1>"
        "<p>This website has been blocked in accordance with the decision of the competent "
        "authority.</p></body></html>\r\n",
    ),
}


def http_response(page: str, close: bool = True) -> bytes:
    status, phrase, body = PAGES[page]
    raw = body.encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\n"
        "Content-Type: text/html; charset=utf-8\r\n"
        f"Content-Length: {len(raw)}\r\n"
        + ("Connection: close\r\n" if close else "")
        + "\r\n"
    )
    return head.encode() + raw
