"""Whole-network slowdown detection in simulated time: timeliness, accuracy, false events.

    python -m bench.slowdown [--runs 500] [--seed 1] [--noise 0.3] [--alert-fraction 0.5]
                             [--json]

Each run simulates one ISP's probes measuring benign transfers once per interval (random
phases; access lines from 2 Mbit/s to 1 Gbit/s; log-normal noise, sigma 0.3 by default;
10 % of the measurements missing), a probe on a slow home line, a probe of another ISP, and
a slowdown of the whole ISP to 10 % of its rate starting at a random time for 3-12
intervals.  Control runs have no slowdown, one probe slowing down by itself, a minority of
the ISP's probes slowing down (40 %), or the whole ISP at 20 % every evening (congestion).
Reported: runs found, detection delay (detected_at -
true start), start and end errors, all in measurement intervals, and events in the control
runs (false events).  Also the detector's time for one pass over a realistic store (200
probes, hourly, 9 days).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from dataclasses import replace
from typing import Any

from collector.slowdowns.detector import Observation, SlowdownConfig, detect

IV = 3600.0
CFG = SlowdownConfig(interval=IV, baseline_window=7 * 86400.0).validate()
HISTORY = 9 * 24  # intervals simulated per run
JUDGED_FROM = 7 * 24  # judge the last two days (a baseline window before them)


def _probes(rng: random.Random, n: int, asn: str, prefix: str) -> list[tuple[str, str, float,
                                                                            float]]:
    return [(f"{prefix}{i}", asn, 10 ** rng.uniform(6.3, 9.0), rng.random() * IV)
            for i in range(n)]


NOISE = 0.3  # log-normal sigma of a line's rate from one measurement to the next


def simulate(rng: random.Random, kind: str, noise: float = NOISE
             ) -> tuple[list[Observation], float, float]:
    n = rng.randint(3, 20)
    isp = _probes(rng, n, "AS64500", "p")
    rural = ("rural", "AS64500", 2e6, rng.random() * IV)
    other = _probes(rng, rng.randint(1, 5), "AS64501", "o")
    start = (JUDGED_FROM + 6 + rng.random() * 24) * IV
    end = start + rng.randint(3, 12) * IV
    if kind == "slowdown":
        slowed = {p[0] for p in isp} | {"rural"}
    elif kind == "one_probe":
        slowed = {isp[0][0]}
    elif kind == "minority":
        slowed = {p[0] for p in isp[: int(0.4 * n)]}
    elif kind == "evenings":  # congestion: the whole ISP at 20 % from 18:00 to 23:00 daily
        slowed = {p[0] for p in isp} | {"rural"}
    else:
        slowed = set()
    obs = []
    for name, asn, rate, phase in [*isp, rural, *other]:
        for k in range(HISTORY):
            if rng.random() < 0.1:
                continue  # no usable rate this time: missing, not zero
            t = k * IV + phase
            r = rate * rng.lognormvariate(0.0, noise)
            if kind == "evenings":
                if name in slowed and 18 <= (t % 86400) / 3600 < 23:
                    r *= 0.2
            elif name in slowed and start <= t < end:
                r *= 0.1
            obs.append(Observation(name, asn, "IR", t, r))
    return obs, start, end


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run(runs: int, seed: int, noise: float = NOISE, cfg: SlowdownConfig = CFG
        ) -> dict[str, Any]:
    rng = random.Random(seed)
    delays, start_err, end_err = [], [], []
    found = 0
    false_events: dict[str, int] = {"none": 0, "one_probe": 0, "minority": 0, "evenings": 0}
    for _ in range(runs):
        obs, start, end = simulate(rng, "slowdown", noise)
        events, _ = detect(obs, JUDGED_FROM * IV, HISTORY * IV, cfg)
        isp = [e for e in events if e.group == "asn:AS64500"]
        if len(isp) == 1 and isp[0].end is not None:
            found += 1
            e = isp[0]
            delays.append((e.detected_at - start) / IV)
            start_err.append(abs(e.start - start) / IV)
            end_err.append(abs(e.end - end) / IV)  # type: ignore[operator]
        false_events["none"] += len([e for e in events if e.group == "asn:AS64501"])
        for kind in ("none", "one_probe", "minority", "evenings"):
            obs, _, _ = simulate(rng, kind, noise)
            events, _ = detect(obs, JUDGED_FROM * IV, HISTORY * IV, cfg)
            false_events[kind] += len(events)
    # one pass over a realistic store: 200 probes, hourly, 9 days, judging 2 days
    big = []
    for p, (name, _asn, rate, phase) in enumerate(_probes(rng, 200, "AS64500", "b")):
        big += [Observation(name, f"AS{64500 + p % 10}", "IR", k * IV + phase,
                            rate * rng.lognormvariate(0.0, 0.3)) for k in range(HISTORY)]
    t0 = time.process_time()
    detect(big, JUDGED_FROM * IV, HISTORY * IV, cfg)
    pass_s = time.process_time() - t0
    return {
        "runs": runs, "noise_sigma": noise, "alert_fraction": cfg.alert_fraction,
        "found": found,
        "delay_intervals": {"median": round(statistics.median(delays), 2),
                            "p95": round(pct(delays, 0.95), 2), "max": round(max(delays), 2)},
        "start_error_intervals": {"median": round(statistics.median(start_err), 2),
                                  "max": round(max(start_err), 2)},
        "end_error_intervals": {"median": round(statistics.median(end_err), 2),
                                "max": round(max(end_err), 2)},
        "false_events": false_events, "control_runs_each": runs,
        "pass_cpu_seconds_200_probes_9_days": round(pass_s, 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--noise", type=float, default=NOISE,
                    help="log-normal sigma of each line's rate (0.3: +-35 %% typical)")
    ap.add_argument("--alert-fraction", type=float, default=CFG.alert_fraction)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    cfg = replace(CFG, alert_fraction=args.alert_fraction).validate()
    result = run(args.runs, args.seed, args.noise, cfg)
    if args.json:
        print(json.dumps(result))
        return 0
    d, s, e = (result["delay_intervals"], result["start_error_intervals"],
               result["end_error_intervals"])
    print(f"slowdowns found: {result['found']}/{result['runs']}")
    print(f"detection delay (intervals): median {d['median']}, p95 {d['p95']}, max {d['max']}")
    print(f"start error (intervals): median {s['median']}, max {s['max']}")
    print(f"end error (intervals): median {e['median']}, max {e['max']}")
    print(f"false events: {result['false_events']} in {result['runs']} control runs each")
    print(f"one pass, 200 probes x 9 days hourly: "
          f"{result['pass_cpu_seconds_200_probes_9_days']} s CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
