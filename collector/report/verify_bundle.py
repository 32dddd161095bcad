#!/usr/bin/env python3
"""Re-verify a Vigil evidence bundle offline: ``python3 verify.py [BUNDLE_DIR]``.

Needs only Python 3.9+ and the ``cryptography`` package (``pip install cryptography``); it
trusts neither the collector that wrote the bundle nor its database.  It checks that

1. every file listed in MANIFEST.sha256 has the SHA-256 written there;
2. every public key in probes.json hashes to its probe id
   (probe id = lower-case unpadded base32 of the first 16 bytes of SHA-256(raw key));
3. every envelope in envelopes.jsonl carries an Ed25519 signature, by the key of the probe
   it names, over the DSSE pre-authentication encoding of its payload type and payload;
4. every claim in cited.json (measurement id, probe, time, country, network, input,
   verdict) is what the signed record itself says.

It prints one line per failure and a summary, and exits 0 only if everything verified.
This file is copied verbatim into each bundle; it imports nothing from Vigil.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
except ImportError:  # pragma: no cover - depends on the reader's machine
    sys.exit("verify.py needs the cryptography package: pip install cryptography")

CLAIMED = ("probe_id", "measurement_start_time", "probe_cc", "probe_asn", "input",
           "test_name")
CLAIMED_VERDICT = ("status", "blocking", "reason", "confirmed")


def probe_id_for(raw_key: bytes) -> str:
    digest = hashlib.sha256(raw_key).digest()[:16]
    return base64.b32encode(digest).decode("ascii").rstrip("=").lower()


def pae(payload_type: str, payload: bytes) -> bytes:
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def check_manifest(root: Path) -> list[str]:
    errors = []
    manifest = root / "MANIFEST.sha256"
    if not manifest.is_file():
        return ["MANIFEST.sha256 is missing"]
    for entry in manifest.read_text("utf-8").splitlines():
        if not entry.strip():
            continue
        digest, _, name = entry.partition("  ")
        path = root / name
        if not path.is_file():
            errors.append(f"{name}: listed in MANIFEST.sha256 but missing")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            errors.append(f"{name}: SHA-256 differs from MANIFEST.sha256")
    return errors


def load_keys(root: Path) -> tuple[dict[str, bytes], list[str]]:
    keys: dict[str, bytes] = {}
    errors = []
    probes = json.loads((root / "probes.json").read_text("utf-8"))
    for p in probes["probes"]:
        raw = base64.b64decode(p["public_key"])
        if probe_id_for(raw) != p["probe_id"]:
            errors.append(f"probe {p['probe_id']}: public key does not hash to this id")
            continue
        keys[p["probe_id"]] = raw
    return keys, errors


def verify(root: Path) -> tuple[int, list[str]]:
    errors = check_manifest(root)
    keys, key_errors = load_keys(root)
    errors += key_errors
    records: dict[str, dict[str, Any]] = {}
    verified = 0
    with open(root / "envelopes.jsonl", "rb") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"envelopes.jsonl:{number}"
            try:
                item = json.loads(line)
                env = item["envelope"]
                payload = base64.b64decode(env["payload"], validate=True)
                sig = env["signatures"][0]
                keyid, signature = sig["keyid"], base64.b64decode(sig["sig"], validate=True)
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                errors.append(f"{where}: not an export line with an envelope ({exc})")
                continue
            key = keys.get(keyid)
            if key is None:
                errors.append(f"{where}: signed by {keyid}, whose key is not in probes.json")
                continue
            try:
                Ed25519PublicKey.from_public_bytes(key).verify(
                    signature, pae(env["payloadType"], payload))
            except InvalidSignature:
                errors.append(f"{where}: BAD SIGNATURE")
                continue
            record = json.loads(payload)
            if record.get("probe_id") != keyid or record.get("measurement_id") != item.get(
                    "measurement_id"):
                errors.append(f"{where}: record names another probe or measurement id")
                continue
            records[record["measurement_id"]] = record
            verified += 1
    cited = json.loads((root / "cited.json").read_text("utf-8"))
    for claim in cited["measurements"]:
        mid = claim["measurement_id"]
        record = records.get(mid)
        if record is None:
            errors.append(f"cited {mid}: no verified envelope for it")
            continue
        for name in CLAIMED:
            if claim.get(name) != record.get(name):
                errors.append(f"cited {mid}: {name} is {record.get(name)!r} in the signed "
                              f"record, not {claim.get(name)!r}")
        verdict = record.get("verdict") or {}
        for name in CLAIMED_VERDICT:
            if claim.get(name) != verdict.get(name):
                errors.append(f"cited {mid}: verdict {name} is {verdict.get(name)!r} in the "
                              f"signed record, not {claim.get(name)!r}")
    return verified, errors


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent
    try:
        verified, errors = verify(root)
    except (OSError, ValueError, KeyError) as exc:
        print(f"cannot read the bundle in {root}: {exc}")
        return 2
    for e in errors:
        print(e)
    print(f"{verified} envelope(s) verified, {len(errors)} problem(s)")
    return 0 if not errors and verified else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
