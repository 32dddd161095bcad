"""Generate the DSSE test vectors of docs/envelope-spec.md into tests/data/envelope_vectors.json.

Run: ``.venv/bin/python -m scripts.make_envelope_vectors [--check] [--markdown]``

Two producers sign the same record with the same published key (RFC 8032 section 7.1,
TEST 1):

* ``agent.wire.envelope`` (Vigil's own implementation), and
* securesystemslib's ``dsse.Envelope`` + ``CryptoSigner`` (an independent DSSE
  implementation: its own PAE, base64 and envelope serialisation).

Ed25519 is deterministic, so both must produce the same signature over the same PAE bytes;
the script refuses to write vectors when they disagree.  A third vector is signed by
securesystemslib over a *differently serialised* record (indented, unsorted), to show that
verifiers check the bytes received and never re-encode.

``--check`` regenerates in memory and exits 1 when the committed file differs (a change in the
wire format must be deliberate).  ``--markdown`` prints the tables pasted into the spec.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.wire import envelope as wire

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "envelope_vectors.json"

# RFC 8032, section 7.1, TEST 1 (https://www.rfc-editor.org/rfc/rfc8032#section-7.1).
RFC8032_SEED_HEX = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
RFC8032_PUBLIC_HEX = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"

# DSSE protocol.md's own PAE example, so the PAE rule can be checked on its own.
DSSE_SPEC_PAE = {
    "payload_type": "http://example.com/HelloWorld",
    "payload_utf8": "hello world",
    "pae_utf8": "DSSEv1 29 http://example.com/HelloWorld 11 hello world",
}


def test_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(RFC8032_SEED_HEX))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def vector_record(probe_id: str) -> dict[str, Any]:
    """A schema-valid record with non-ASCII text, so PAE lengths are bytes, not characters."""
    return {
        "measurement_id": "01910b8c-3c00-7abc-8def-0123456789ab",
        "test_name": "web_connectivity",
        "test_version": "0.1.0",
        "input": "https://www.example.com/",
        "category_code": "NEWS",
        "probe_id": probe_id,
        "probe_asn": "AS12880",
        "probe_cc": "IR",
        "probe_network_name": "Iran Telecommunication Company PJS (مخابرات)",
        "resolver_asn": "AS12880",
        "measurement_start_time": "2024-08-01T12:00:00Z",
        "test_runtime": 1.25,
        "software_name": "vigil-agent",
        "software_version": "0.1.0",
        "test_keys": {"dns": {"failure": "dns_nxdomain_error", "answers": []}},
        "verdict": {"status": "blocked", "blocking": "dns", "reason": "dns.nxdomain",
                    "confirmed": False},
        "annotations": {},
    }


def securesystemslib_envelope(payload: bytes, key: Ed25519PrivateKey, keyid: str) -> tuple[
    bytes, bytes, bytes, str
]:
    """(envelope bytes, PAE bytes, raw signature, producer) made by securesystemslib alone."""
    import securesystemslib
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer import CryptoSigner, SSlibKey  # type: ignore[attr-defined]

    public = SSlibKey.from_crypto(key.public_key(), keyid=keyid)
    signer = CryptoSigner(key, public)
    env = Envelope(payload=payload, payload_type=wire.PAYLOAD_TYPE, signatures={})
    sig = env.sign(signer)
    # Its own serialisation: to_dict() and json.dumps with Python's default separators.
    data = json.dumps(env.to_dict()).encode("utf-8")
    producer = f"securesystemslib {securesystemslib.__version__} dsse.Envelope + CryptoSigner"
    return data, env.pae(), bytes.fromhex(sig.signature), producer


def build() -> dict[str, Any]:
    key = test_key()
    raw_pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    if raw_pub.hex() != RFC8032_PUBLIC_HEX:
        raise SystemExit("cryptography derived a public key unlike RFC 8032's: refusing")
    probe_id = wire.probe_id_for(raw_pub)

    record = vector_record(probe_id)
    wire.validate_record(record)
    payload = wire.encode_record(record)
    pae = wire.pae(wire.PAYLOAD_TYPE, payload)
    ours = wire.sign_envelope(payload, key, probe_id)
    our_sig = wire.parse_envelope(ours).signatures[0][1]

    ss_env, ss_pae, ss_sig, producer = securesystemslib_envelope(payload, key, probe_id)
    if ss_pae != pae or ss_sig != our_sig:
        raise SystemExit("securesystemslib and agent.wire.envelope disagree on PAE or signature")

    other = dict(record, measurement_id="01910b8c-3c01-7def-9abc-ba9876543210",
                 input="https://www.example.org/",
                 verdict={"status": "ok", "blocking": None, "reason": "", "confirmed": False})
    other_payload = json.dumps(other, indent=2, ensure_ascii=False).encode("utf-8")
    ss_env2, ss_pae2, ss_sig2, _ = securesystemslib_envelope(other_payload, key, probe_id)

    def vector(name: str, producer: str, payload: bytes, pae: bytes, sig: bytes,
               envelope: bytes) -> dict[str, Any]:
        return {
            "name": name,
            "producer": producer,
            "payload_type": wire.PAYLOAD_TYPE,
            "payload_b64": b64(payload),
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
            "pae_b64": b64(pae),
            "pae_sha256": hashlib.sha256(pae).hexdigest(),
            "sig_b64": b64(sig),
            "keyid": probe_id,
            "envelope": envelope.decode("utf-8"),
        }

    return {
        "description": "Vigil DSSE envelope test vectors (docs/envelope-spec.md). Generated by "
                       "scripts/make_envelope_vectors.py; do not edit by hand.",
        "key": {
            "source": "RFC 8032 section 7.1 TEST 1 (published test key: never use it for real)",
            "seed_hex": RFC8032_SEED_HEX,
            "public_key_hex": RFC8032_PUBLIC_HEX,
            "public_key_b64": b64(raw_pub),
            "probe_id": probe_id,
            "probe_id_rule": "base32(SHA-256(raw public key)[:16]), lower case, no padding",
            "public_key_sha256_hex": hashlib.sha256(raw_pub).hexdigest(),
        },
        "pae_dsse_spec_example": DSSE_SPEC_PAE,
        "record": record,
        "vectors": [
            vector("record-agent-wire", "agent.wire (Vigil)", payload, pae, our_sig, ours),
            vector("record-securesystemslib", producer, payload, ss_pae, ss_sig, ss_env),
            vector("pretty-record-securesystemslib", producer, other_payload, ss_pae2, ss_sig2,
                   ss_env2),
        ],
    }


def markdown(data: dict[str, Any]) -> str:
    lines = [f"key: `{data['key']['seed_hex']}` (seed), probe id `{data['key']['probe_id']}`", ""]
    for v in data["vectors"]:
        lines += [f"### {v['name']}", "", f"producer: {v['producer']}", "",
                  f"- payload SHA-256: `{v['payload_sha256']}`",
                  f"- PAE SHA-256: `{v['pae_sha256']}`",
                  f"- sig: `{v['sig_b64']}`", "", "```json", v["envelope"], "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="DSSE test vectors for docs/envelope-spec.md")
    p.add_argument("--check", action="store_true", help="compare with the committed file")
    p.add_argument("--markdown", action="store_true", help="print the spec's vector section")
    args = p.parse_args(argv)
    data = build()
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if args.check:
        if OUT.read_text("utf-8") != text:
            print(f"{OUT} is out of date (wire format changed?)", file=sys.stderr)
            return 1
        print(f"{OUT} is up to date")
    else:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(text, "utf-8")
        print(f"wrote {OUT}")
    if args.markdown:
        print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
