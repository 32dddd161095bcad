"""docs/operator-guide.md, followed literally: every block marked ``<!-- step: NAME -->`` runs
as written, in order, as root on a fresh host, with the test's own checks between them.

The "fresh Debian host" is this machine seen through new namespaces: a mount namespace whose
/etc, /opt, /var, /usr/local and /root are overlays (writes land in the test's directory, the
real ones stay untouched: users, packages and files the installer creates vanish with the
test), an empty /run (no systemd: the guide's "Without systemd" way of starting services), a
network namespace with only loopback (the guide's default ports collide with nothing, and
nothing can reach out), and a PID namespace (every process the guide starts dies with it).
The software comes from this checkout, copied to /usr/local/src/vigil; the installer runs in
its system mode with this interpreter (offline: no pip downloads) and without apt (mosquitto
and openssl are already installed here).

Checks between the steps (tests/integration/guide_probe.py): the three services listen; a
synthetic signed probe enrolled by the guide's one command delivers RECENT + OLD measurements
and the store holds exactly them; once revoked, the broker refuses the probe; after the store
is emptied ("a new machine"), the guide's restore brings back every measurement (counted, ids
compared); the upgrade installs the new version and keeps config, logins and data; the prune
leaves exactly the RECENT ones.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.broker import mosquitto_available

pytestmark = [pytest.mark.slow, pytest.mark.broker]

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "operator-guide.md"
STEPS = ("install", "start", "enrol", "receive", "revoke", "backup", "restore", "upgrade",
         "prune")
RECENT, OLD = 40, 15
STEP_RE = re.compile(r"<!-- step: ([a-z-]+) -->\s*```sh\n(.*?)```", re.S)
OVERLAID = ("/etc", "/opt", "/var", "/usr/local", "/root")


def guide_steps(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in STEP_RE.finditer(text)]


def test_the_guide_marks_every_step_in_order() -> None:
    assert [name for name, _ in guide_steps(GUIDE.read_text())] == list(STEPS)


def precondition() -> str | None:
    if os.geteuid() != 0:
        return "needs root (mount and network namespaces)"
    if shutil.which("unshare") is None or shutil.which("setpriv") is None:
        return "needs util-linux unshare and setpriv"
    if (why := mosquitto_available()) is not None:
        return why
    if shutil.which("openssl") is None:
        return "needs openssl"
    return None


def checkout_copy(dest: Path) -> None:
    for name in ("agent", "collector", "configs", "systemd", "scripts", "docs", "lab"):
        shutil.copytree(REPO / name, dest / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(REPO / "pyproject.toml", dest / "pyproject.toml")


def script(work: Path) -> str:
    """The driver: namespaces' setup, then each guide step and the checks after it."""
    py = f"PYTHONPATH={shlex.quote(str(REPO))} {shlex.quote(sys.executable)}"
    probe = f"{py} -m tests.integration.guide_probe"
    d = shlex.quote(str(work))
    digests = ("sha256sum /etc/vigil/collector.toml /etc/vigil/pki/ca.key "
               "/etc/vigil/pki/broker.pem /etc/vigil/collector.pass")
    checks = {
        "start": f"{probe} wait-tcp 127.0.0.1:8883 127.0.0.1:8884 127.0.0.1:8885 "
                 "127.0.0.1:8443 127.0.0.1:8080",
        "enrol": "PASSWORD=$(sed -n 's/.*username [a-z0-9]* *password \\([^ ]*\\).*/\\1/p' "
                 f"{d}/out.enrol)\n"
                 f'{probe} deliver {d} --password "$PASSWORD" --recent {RECENT} --old {OLD}\n'
                 f"{probe} count --expect {RECENT + OLD} --ids {d}\n" + digests,
        "revoke": f'{probe} refused {d} --password "$PASSWORD"',
        "backup": (  # "a new machine": the collector's store is gone
            'kill "$(cat /run/vigil-collector.pid)"\n'
            'while kill -0 "$(cat /run/vigil-collector.pid)" 2>/dev/null; do sleep 0.2; done\n'
            "rm -f /var/lib/vigil-collector/collector.db*\n"
            "setpriv --reuid=vigil-collector --regid=vigil-collector --init-groups "
            "/opt/vigil/bin/vigil-collector serve --config /etc/vigil/collector.toml "
            ">>/var/log/vigil/collector.log 2>&1 &\n"
            "echo $! >/run/vigil-collector.pid\n"
            f"{probe} wait-tcp 127.0.0.1:8080\n"
            f"{probe} count --expect 0\n"),
        "restore": f"{probe} wait-tcp 127.0.0.1:8080\n"
                   f"{probe} count --expect {RECENT + OLD} --ids {d}",
        "upgrade": f"{probe} wait-tcp 127.0.0.1:8080 127.0.0.1:8443\n"
                   "echo VERSION=$(cat /opt/vigil/COLLECTOR_VERSION)\n"
                   + digests + "\n"
                   f"{probe} count --expect {RECENT + OLD} --ids {d}",
        "prune": f"{probe} count --expect {RECENT}",
    }
    before = {
        "enrol": f"eval \"$({probe} new-key {d})\"",
        "upgrade": (  # the new release in the checkout
            "sed -i 's/^__version__ = .*/__version__ = \"99.0.0\"/' "
            "/usr/local/src/vigil/agent/__init__.py"),
    }
    lines = [
        "set -euo pipefail",
        "mount --make-rprivate /",
    ]
    for i, path in enumerate(OVERLAID):
        up, wk = work / "overlay" / f"u{i}", work / "overlay" / f"w{i}"
        lines.append(f"mkdir -p {up} {wk} && mount -t overlay overlay "
                     f"-o lowerdir={path},upperdir={up},workdir={wk} {path}")
    lines += [
        "mount -t tmpfs -o mode=0755 tmpfs /run",
        "ip link set lo up",
        f"cp -a {d}/src /usr/local/src/vigil",
        "cd /usr/local/src/vigil",
        f"export VIGIL_MODE=system VIGIL_APT=0 VIGIL_PYTHON={shlex.quote(sys.executable)}",
        "export HOME=/root",
    ]
    for name, body in guide_steps(GUIDE.read_text()):
        if name in before:
            lines += [f"echo '=== before {name}'", before[name]]
        block = work / f"step.{name}.sh"
        block.write_text(body)
        lines += [f"echo '=== step {name}'", "cd /usr/local/src/vigil",
                  f"source {block} > >(tee {d}/out.{name}) 2>&1",
                  "sleep 0.2" if name == "enrol" else ":"]
        if name in checks:
            lines += [f"echo '=== check {name}'", checks[name]]
    lines.append("echo '=== done'")
    return "\n".join(lines) + "\n"


