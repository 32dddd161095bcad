"""Run a program that is not ours (the control helper, later the broker) under the lab's rules.

The guard starts the child in the same namespace, reports it ready once its TCP port accepts
connections, and stops it (SIGTERM, then SIGKILL, by PID) when the lab's owner dies, the
lifetime ends or the guard itself is told to stop.  It exits with the child's exit code.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lab.servers.common import Lifetime, load_config, mark_ready


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


def main(cfg: dict[str, Any]) -> int:
    life = Lifetime(cfg)
    life.install_signals()
    env = {**os.environ, **cfg.get("env", {})}
    child = subprocess.Popen(cfg["argv"], env=env, cwd=cfg.get("cwd"))
    Path(cfg["child_pid_file"]).write_text(str(child.pid), encoding="utf-8")
    host, port = cfg["ready_tcp"]
    ready_deadline = time.monotonic() + float(cfg.get("ready_timeout", 30))
    ready = False
    try:
        while not life.expired():
            code = child.poll()
            if code is not None:
                return code
            if not ready:
                if _port_open(host, int(port)):
                    mark_ready(cfg)
                    ready = True
                elif time.monotonic() > ready_deadline:
                    print(f"guard: {cfg['argv'][0]} not listening on {host}:{port} in time",
                          file=sys.stderr)
                    return 1
            time.sleep(0.1 if not ready else 0.5)
        return 0
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=3)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(timeout=3)


if __name__ == "__main__":
    sys.exit(main(load_config(sys.argv)))
