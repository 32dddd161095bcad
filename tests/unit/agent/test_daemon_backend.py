"""What the long-running agent plans for each scheduled kind (no network: plan() is pure)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import config as agent_config
from agent import identity
from agent.daemon import settings as schedconfig
from agent.daemon.backend import RealBackend


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[RealBackend]:
    listing = tmp_path / "list.csv"
    listing.write_text(
        "url,category_code,category_description,date_added,source,notes\n"
        "https://social.example/,GRP,Social,2020-01-01,,\n"
        "https://news.example/a,NEWS,News,2020-01-01,,\n"
        "https://news.example/b,NEWS,News,2020-01-01,,\n"
        "https://shop.example/,COMM,Commerce,2020-01-01,,\n"
    )
    cfg = agent_config.from_mapping(
        {
            "agent": {"state_dir": str(tmp_path / "state")},
            "lists": {"files": [str(listing)]},
            "throttling": {"names": ["video.example"]},
        }
    )
    identity.create(cfg.state_dir)
    b = RealBackend.create(cfg, schedconfig.settings(cfg))
    yield b
    b.outbox.close()


def test_throttling_plans_configured_names_then_prone_categories_once_per_host(
    backend: RealBackend,
) -> None:
    plan = backend.plan("throttling", None)
    assert [name for name, _ in plan] == ["throttling"] * 3
    assert [t.input for _, t in plan] == [
        "https://video.example/",
        "https://social.example/",
        "https://news.example/a",
    ]


def test_apps_family_leaves_out_opt_in_vpn(backend: RealBackend) -> None:
    names = {name for name, _ in backend.plan("apps", None)}
    assert "vpn" not in names
    assert {"telegram", "signal", "tor"} <= names


def test_vpn_named_alone_is_planned(backend: RealBackend) -> None:
    assert {name for name, _ in backend.plan("vpn", None)} == {"vpn"}


def test_web_connectivity_plans_every_listed_url(backend: RealBackend) -> None:
    assert len(backend.plan("web_connectivity", None)) == 4


def test_every_registered_experiment_declares_its_inputs_and_default() -> None:
    from agent import experiments as registry

    for name, cls in registry.load_all().items():
        assert cls.name == name
        assert isinstance(cls.input_policy, registry.InputPolicy)
        assert isinstance(cls.default_enabled, bool)
        if cls.input_policy is registry.InputPolicy.OWN:
            assert cls.default_targets(), name


def test_register_refuses_a_class_without_a_policy() -> None:
    import pytest

    from agent import experiments as registry

    class Incomplete:
        name = "incomplete_test"
        version = "0.0.1"

    with pytest.raises(TypeError, match="input_policy"):
        registry.register(Incomplete)  # type: ignore[arg-type]


def test_excluded_categories_hold_for_every_kind_and_campaign_inputs(backend: RealBackend) -> None:
    """[lists] exclude_categories: list URLs, throttling hosts, the apps' own categories (Tor
    is a circumvention tool, ANON; messaging apps are COMT) and operator campaign inputs."""
    from dataclasses import replace

    from agent.wire.record import Target

    backend.reconfigure(replace(
        backend.config,
        lists=replace(backend.config.lists, exclude_categories=("ANON", "NEWS")),
    ))
    web = [t.input for _, t in backend.plan("web_connectivity", None)]
    assert web == ["https://social.example/", "https://shop.example/"]
    throttled = [t.input for _, t in backend.plan("throttling", None)]
    assert "https://news.example/a" not in throttled
    apps = {name for name, _ in backend.plan("apps", None)}
    assert "tor" not in apps and "telegram" in apps
    campaign = [
        Target("https://opposition.example/", "POLR"),
        Target("https://paper.example/", "NEWS"),
        Target("https://old-code.example/", "FEXP"),  # an old code for NEWS
    ]
    planned = [t.input for _, t in backend.plan("web_connectivity", campaign)]
    assert planned == ["https://opposition.example/"]
