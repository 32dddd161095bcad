"""scripts/install-agent.sh into a temporary root: install, run the unit's ExecStart, reinstall,
upgrade, uninstall.  A debootstrap chroot variant is opt-in (slow, needs a prepared chroot).

The fast tests use ``VIGIL_MODE=system`` with this venv's Python standing in for the
distribution's (its packages are the dependencies), so they need no network: the installer
copies the agent's code and writes wrappers, config, key and unit under the temp root.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = "scripts/install-agent.sh"
UNIT = "etc/systemd/system/vigil-agent.service"


def copy_checkout(dest: Path, version: str | None = None, source: Path = ROOT) -> Path:
    """The parts of the checkout the installer uses, optionally with another version."""
    for name in ("agent", "configs", "systemd", "scripts", "docs"):
        shutil.copytree(
            source / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    shutil.copy2(source / "pyproject.toml", dest / "pyproject.toml")
    if version is not None:
        init = dest / "agent" / "__init__.py"
        init.write_text(
            re.sub(r'__version__ = ".*?"', f'__version__ = "{version}"', init.read_text())
        )
    return dest


def install(src: Path, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(
        VIGIL_ROOT=str(root), VIGIL_MODE="system", VIGIL_PYTHON=sys.executable, VIGIL_NO_SYSTEMD="1"
    )
    proc = subprocess.run(
        ["bash", str(src / SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def snapshot(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if "__pycache__" in rel:
            continue
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            mode = oct(p.stat().st_mode & 0o7777)
            out[rel] = f"{mode} {hashlib.sha256(p.read_bytes()).hexdigest()}"
        elif p.is_dir():
            out[rel] = "dir " + oct(p.stat().st_mode & 0o7777)
    return out


def unit_exec(root: Path) -> tuple[list[str], dict[str, str]]:
    """ExecStart and Environment= of the installed unit."""
    env: dict[str, str] = {}
    argv: list[str] = []
    for line in (root / UNIT).read_text().splitlines():
        if line.startswith("Environment="):
            k, _, v = line.removeprefix("Environment=").partition("=")
            env[k] = v
        elif line.startswith("ExecStart="):
            argv = shlex.split(line.removeprefix("ExecStart="))
    return argv, env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    tmp = tmp_path_factory.mktemp("install")
    src = copy_checkout(tmp / "src")
    root = tmp / "root"
    first = install(src, root, "--accept-consent")
    return src, root, first.stdout


def test_install_layout(installed: tuple[Path, Path, str]) -> None:
    _src, root, out = installed
    assert "vigil-collector probes add" in out  # the enrolment request is printed
    # the consent text is shown (what is measured, published, never published, the risks)
    for words in ("What the probe measures", "Never published: your IP address", "Known risks",
                  "Data policy", "consent text version 1 accepted"):
        assert words in out, words
    consent = json.loads((root / "var/lib/vigil/consent.json").read_text())
    assert consent["version"] == "1" and consent["how"] == "command"
    assert (root / "opt/vigil/share/doc/consent.md").is_file()
    assert "systemd is not running here" in out
    key = root / "var/lib/vigil/probe.key"
    assert key.exists() and (key.stat().st_mode & 0o777) == 0o600
    conf = root / "etc/vigil/agent.toml"
    assert conf.exists() and (conf.stat().st_mode & 0o777) == 0o640
    assert (root / "opt/vigil/VERSION").read_text().strip() == "0.1.0" or (
        root / "opt/vigil/VERSION"
    ).read_text().strip()
    version = subprocess.run(
        [str(root / "opt/vigil/bin/vigil-agent"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert version.returncode == 0 and "vigil-agent" in version.stdout
    unit = (root / UNIT).read_text()
    assert f"ExecStart={root}/opt/vigil/bin/vigil-agent run" in unit
    assert f"Environment=VIGIL_CONFIG={root}/etc/vigil/agent.toml" in unit
    assert f"Environment=VIGIL_STATE_DIR={root}/var/lib/vigil" in unit
    assert not (root / "opt/vigil/lib/python/collector").exists()  # the Pi gets the agent only


def test_reinstall_changes_nothing_and_upgrade_only_the_version(
    installed: tuple[Path, Path, str], tmp_path: Path
) -> None:
    src, root, _ = installed
    before = snapshot(root)
    again = install(src, root)
    assert "kept existing" in again.stdout
    assert snapshot(root) == before  # byte for byte, modes included
    # an upgrade: a newer checkout replaces the code and the version, nothing else
    newer = copy_checkout(tmp_path / "newer", version="0.2.0", source=src)
    out = install(newer, root)
    assert "upgraded vigil-agent 0.1.0 -> 0.2.0" in out.stdout or "0.2.0" in out.stdout
    after = snapshot(root)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert changed == {"opt/vigil/VERSION", "opt/vigil/lib/python/agent/__init__.py"}, changed
    install(src, root)  # back to the original for the other tests


def test_execstart_runs_with_the_units_environment(installed: tuple[Path, Path, str]) -> None:
    """The unit's ExecStart, with its Environment=, starts the long-running agent; SIGTERM
    stops it cleanly and it leaves its state file for `vigil-agent status`."""
    _, root, _ = installed
    argv, env = unit_exec(root)
    conf = Path(env["VIGIL_CONFIG"])
    original = conf.read_text()
    # no broker, no helper, campaigns only: nothing leaves loopback
    if "\n[scheduler]\n" in original:
        conf.write_text(original.replace("\n[scheduler]\n", "\n[scheduler]\ntests = []\n", 1))
    else:
        conf.write_text(original + "\n" + _OFFLINE)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    full_env.update(env)
    log = root / "agent.out"
    try:
        with log.open("wb") as fh:
            proc = subprocess.Popen(
                argv, env=full_env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        state = Path(env["VIGIL_STATE_DIR"]) / "agent-state.json"
        deadline = time.monotonic() + 30
        while not state.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert state.exists(), log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, log.read_text()
        status = subprocess.run(
            [argv[0], "status"], env=full_env, capture_output=True, text=True, timeout=60
        )
        assert status.returncode == 0, status.stderr
        assert "NOT running" in status.stdout and "stopped" in status.stdout
    finally:
        conf.write_text(original)


_OFFLINE = """
[scheduler]
tests = []
"""


def test_unattended_agent_refuses_until_consent_is_accepted(tmp_path: Path) -> None:
    """Installed without --accept-consent and without a terminal: the text is shown, the
    service's ExecStart refuses with exit code 2 (not restarted by systemd) and says how to
    accept; after `vigil-agent consent --accept` it starts."""
    src = copy_checkout(tmp_path / "src")
    root = tmp_path / "root"
    out = install(src, root).stdout
    assert "Known risks" in out and "NOT ACCEPTED" in out
    assert not (root / "var/lib/vigil/consent.json").exists()
    argv, env = unit_exec(root)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    full_env.update(env)
    refused = subprocess.run(argv, env=full_env, capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL)
    assert refused.returncode == 2, refused.stderr
    assert "vigil-agent consent" in refused.stderr and "not accepted" in refused.stderr
    accept = subprocess.run([argv[0], "consent", "--accept"], env=full_env, capture_output=True,
                            text=True, timeout=60)
    assert accept.returncode == 0, accept.stderr
    check = subprocess.run([argv[0], "consent", "--check"], env=full_env, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0 and "accepted" in check.stdout


def test_uninstall_keeps_data_unless_purged(tmp_path: Path) -> None:
    src = copy_checkout(tmp_path / "src")
    root = tmp_path / "root"
    install(src, root)
    key = (root / "var/lib/vigil/probe.key").read_bytes()
    install(src, root, "--uninstall")
    assert not (root / "opt/vigil").exists() and not (root / UNIT).exists()
    assert (root / "var/lib/vigil/probe.key").read_bytes() == key
    assert (root / "etc/vigil/agent.toml").exists()
    install(src, root)  # reinstalling finds the same key: same probe, no new enrolment
    assert (root / "var/lib/vigil/probe.key").read_bytes() == key
    install(src, root, "--uninstall", "--purge")
    assert not (root / "var/lib/vigil").exists() and not (root / "etc/vigil").exists()


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["bash", str(ROOT / SCRIPT), "--purge"],
        capture_output=True,
        text=True,
        env={**os.environ, "VIGIL_ROOT": str(tmp_path)},
        timeout=30,
    )
    assert proc.returncode != 0 and "--purge goes with --uninstall" in proc.stderr


# ---- the slow, opt-in variant: a Debian 12 chroot made with debootstrap -------------------------
CHROOT = os.environ.get("VIGIL_TEST_CHROOT")


@pytest.mark.slow
def test_install_in_a_debian_chroot() -> None:
    """.ci/run builds the chroot (scripts/make-test-chroot.sh); in CI its absence is a failure."""
    why = None
    if not CHROOT:
        why = "set VIGIL_TEST_CHROOT to a chroot made by scripts/make-test-chroot.sh"
    elif os.geteuid() != 0:
        why = "chroot needs root"
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the Debian chroot install test: {why}")
        pytest.skip(why)
    assert CHROOT is not None
    chroot = Path(CHROOT)
    dest = chroot / "src/vigil"
    shutil.rmtree(dest, ignore_errors=True)
    (chroot / "etc/vigil/agent.toml").unlink(missing_ok=True)  # start from the example
    copy_checkout(dest)
    wheels = "/wheels" if (chroot / "wheels").is_dir() else ""
    pip_args = f"--no-index --find-links {wheels}" if wheels else ""

    def run(*cmd: str) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "VIGIL_PIP_ARGS": pip_args,
            "VIGIL_APT": "0",  # offline: everything from the wheelhouse (test-on-arm.sh does apt)
            "HOME": "/root",
            "LANG": "C.UTF-8",
        }
        return subprocess.run(
            ["chroot", str(chroot), *cmd], env=env, capture_output=True, text=True, timeout=900
        )

    first = run("bash", "/src/vigil/scripts/install-agent.sh", "--accept-consent")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "vigil:" in (chroot / "etc/passwd").read_text()  # the service user exists
    assert "vigil-collector probes add" in first.stdout
    key = (chroot / "var/lib/vigil/probe.key").read_bytes()
    second = run("bash", "/src/vigil/scripts/install-agent.sh")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "kept existing /etc/vigil/agent.toml" in second.stdout
    assert (chroot / "var/lib/vigil/probe.key").read_bytes() == key
    # the unit's ExecStart as the service user with the unit's environment (offline config)
    argv, env = unit_exec(chroot)
    conf = chroot / "etc/vigil/agent.toml"
    original = conf.read_text()
    conf.write_text(original.replace("\n[scheduler]\n", "\n[scheduler]\ntests = []\n", 1))
    state = chroot / "var/lib/vigil/agent-state.json"
    state.unlink(missing_ok=True)
    envs = [f"{k}={v}" for k, v in env.items()]
    proc = subprocess.Popen(
        [
            "chroot",
            str(chroot),
            "setpriv",
            "--reuid=vigil",
            "--regid=vigil",
            "--init-groups",
            "env",
            *envs,
            *argv,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    try:
        deadline = time.monotonic() + 60
        while not state.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert state.exists(), (
            proc.stdout.read() if proc.stdout and proc.poll() is not None else "no state")
        assert state.stat().st_uid == (chroot / "var/lib/vigil/probe.key").stat().st_uid
        proc.send_signal(signal.SIGTERM)  # chroot and setpriv exec: this is the agent
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()
        conf.write_text(original)
    check = run(
        "runuser",
        "-u",
        "vigil",
        "--",
        "env",
        "VIGIL_CONFIG=/etc/vigil/agent.toml",
        "VIGIL_STATE_DIR=/var/lib/vigil",
        "/opt/vigil/bin/vigil-agent",
        "doctor",
        "--timeout",
        "1",
    )
    assert "probe " in check.stdout and "key" in check.stdout, check.stdout + check.stderr
