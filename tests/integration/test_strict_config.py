"""One strict loader per program, through the real command lines: an unknown section or key
is an error naming the file and line, and collector.toml is shared by every collector command
(each checks its own sections; none refuses another's)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env={"PATH": "/usr/bin:/bin",
                                                     "PYTHONPATH": str(REPO)})


@pytest.mark.parametrize("text,line,words", [
    ("[agent]\nstate_dir = 'state'\n\n[schedular]\nmax_runs = 2\n", 4, "[schedular]"),
    ("[agent]\nstate_dir = 'state'\n[throttling]\nmax_rounds = 2\nmax_roundz = 3\n", 5,
     "max_roundz"),
    ("[agent]\nstate_dir = 'state'\n[mqtt]\nhost = 'x'\nprot = 1\n", 5, "prot"),
])
def test_agent_doctor_names_the_file_and_line_of_an_unknown_section_or_key(
    tmp_path: Path, text: str, line: int, words: str
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(text)
    done = run("agent", "doctor", "--config", str(config), "--timeout", "1",
               cwd=tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert f"{config}:{line}" in out and words in out, out


def test_collector_toml_is_shared_and_strict(tmp_path: Path) -> None:
    config = tmp_path / "collector.toml"
    db = tmp_path / "c.db"
    good = (f'[store]\nurl = "sqlite://{db}"\n[helper]\nmode = "open"\n'
            f'allow_range = ["127.0.0.0/8"]\n[revocation]\nhelper_probes_file = "p.jsonl"\n')
    config.write_text(good)
    done = run("collector", "query", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr  # [helper] does not stop query
    config.write_text(good + "[stroe]\nurl = 'x'\n")
    for args in (("collector", "query"), ("collector", "helper")):
        done = run(*args, "--config", str(config), cwd=tmp_path)
        out = done.stdout + done.stderr
        assert done.returncode != 0 and f"{config}:8" in out and "[stroe]" in out, (args, out)
    config.write_text(good.replace('mode = "open"', 'mode = "open"\nmoed = 1'))
    done = run("collector", "helper", "--config", str(config), cwd=tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode != 0 and f"{config}:5" in out and "moed" in out, out
