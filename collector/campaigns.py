"""Operator side of signed campaigns: the operator key, building, signing and publishing.

The payload format and its checks live in ``agent.wire.commands`` (the wire contract, shared with
the agent, which verifies what this module signs).  The operator key is an Ed25519 key kept as
PKCS#8 PEM with mode 0600, like a probe key; its public half, base64, goes into every agent's
config (``[campaigns] operator_keys``).

Commands are published retained with QoS 1: a probe that is offline on election morning gets
the campaign when it reconnects.  A topic keeps one retained message, so the latest command on a
topic is what late-connecting probes see; probes that were online keep every campaign they
accepted (the agent persists them).
"""

from __future__ import annotations

import base64
import os
import ssl
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from agent.errors import IdentityError, PublishError, UsageError
from agent.wire.commands import (
    COMMAND_PAYLOAD_TYPE,
    MAX_COMMAND_BYTES,
    Audience,
    CampaignTest,
    Command,
    CommandError,
    key_id_for,
    parse_command,
)
from agent.wire.envelope import encode_record, parse_envelope, raw_public_key, sign_envelope, uuid7
from agent.wire.record import Target
from agent.wire.topics import at_broker, commands_topic, country_topic


# ---- operator key ------------------------------------------------------------------------------
def create_operator_key(path: Path) -> Ed25519PrivateKey:
    """Create the operator key; refuses to replace one (every agent trusts its public half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise IdentityError(f"{path} exists; refusing to replace the operator key") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())
    return key


def load_operator_key(path: Path) -> Ed25519PrivateKey:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise IdentityError(
            f"no operator key at {path}: create one with `vigil-collector campaign keygen`"
        ) from None
    if mode & 0o077:
        raise IdentityError(f"{path} is readable by others (mode {mode:o}); chmod 600 {path}")
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise IdentityError(f"cannot read operator key {path}: {exc.__class__.__name__}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"{path} is not an Ed25519 key")
    return key


def public_key_b64(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(raw_public_key(key.public_key())).decode("ascii")


# ---- building and signing ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CampaignSpec:
    """What the operator asks for; turned into a Command by build_campaign()."""

    audience: Audience
    urls: Sequence[tuple[str, str | None]]  # (url, category_code)
    interval: float = 600.0
    test_name: str = "web_connectivity"
    start: datetime | None = None  # default: now
    end: datetime | None = None  # default: start + 24 h
    note: str = ""
    extra_tests: Sequence[str] = ()  # other tests to run at the same interval, without inputs


def build_campaign(spec: CampaignSpec, now: datetime) -> Command:
    """A campaign command, checked by the same parser the agent uses (so it will be accepted)."""
    start = spec.start or now
    end = spec.end or start + timedelta(hours=24)
    tests = [
        CampaignTest(
            test_name=spec.test_name,
            interval=spec.interval,
            inputs=tuple(Target(input=u, category_code=c) for u, c in spec.urls),
        )
    ]
    tests += [
        CampaignTest(test_name=t, interval=spec.interval, inputs=()) for t in spec.extra_tests
    ]
    cmd = Command(
        kind="campaign",
        command_id=uuid7(int(now.timestamp() * 1000)),
        issued_at=now,
        not_before=start,
        not_after=end,
        audience=spec.audience,
        note=spec.note,
        tests=tuple(tests),
    )
    return _checked(cmd)


def build_cancel(
    audience: Audience, campaign_id: str, now: datetime, valid_for: timedelta
) -> Command:
    cmd = Command(
        kind="cancel",
        command_id=uuid7(int(now.timestamp() * 1000)),
        issued_at=now,
        not_before=now,
        not_after=now + valid_for,
        audience=audience,
        campaign_id=campaign_id,
    )
    return _checked(cmd)


def _checked(cmd: Command) -> Command:
    try:
        return parse_command(encode_record(cmd.to_json()))
    except CommandError as exc:
        raise UsageError(f"campaign not acceptable to agents: {exc}") from None


def sign_command(cmd: Command, key: Ed25519PrivateKey) -> bytes:
    envelope = sign_envelope(
        encode_record(cmd.to_json()), key, key_id_for(key.public_key()), COMMAND_PAYLOAD_TYPE
    )
    if len(envelope) > MAX_COMMAND_BYTES:
        raise UsageError(
            f"signed campaign is {len(envelope)} bytes, over the agents' {MAX_COMMAND_BYTES} "
            "limit: split the URL list"
        )
    return envelope


def topic_for(audience: Audience) -> str:
    """Where a collector publishes for ``audience``: the probe's name under the probe mount."""
    if audience.probe_id is not None:
        return at_broker(commands_topic(audience.probe_id))
    assert audience.cc is not None  # Audience is either a probe or a country (parser enforces)
    return at_broker(country_topic(audience.cc))


def read_signed(data: bytes) -> Command:
    """Parse a signed command file to find its topic (the signature is the agents' to check)."""
    env = parse_envelope(data, max_bytes=MAX_COMMAND_BYTES)
    if env.payload_type != COMMAND_PAYLOAD_TYPE:
        raise UsageError("this file is not a signed Vigil command")
    try:
        return parse_command(env.payload)
    except CommandError as exc:
        raise UsageError(f"bad command file: {exc}") from None


# ---- publishing --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BrokerTarget:
    host: str
    port: int
    username: str
    password: str
    ca_file: Path | None = None
    timeout: float = 15.0


async def publish_command(envelope: bytes, topic: str, broker: BrokerTarget) -> None:
    """Publish retained with QoS 1 and wait for the broker's acknowledgement."""
    import asyncio

    import aiomqtt

    ctx = ssl.create_default_context(cafile=str(broker.ca_file) if broker.ca_file else None)
    try:
        async with asyncio.timeout(broker.timeout):
            async with aiomqtt.Client(
                broker.host,
                broker.port,
                username=broker.username,
                password=broker.password,
                tls_context=ctx,
                identifier=f"vigil-campaign-{uuid7()[-12:]}",
            ) as client:
                await client.publish(topic, envelope, qos=1, retain=True)
    except TimeoutError:
        raise PublishError(f"broker {broker.host}:{broker.port} did not answer in time") from None
    except aiomqtt.MqttError as exc:
        raise PublishError(f"publishing to {broker.host}:{broker.port} failed: {exc}") from None
