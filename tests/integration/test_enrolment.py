"""`vigil-collector probes add` enrols a probe everywhere in one command (store, broker login
with a live reload, helper probes file), the mirror of `probes revoke`; through a real broker
running the project's config."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.errors import ConfigError
from collector.enrolment import append_helper_enrolment, set_password_entry
from collector.helper.auth import parse_probes
from collector.store import open_store
from lab.broker import MosquittoBroker, mqtt_connect_check
from lab.probes import TestProbe

REPO = Path(__file__).resolve().parents[2]
RC_ACCEPTED = 0


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "collector", *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO)


def connect_rc(broker: MosquittoBroker, username: str, password: str) -> int:
    info = broker.info
    return mqtt_connect_check(info.host, info.probe_port, info.tls_context(), username, password)


def wait_rc(broker: MosquittoBroker, username: str, password: str, want_accepted: bool) -> int:
    """Poll the broker (bounded: a reload takes effect within a second or so)."""
    deadline = time.monotonic() + 15
    rc = connect_rc(broker, username, password)
    while (rc == RC_ACCEPTED) != want_accepted and time.monotonic() < deadline:
        time.sleep(0.1)
        rc = connect_rc(broker, username, password)
    return rc


def setup_files(tmp_path: Path, broker: MosquittoBroker) -> tuple[Path, Path, str]:
    url = f"sqlite://{tmp_path}/collector.db"
    helper_file = tmp_path / "probes.jsonl"
    helper_file.write_text("")
    pid_file = tmp_path / "mosquitto.pid"
    pid_file.write_text(f"{broker.pid}\n")
    config = tmp_path / "collector.toml"
    config.write_text(
        f'[store]\nurl = "{url}"\n[revocation]\n'
        f'broker_password_file = "{broker.workdir / "probes.passwd"}"\n'
        f'broker_pid_file = "{pid_file}"\nhelper_probes_file = "{helper_file}"\n')
    return config, helper_file, url


def test_one_command_enrols_everywhere_and_revoke_undoes_it(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker]
) -> None:
    already = TestProbe.new()
    broker = broker_factory(probe_ids=[already.probe_id])
    config, helper_file, url = setup_files(tmp_path, broker)
    passwd = broker.workdir / "probes.passwd"
    mode = passwd.stat().st_mode & 0o777
    probes = [TestProbe.new() for _ in range(3)]
    passwords: dict[str, str] = {}
    for p in probes:
        done = cli("probes", "add", p.probe_id, p.public_b64, "--note", "lab", "--config",
                   str(config))
        assert done.returncode == 0, done.stderr
        m = re.search(rf"username {p.probe_id}\s+password (\S+)", done.stdout)
        assert m, done.stdout
        passwords[p.probe_id] = m.group(1)
        assert "reloaded" in done.stdout and "entry appended" in done.stdout
    for p in probes:  # every one logs in with what the command printed, at once
        assert wait_rc(broker, p.probe_id, passwords[p.probe_id], True) == RC_ACCEPTED
        assert connect_rc(broker, p.probe_id, "wrong") != RC_ACCEPTED
    # the probe enrolled before keeps its login; the collectors' file is another file
    assert connect_rc(broker, already.probe_id, broker.probe(already.probe_id).password) == 0
    assert passwd.stat().st_mode & 0o777 == mode
    keys = parse_probes(helper_file.read_text(), str(helper_file))
    assert {pid: revoked for pid, (_, revoked) in keys.items()} == {
        p.probe_id: False for p in probes}
    store = open_store(url)
    try:
        assert sorted(r.probe_id for r in store.list_probes()) == sorted(
            p.probe_id for p in probes)
    finally:
        store.close()

    # enrolling again is refused and changes nothing (the password printed stays valid)
    before = passwd.read_bytes()
    again = cli("probes", "add", probes[0].probe_id, probes[0].public_b64, "--config",
                str(config))
    assert again.returncode == 2 and "already enrolled" in again.stderr
    assert passwd.read_bytes() == before

    # the mirror: revoke removes the login (broker reloaded) and marks the helper entry
    gone = cli("probes", "revoke", probes[0].probe_id, "--config", str(config))
    assert gone.returncode == 0, gone.stderr
    pid0 = probes[0].probe_id
    assert wait_rc(broker, pid0, passwords[pid0], False) != RC_ACCEPTED
    assert connect_rc(broker, probes[1].probe_id, passwords[probes[1].probe_id]) == 0
    keys = parse_probes(helper_file.read_text(), str(helper_file))
    assert keys[pid0][1] is True and keys[probes[1].probe_id][1] is False


def test_a_failed_broker_reload_leaves_the_store_untouched_and_a_rerun_completes(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker]
) -> None:
    broker = broker_factory()
    config, helper_file, url = setup_files(tmp_path, broker)
    dead_pid = tmp_path / "mosquitto.pid"
    dead_pid.write_text("not-a-pid\n")
    p = TestProbe.new()
    done = cli("probes", "add", p.probe_id, p.public_b64, "--config", str(config))
    assert done.returncode == 2 and "does not hold a PID" in done.stderr
    store = open_store(url)
    try:
        assert store.list_probes() == []  # nothing in the store: the command can be rerun
    finally:
        store.close()
    dead_pid.write_text(f"{broker.pid}\n")
    done = cli("probes", "add", p.probe_id, p.public_b64, "--config", str(config))
    assert done.returncode == 0, done.stderr
    password = re.search(rf"username {p.probe_id}\s+password (\S+)", done.stdout).group(1)  # type: ignore[union-attr]
    assert wait_rc(broker, p.probe_id, password, True) == RC_ACCEPTED
    assert len(helper_file.read_text().splitlines()) == 1  # appended once, not twice


def test_password_file_is_untouched_when_mosquitto_passwd_fails(tmp_path: Path) -> None:
    passwd = tmp_path / "probes.passwd"
    passwd.write_text("someone:$7$hash\n")
    passwd.chmod(0o640)
    with pytest.raises(ConfigError, match="cannot run"):
        set_password_entry(passwd, "probe", "pw", passwd_bin=str(tmp_path / "missing"))
    assert passwd.read_text() == "someone:$7$hash\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probes.passwd"]
    with pytest.raises(ConfigError, match="invalid broker username"):
        set_password_entry(passwd, "a:b", "pw")


def test_helper_entry_is_not_duplicated_nor_revived(tmp_path: Path) -> None:
    p = TestProbe.new()
    f = tmp_path / "probes.jsonl"
    f.write_text(json.dumps({"probe_id": p.probe_id, "public_key": p.public_b64,
                             "revoked": True}))  # no final newline
    assert append_helper_enrolment(f, p.probe_id, p.public_raw) is False
    other = TestProbe.new()
    assert append_helper_enrolment(f, other.probe_id, other.public_raw) is True
    keys = parse_probes(f.read_text(), str(f))
    assert keys[p.probe_id][1] is True and keys[other.probe_id][1] is False
