"""throttling: is this host's traffic slowed down on purpose, by name (SNI) or by address?

``measure.py`` does the I/O (bulk-endpoint rounds, address transfers, the helper's own
download) into ``model.ThrottlingObservations``; ``analysis.py`` decides without I/O, from the
rates of ``rates.py`` and the statistics in ``stats.py`` (a two-sample KS test and Wehe's
normalised difference of means), so a stored measurement can be re-analysed later.

Every record carries ``test_keys.benign_rate``: the probe's benign rate right now (reference
kind, bytes, seconds, rate_bps, rtt_ms; ``rate_bps`` null with ``why`` when there is none),
the stable place where the collector reads a probe's throughput over time.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from agent.errors import VigilError
from agent.experiments import ExperimentBase, InputPolicy, Outcome, register
from agent.wire.record import Target


@register
class Throttling(ExperimentBase):
    name: ClassVar[str] = "throttling"
    version: ClassVar[str] = "0.3.0"
    input_policy: ClassVar[InputPolicy] = InputPolicy.SELECTED_HOSTS
    default_enabled: ClassVar[bool] = False  # up to 2 MB per host: only when asked for
    # concurrent bulk downloads would share the access link and blur every comparison
    one_at_a_time: ClassVar[bool] = True

    async def run(self, target: Target, ctx: Any) -> Outcome:
        if not target.input:
            raise VigilError("throttling needs a URL or a host name as input")
        from agent.experiments.throttling.analysis import analyze, benign_reference
        from agent.experiments.throttling.measure import measure, settings_from

        settings = settings_from(ctx)
        started = time.monotonic()
        obs = await measure(target.input, ctx, settings)
        elapsed = time.monotonic() - started
        verdict, details = analyze(obs, settings.thresholds)
        keys = obs.to_test_keys()
        keys["benign_rate"] = benign_reference(obs, settings.thresholds)
        keys["measurement_seconds"] = round(elapsed, 3)
        keys["analysis"] = details
        return Outcome(test_keys=keys, verdict=verdict)
