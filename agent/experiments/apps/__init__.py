"""Messaging apps and circumvention tools: ``telegram``, ``whatsapp``, ``signal``,
``facebook_messenger``, ``tor`` and ``vpn``.

One experiment per app, all sharing the same machinery: an endpoint list (``spec.py``; bundled
in ``agent/data/apps/``, replaced by files in the directories named by ``[apps] directories``,
default ``/etc/vigil/apps``), endpoint checks from the probe and from the control helper
(``measure.py``) and a pure verdict per app (``analysis.py``).  The input is ignored (apps are
not URLs); the record's ``input`` is whatever the scheduler passed, usually None.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from agent.config import AgentConfig
from agent.errors import ConfigError
from agent.experiments import ExperimentBase, InputPolicy, Outcome, register
from agent.experiments.context import MeasurementContext
from agent.wire.record import Target

DEFAULT_DIRECTORIES = (Path("/etc/vigil/apps"),)


def directories(config: AgentConfig | None) -> tuple[Path, ...]:
    """Where the app endpoint lists are (``[apps] directories``; relative to the config file)."""
    if config is None:
        return DEFAULT_DIRECTORIES
    section: Mapping[str, Any] = config.section("apps")
    unknown = set(section) - {"directories"}
    if unknown:
        raise ConfigError(f"unknown key(s) in [apps]: {', '.join(sorted(unknown))}")
    raw = section.get("directories")
    if raw is None:
        return DEFAULT_DIRECTORIES
    if not isinstance(raw, list) or not all(isinstance(d, str) for d in raw):
        raise ConfigError("[apps] directories must be a list of paths")
    base = config.path.parent if config.path is not None else Path(".")
    return tuple(Path(d) if Path(d).is_absolute() else base / d for d in raw)


class _AppExperiment(ExperimentBase):
    input_policy: ClassVar[InputPolicy] = InputPolicy.OWN  # the app's endpoint list
    # Citizen Lab category of what is tested, for the volunteer's category filter
    # ([lists] exclude_categories); records keep category_code null as before.
    category_code: ClassVar[str | None] = "COMT"

    async def run(self, target: Target, ctx: MeasurementContext) -> Outcome:
        from agent.experiments.apps.analysis import analyze
        from agent.experiments.apps.measure import measure
        from agent.experiments.apps.spec import load_specs

        specs = load_specs(directories(ctx.config))
        spec = specs.get(self.name)
        if spec is None:
            raise ConfigError(f"no endpoint list for {self.name!r}")
        results, control_failure = await measure(spec, ctx)
        verdict, groups = analyze(results, [g.name for g in spec.groups])
        keys = {
            "app": spec.name,
            "list_updated": spec.updated,
            "list_source": spec.source,
            "endpoints": [r.to_json() for r in results],
            "groups": {name: gv.to_json() for name, gv in groups.items()},
            "control_failure": control_failure,
        }
        return Outcome(test_keys=keys, verdict=verdict)


@register
class Telegram(_AppExperiment):
    name: ClassVar[str] = "telegram"


@register
class WhatsApp(_AppExperiment):
    name: ClassVar[str] = "whatsapp"


@register
class Signal(_AppExperiment):
    name: ClassVar[str] = "signal"


@register
class FacebookMessenger(_AppExperiment):
    name: ClassVar[str] = "facebook_messenger"


@register
class Tor(_AppExperiment):
    name: ClassVar[str] = "tor"
    category_code: ClassVar[str | None] = "ANON"


@register
class VPN(_AppExperiment):
    name: ClassVar[str] = "vpn"
    category_code: ClassVar[str | None] = "ANON"
    default_enabled: ClassVar[bool] = False  # needs the operator's endpoints (vpn.toml)
