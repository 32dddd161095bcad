"""The shipped Mosquitto config renders completely and says what the design says."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from agent.wire.topics import PROBE_MOUNT
from scripts.mosquitto_conf import (
    COLLECTORS_ACL,
    PROBES_ACL,
    BrokerSettings,
    render,
    write_password_file,
)


def settings(tmp_path: Path) -> BrokerSettings:
    return BrokerSettings(
        data_dir=tmp_path / "data", ca_file=tmp_path / "ca.pem",
        server_cert_file=tmp_path / "s.pem", server_key_file=tmp_path / "s.key",
        probe_password_file=tmp_path / "p.pw", collector_password_file=tmp_path / "c.pw",
        probe_acl_file=tmp_path / "p.acl", collector_acl_file=tmp_path / "c.acl",
        log_dest="stderr", probe_port=18883, probe_cert_port=18884, collector_port=18885,
    )


def test_every_placeholder_is_filled(tmp_path: Path) -> None:
    text = render(settings(tmp_path))
    assert "${" not in text
    assert re.search(r"^listener 18883 0\.0\.0\.0$", text, re.M)
    assert re.search(r"^listener 18885 127\.0\.0\.1$", text, re.M)


def test_security_settings(tmp_path: Path) -> None:
    lines = [ln.strip() for ln in render(settings(tmp_path)).splitlines()]
    assert "per_listener_settings true" in lines
    assert lines.count("allow_anonymous false") == 3
    assert lines.count("use_username_as_clientid true") == 2  # both probe listeners
    assert lines.count(f"mount_point {PROBE_MOUNT}") == 2  # both probe listeners
    assert "use_identity_as_username true" in lines
    assert "require_certificate true" in lines
    assert "persistence true" in lines
    assert "message_size_limit 1048576" in lines
    assert not any(ln.startswith("allow_anonymous true") for ln in lines)


def test_acls_confine_probes_to_their_own_id() -> None:
    probe_rules = [ln for ln in PROBES_ACL.read_text().splitlines() if ln and ln[0] != "#"]
    # Exactly the probe's own measurements and status topics, under the probe mount point.
    writes = sorted(r for r in probe_rules if r.startswith("pattern write"))
    assert writes == [
        f"pattern write {PROBE_MOUNT}vigil/v1/probes/%u/measurements",
        f"pattern write {PROBE_MOUNT}vigil/v1/probes/%u/status",
    ]
    assert f"pattern read {PROBE_MOUNT}vigil/v1/probes/%u/commands" in probe_rules
    assert not any(r.startswith("pattern read") and "/probes/" in r and "%u" not in r
                   for r in probe_rules)
    assert not any(r.startswith(("topic", "user")) for r in probe_rules)
    collector_rules = COLLECTORS_ACL.read_text().splitlines()
    assert f"pattern read {PROBE_MOUNT}vigil/v1/probes/#" in collector_rules


def test_missing_placeholder_value_fails_loudly(tmp_path: Path) -> None:
    template = tmp_path / "t.conf.in"
    template.write_text("port ${probe_port}\nnew ${not_a_setting}\n")
    with pytest.raises(KeyError, match="not_a_setting"):
        render(settings(tmp_path), template)


def test_password_file(tmp_path: Path) -> None:
    if not os.access("/usr/bin/mosquitto_passwd", os.X_OK):
        pytest.skip("mosquitto_passwd not installed")
    path = tmp_path / "pw"
    write_password_file(path, {})
    assert path.read_text() == ""
    write_password_file(path, {"probe1": "secret", "probe2": "other"})
    text = path.read_text()
    assert "secret" not in text and text.startswith("probe1:$7$")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(ValueError, match="invalid MQTT username"):
        write_password_file(path, {"a:b": "x"})
