"""The real long-running agent with one extra experiment, for tests/integration/test_sigterm.py.

``python -m tests.integration.sigterm_agent CONFIG JOURNAL`` registers ``slow_fetch`` (an HTTP
GET to a loopback server that answers slowly) and runs ``agent.daemon.loop.run_forever`` with the
real backend: runner, outbox, publisher, campaign handling.  The experiment appends
``start <nonce> <url>`` and ``done <nonce> <url>`` to JOURNAL (fsync'd) so the test knows which
measurements finished and can check that each one is in the outbox or at the collector.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from agent.experiments import ExperimentBase, Outcome, register
from agent.wire.record import Status, Target, Verdict

JOURNAL = Path(os.environ.get("VIGIL_TEST_JOURNAL", "/dev/null"))


def _journal(line: str) -> None:
    with JOURNAL.open("a") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


class SlowFetch(ExperimentBase):
    name: ClassVar[str] = "slow_fetch"
    version: ClassVar[str] = "1.0.0"

    async def run(self, target: Target, ctx: Any) -> Outcome:
        nonce = secrets.token_hex(8)
        url = target.input or ""
        _journal(f"start {nonce} {url}")
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
        try:
            writer.write(f"GET {parts.path or '/'} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
            await writer.drain()
            body = await reader.read(65536)
        finally:
            writer.close()
            await writer.wait_closed()
        ctx.on_bytes(len(body))
        status = body.split(b" ", 2)[1].decode() if body.startswith(b"HTTP/") else "?"
        _journal(f"done {nonce} {url}")
        return Outcome(
            test_keys={"nonce": nonce, "status_code": status, "body_length": len(body)},
            verdict=Verdict(Status.OK),
        )


register(SlowFetch)


def main(argv: list[str]) -> int:
    from agent.config import load
    from agent.daemon.loop import run_forever

    return run_forever(load(Path(argv[0])))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
