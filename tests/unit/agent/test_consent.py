"""Informed consent: the text, its version, who accepted it, and the refusal when nobody did."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent import consent
from agent.config import AgentConfig, from_mapping
from agent.errors import ConsentRequired

DOC = Path(__file__).resolve().parents[3] / "docs" / "consent.md"


def config(tmp_path: Path, version: str | None = None) -> AgentConfig:
    agent: dict[str, object] = {"state_dir": str(tmp_path)}
    if version is not None:
        agent["consent_version"] = version
    return from_mapping({"agent": agent})


def test_packaged_text_is_the_docs_page_and_says_what_it_must() -> None:
    text = consent.load_text()
    assert text.text == DOC.read_text("utf-8")  # agent/data/consent.md is docs/consent.md
    assert text.version == "1"
    for words in ("What the probe measures", "What is published", "Never published: your IP "
                  "address", "Known risks", "Data policy", "exclude_categories",
                  "vigil-agent consent --withdraw", "consent_version"):
        assert words in text.text, words


def test_a_text_without_a_version_is_an_error() -> None:
    with pytest.raises(ValueError, match="Consent text version"):
        consent.parse_text("# no version here\n")
    assert consent.parse_text("x\nConsent text version: 7b (2027)\n").version == "7b"


def test_accept_read_withdraw(tmp_path: Path) -> None:
    text = consent.load_text()
    cfg = config(tmp_path)
    assert not consent.status(cfg).accepted
    when = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    consent.accept(tmp_path, text, "command", now=when)
    recorded = json.loads((tmp_path / "consent.json").read_text())
    assert recorded == {"version": "1", "sha256": text.sha256,
                        "accepted_at": "2026-12-04T12:00:00Z", "how": "command"}
    assert (tmp_path / "consent.json").stat().st_mode & 0o777 == 0o644
    current = consent.status(cfg)
    assert current.accepted and "accepted on 2026-12-04" in current.message
    assert consent.withdraw(tmp_path) and not consent.withdraw(tmp_path)
    assert not consent.status(cfg).accepted
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary file left


@pytest.mark.parametrize(
    ("record", "words"),
    [
        ("{not json", "unreadable"),
        ('{"version": "0", "sha256": "x", "accepted_at": "t", "how": "prompt"}',
         "you accepted consent version 0; the text is now version 1"),
        ('["a list"]', "unreadable"),
    ],
)
def test_an_old_or_damaged_record_is_not_consent(tmp_path: Path, record: str,
                                                 words: str) -> None:
    (tmp_path / "consent.json").write_text(record)
    current = consent.status(config(tmp_path))
    assert not current.accepted and words in current.message


def test_the_operator_config_accepts_one_version(tmp_path: Path) -> None:
    assert consent.status(config(tmp_path, "1")).accepted
    old = consent.status(config(tmp_path, "0"))
    assert not old.accepted and "update [agent] consent_version" in old.message
    with pytest.raises(Exception, match="consent_version must be a version string"):
        from_mapping({"agent": {"consent_version": 1}})


def test_require_refuses_unattended_and_asks_on_a_terminal(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    shown: list[str] = []
    with pytest.raises(ConsentRequired, match="vigil-agent consent --accept"):
        consent.require(cfg, interactive=False, echo=shown.append,
                        prompt=lambda q: "yes")
    assert shown == []  # unattended: nothing asked, nothing recorded
    assert not (tmp_path / "consent.json").exists()
    with pytest.raises(ConsentRequired, match="not given"):
        consent.require(cfg, interactive=True, echo=shown.append,
                        prompt=lambda q: "no")
    assert "Known risks" in shown[0] and not (tmp_path / "consent.json").exists()
    ok = consent.require(cfg, interactive=True, echo=shown.append,
                         prompt=lambda q: " YES ")
    assert ok.accepted
    assert json.loads((tmp_path / "consent.json").read_text())["how"] == "prompt"
    # accepted: no more questions
    consent.require(cfg, interactive=True, echo=shown.append,
                    prompt=lambda q: pytest.fail("asked again"))
