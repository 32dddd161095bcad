"""web_connectivity: is this URL reachable from here, and if not, where is it stopped?

``measure.py`` does the I/O (DNS, control, TCP, TLS, HTTP) into ``model.WebObservations``;
``analyze.py`` turns observations and blockpage fingerprints into a verdict without I/O, so a
stored measurement can be re-analysed later with better rules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from agent.errors import VigilError
from agent.experiments import ExperimentBase, Outcome, register
from agent.experiments.web_connectivity.model import WebObservations
from agent.wire.record import Target, Verdict

if TYPE_CHECKING:
    from agent.inputs.fingerprints import Fingerprints

Analyzer = Callable[[WebObservations, "Fingerprints"], Verdict]


@register
class WebConnectivity(ExperimentBase):
    """The registered experiment; ``analyzer`` and ``fingerprints`` can be injected in tests."""

    name: ClassVar[str] = "web_connectivity"
    version: ClassVar[str] = "0.2.0"  # 0.2: optional packet_evidence, verdict.evidence

    def __init__(
        self, analyzer: Analyzer | None = None, fingerprints: Fingerprints | None = None
    ) -> None:
        self._analyzer = analyzer
        self._fingerprints = fingerprints

    def _analysis(self) -> tuple[Analyzer, Fingerprints]:
        # Imported on first use: loading fingerprints is done once per run, not at import time.
        if self._analyzer is None:
            from agent.experiments.web_connectivity.analyze import analyze

            self._analyzer = analyze
        if self._fingerprints is None:
            from agent.inputs.fingerprints import Fingerprints

            self._fingerprints = Fingerprints.load_default()
        return self._analyzer, self._fingerprints

    async def run(self, target: Target, ctx: Any) -> Outcome:
        if not target.input:
            raise VigilError("web_connectivity needs a URL as input")
        # Imported here, not at module level: agent.net imports this package's model module,
        # and importing the model runs this __init__ first.
        from agent.experiments.web_connectivity.measure import measure

        analyzer, fingerprints = self._analysis()
        obs = await measure(target.input, ctx)
        return Outcome(test_keys=obs.to_test_keys(), verdict=with_evidence(
            analyzer(obs, fingerprints), obs.packet_evidence))


def with_evidence(verdict: Verdict, packet_evidence: dict[str, Any] | None) -> Verdict:
    """The verdict, naming what the packets say about who ended the flow (when they say it)."""
    if not packet_evidence or packet_evidence.get("status") != "ok":
        return verdict
    from agent.experiments.forensics import verdict_evidence

    evidence = verdict_evidence(packet_evidence)
    return verdict if evidence is None else dataclasses.replace(verdict, evidence=evidence)
