"""The probe's Ed25519 identity: created once, kept in the state directory, never logged.

The private key is stored as unencrypted PKCS#8 PEM in ``<state>/probe.key`` with mode 0600;
the probe id is derived from the public key (agent.wire.envelope.probe_id_for), so it cannot be
claimed
without the key.
"""

from __future__ import annotations

import base64
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from agent.errors import IdentityError
from agent.wire.envelope import probe_id_for, raw_public_key

KEY_FILE = "probe.key"


@dataclass(frozen=True)
class Identity:
    private_key: Ed25519PrivateKey
    probe_id: str

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def public_key_b64(self) -> str:
        return base64.b64encode(raw_public_key(self.public_key)).decode("ascii")

    def __repr__(self) -> str:  # never print key material
        return f"Identity(probe_id={self.probe_id!r})"


def key_path(state_dir: Path) -> Path:
    return state_dir / KEY_FILE


def load(state_dir: Path) -> Identity:
    """Open the key once (no symlink followed), check the open file's mode, read that file."""
    path = key_path(state_dir)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise IdentityError(f"no probe key at {path}: run `vigil-agent init` first") from None
    except OSError as exc:  # ELOOP: a symlink where the key should be
        raise IdentityError(f"cannot open probe key {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise IdentityError(f"{path} is not a regular file")
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise IdentityError(
                f"{path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}); "
                f"fix with: chmod 600 {path}"
            )
        try:
            pem = fh.read(65_536)
        except OSError as exc:
            raise IdentityError(f"cannot read probe key {path}: {exc.strerror}") from None
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"cannot read probe key {path}: {exc.__class__.__name__}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"{path} is not an Ed25519 key")
    return Identity(key, probe_id_for(key.public_key()))


def create(state_dir: Path) -> Identity:
    """Create a new key; refuses to overwrite an existing one (that would orphan the probe)."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = key_path(state_dir)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    tmp = path.with_suffix(".tmp")
    try:
        # A leftover (or planted) temp file or symlink is removed, never written through:
        # O_EXCL|O_NOFOLLOW create a new file, with its final mode from the start.
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        # link() fails if the key appeared meanwhile: never replace an existing identity.
        os.link(tmp, path)
    except FileExistsError:
        raise IdentityError(f"{path} already exists; refusing to replace the probe's key") from None
    except OSError as exc:
        raise IdentityError(f"cannot write probe key {path}: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(state_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return Identity(key, probe_id_for(key.public_key()))


def load_or_create(state_dir: Path) -> tuple[Identity, bool]:
    """Return (identity, created)."""
    if key_path(state_dir).exists():
        return load(state_dir), False
    return create(state_dir), True


def enrolment_command(probe_id: str, public_key_b64: str) -> str:
    """The one line the collector's operator runs to enrol this probe."""
    return f"vigil-collector probes add {probe_id} {public_key_b64}"