def test_operator_guide_from_a_bare_host(tmp_path: Path) -> None:
    if (why := precondition()) is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {why}")
        pytest.skip(why)
    checkout_copy(tmp_path / "src")
    (tmp_path / "driver.sh").write_text(script(tmp_path))
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    started = time.monotonic()
    done = subprocess.run(
        ["unshare", "--mount", "--net", "--pid", "--fork", "--mount-proc", "--",
         "bash", str(tmp_path / "driver.sh")],
        capture_output=True, text=True, timeout=600, env=env, stdin=subprocess.DEVNULL)
    elapsed = time.monotonic() - started
    out = done.stdout + done.stderr
    logs = "".join(f"\n--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                   for p in sorted((tmp_path / "overlay").glob("u*/log/vigil/*.log")))
    assert done.returncode == 0 and "=== done" in done.stdout, out[-8000:] + logs
    assert f"counted {RECENT + OLD} measurements" in out
    assert "the revoked probe is refused by the broker" in out
    assert "counted 0 measurements" in out  # the store really was empty before the restore
    assert "VERSION=99.0.0" in out
    assert f"counted {RECENT} measurements" in out  # prune kept the recent ones only
    # the upgrade kept config, CA, certificates and the collector's login: the digests after
    # the upgrade are those taken after enrolment
    digests = re.findall(r"^([0-9a-f]{64})  (/etc/vigil/\S+)$", out, re.M)
    assert len(digests) == 8 and digests[:4] == digests[4:], digests
    for line in out.splitlines():
        if line.startswith(("delivered", "counted", "the revoked", "VERSION=", "pruned")):
            print(line)
    print(f"operator guide followed in {elapsed:.1f} s")
