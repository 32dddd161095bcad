"""Can this machine run the lab, and is the agent built?  Used by tests, bench and `make run`."""

from __future__ import annotations

import importlib.util
import os
import shutil


def lab_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, nftables, tc); run as root"
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    missing = [t for t in ("ip", "nft", "tc", "tcpdump", "sysctl")
               if shutil.which(t, path=path) is None]
    if missing:
        return f"the lab needs {', '.join(missing)} (run `make deps`)"
    if not os.path.isdir("/proc/self/ns") or not os.path.exists("/proc/self/ns/net"):
        return "this kernel has no network namespaces"
    return None


def agent_unavailable() -> str | None:
    for module in ("agent.cli.run", "collector.cli.helper"):
        if importlib.util.find_spec(module) is None:
            return f"{module} does not exist yet (the agent or helper is not built)"
    return None
