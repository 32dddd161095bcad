"""What every lab server shares: its config file, its ready file, and a bounded lifetime."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from lab import procinfo


def load_config(argv: list[str]) -> dict[str, Any]:
    if len(argv) != 2:
        sys.exit(f"usage: python -m {argv[0]} CONFIG.json")
    data = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        sys.exit("config must be a JSON object")
    return data


def mark_ready(cfg: dict[str, Any]) -> None:
    path = cfg.get("ready_file")
    if path:
        tmp = f"{path}.tmp"
        Path(tmp).write_text(str(os.getpid()), encoding="utf-8")
        os.replace(tmp, path)


class Lifetime:
    """Ends the process when its owner dies, its deadline passes, or SIGTERM/SIGINT arrives.

    ``owner`` is [pid, start_time] of the process that owns the lab (a pytest run) or null for
    a detached lab (``python -m lab up``), which relies on the deadline alone.
    """

    def __init__(self, cfg: dict[str, Any]) -> None:
        owner = cfg.get("owner")
        self.owner: tuple[int, int | None] | None = None if not owner else (owner[0], owner[1])
        self.deadline = float(cfg.get("deadline", time.time() + 3600))
        self.stopping = False

    def expired(self) -> bool:
        if self.stopping or time.time() > self.deadline:
            return True
        return self.owner is not None and not procinfo.alive(*self.owner)

    def install_signals(self) -> None:
        def stop(_sig: int, _frame: object) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    async def wait(self) -> None:
        """Return once the process should end (checked every 0.5 s: a bounded loop)."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        max_rounds = int(max(0.0, self.deadline - time.time()) / 0.5) + 2
        for _ in range(max_rounds):
            if stop.is_set() or self.expired():
                return
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                continue
