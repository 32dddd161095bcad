"""Benchmark of fingerprint loading/matching and of analyze(), run by hand (never a timed test):

    .venv/bin/python -m bench.fingerprints [--rounds 2000]

Prints: cold load time of the shipped file (fresh parse, as an agent run pays it once), peak
Python memory of the loaded set, microseconds per HTTP match and per DNS match, and
microseconds per analyze() call on a plain-HTTP measurement (the path that runs every matcher).
No network: pure CPU.
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from importlib import resources

from agent.experiments.web_connectivity.analyze import analyze
from agent.experiments.web_connectivity.model import WebObservations
from agent.inputs.fingerprints import DEFAULT_FILE, Fingerprints, parse_csv
from agent.net.observations import DNSAnswer, DNSQuery, DNSReply, HTTPRequest, TCPConnect
from agent.wire.helper_api import ClientInfo, ControlDNS, ControlHTTP, ControlResponse, ControlTCP

HOST = "www.example.org"
BODY = (
    "<!doctype html><html><head><title>www.example.org - news</title></head><body><h1>News</h1>"
    + "<p>Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.</p>" * 12
)[:1024]


def _observation() -> WebObservations:
    reply = DNSReply(0.02, "NOERROR", (DNSAnswer("A", "198.19.1.10", 60),), "198.18.1.53:53")
    return WebObservations(
        input=f"http://{HOST}/",
        hostname=HOST,
        dns=(DNSQuery(HOST, "A", "198.18.1.53:53", "udp", None, (reply,), 0.0, 0.05),),
        tcp_connect=(TCPConnect("198.19.1.10", 80, None, 0.05, 0.1, "dns"),),
        requests=(
            HTTPRequest(
                f"http://{HOST}/", "GET", "198.19.1.10:80", None, 200,
                {"Server": "nginx", "Content-Type": "text/html"}, 6000, "ab" * 32, BODY,
                "www.example.org - news", (), 0.1, 0.3,
            ),
        ),
        control=ControlResponse(
            dns=ControlDNS(None, ("198.19.1.10",)),
            tcp_connect={"198.19.1.10:80": ControlTCP(True, None)},
            tls_handshake={},
            http_request=ControlHTTP(None, 200, 6100, "www.example.org - news", {}),
            client=ClientInfo("AS64500", "Lab", "ZZ"),
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    rounds = max(1, min(args.rounds, 1_000_000))

    data = resources.files("agent").joinpath("data", "fingerprints", DEFAULT_FILE).read_bytes()
    loads = []
    for _ in range(5):
        t0 = time.perf_counter()
        fps_list, problems = parse_csv(data, DEFAULT_FILE)
        fps = Fingerprints(fps_list, problems)
        loads.append((time.perf_counter() - t0) * 1000)
    load_ms = min(loads)
    del fps_list, fps
    gc.collect()
    tracemalloc.start()
    fps_list, problems = parse_csv(data, DEFAULT_FILE)
    fps = Fingerprints(fps_list, problems)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    headers = {"Server": "nginx", "Content-Type": "text/html", "Location": "http://x/"}
    t0 = time.perf_counter()
    for _ in range(rounds):
        fps.match_http(body=BODY, headers=headers, title="www.example.org - news")
    http_us = (time.perf_counter() - t0) / rounds * 1e6

    t0 = time.perf_counter()
    for _ in range(rounds):
        fps.match_dns("198.19.1.10")
    dns_us = (time.perf_counter() - t0) / rounds * 1e6

    obs = _observation()
    t0 = time.perf_counter()
    for _ in range(rounds):
        analyze(obs, fps)
    analyze_us = (time.perf_counter() - t0) / rounds * 1e6

    print(f"fingerprints: {len(fps)} loaded, {len(fps.problems)} problems")
    print(f"load (parse + index + compile): {load_ms:.1f} ms (best of 5)")
    print(f"peak Python memory while loading: {peak / 1e6:.1f} MB")
    print(f"match_http: {http_us:.0f} us/response   match_dns: {dns_us:.2f} us/answer")
    print(f"analyze (plain HTTP, all matchers): {analyze_us:.0f} us/measurement")


if __name__ == "__main__":
    main()
