"""Run web_connectivity or censor_trace once, inside the path lab's probe namespace; print JSON.

    python -m lab.pathprobe web|trace URL --resolver IP --ca-file PEM --control-url URL
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from agent.config import AgentConfig, NetConfig
from agent.engine.helper_client import ControlClient
from agent.engine.runner import MeasureContext
from agent.experiments.censor_trace import CensorTrace
from agent.experiments.web_connectivity import WebConnectivity
from agent.net.dns import ResolverAddress
from agent.net.tls import make_contexts
from agent.wire.record import Target


async def main(args: argparse.Namespace) -> dict[str, Any]:
    tls = make_contexts(Path(args.ca_file))
    config = AgentConfig(sections={
        "packets": {"spawn": True},
        "censor_trace": {"max_hops": 10, "timeout": 0.8, "budget_s": 60},
    })
    ctx = MeasureContext(
        net=NetConfig(dns_timeout=2.0, dns_linger=0.5, connect_timeout=3.0, tls_timeout=3.0,
                      read_timeout=3.0, http_timeout=6.0),
        tls=tls, resolver=ResolverAddress(args.resolver),
        control=None, config=config)
    experiment = WebConnectivity() if args.command == "web" else CensorTrace()
    async with ControlClient(args.control_url, ssl_context=tls.verify, timeout=10.0) as control:
        ctx.control = control
        outcome = await experiment.run(Target(input=args.url), ctx)
    return {"test_keys": outcome.test_keys, "verdict": outcome.verdict.to_json()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m lab.pathprobe")
    parser.add_argument("command", choices=["web", "trace"])
    parser.add_argument("url")
    parser.add_argument("--resolver", required=True)
    parser.add_argument("--ca-file", required=True)
    parser.add_argument("--control-url", required=True)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
