"""``vigil-collector helper`` configuration errors exit 2 with a one-line reason, before
anything listens."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from collector.cli import helper as helper_command
from collector.cli import main as cli


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "signed mode needs enrolled probe keys"),
        (("--mode", "open", "--allow-range", "10.0.0.1/8"), "has host bits set"),
        (("--mode", "open", "--allow-range", "0.0.0.0/0"), "covers every address"),
        (("--mode", "open", "--tls-cert", "c.pem"), "--tls-cert and --tls-key go together"),
        (("--mode", "open", "--resolver", "dns.example"), "give an IP address"),
        (("--mode", "open", "--ipdb", "missing.tsv"), "cannot read IP database"),
        (("--probes-file", "missing.jsonl"), "cannot read probes file"),
        (("--config", "missing.toml"), "config file missing.toml not found"),
    ],
)
def test_configuration_errors_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    message: str,
) -> None:
    # The command filters the root log handlers; keep pytest's own handlers untouched.
    monkeypatch.setattr(helper_command, "install_log_redaction", lambda *a, **k: None)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["helper", "--port", "1", *args]) == 2
    assert message in capsys.readouterr().err


def test_entry_point_reports_config_errors(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "collector", "helper", "--mode", "open", "--allow-range", "x"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False,
    )
    assert proc.returncode == 2
    assert "not a CIDR range" in proc.stderr
