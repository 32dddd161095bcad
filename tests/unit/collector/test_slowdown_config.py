"""The collector's ``[slowdowns]`` section: defaults, values and clear errors."""

from __future__ import annotations

from typing import Any

import pytest

from agent.errors import ConfigError
from collector.config import StoreConfig, parse_config
from collector.runtime import ServeSettings


def config(**slowdowns: Any) -> Any:
    cfg = parse_config({"store": {"url": "sqlite:///x.db"}, "slowdowns": slowdowns})
    return cfg.validate()


def test_defaults_and_values_reach_the_detector() -> None:
    assert config().slowdowns.enabled and config().slowdowns.interval_s == 3600.0
    cfg = config(interval_s=900, window_s=86400, alert_fraction=0.3, quorum=0.75,
                 min_probes=5, webhooks=["https://ops.example/hook"])
    det = ServeSettings(config=cfg).slowdown_detector
    assert (det.interval, det.baseline_window, det.alert_fraction, det.quorum,
            det.min_probes) == (900, 86400, 0.3, 0.75, 5)
    assert det.validate() is det
    assert cfg.store == StoreConfig(url="sqlite:///x.db")


@pytest.mark.parametrize(("values", "message"), [
    ({"interval_s": 0}, "interval_s"),
    ({"interval_s": 3600, "window_s": 3600}, "window_s"),
    ({"alert_fraction": 1.0}, "alert_fraction"),
    ({"quorum": 0.4}, "majority"),
    ({"min_probes": 0}, "min_probes"),
    ({"webhooks": ["ftp://x"]}, "http(s)"),
    ({"min_probes": 2.5}, "integer"),
    ({"surprise": 1}, "unknown key"),
])
def test_bad_values_are_clear_errors(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config(**values)
