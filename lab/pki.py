"""Certificates for one lab run: a trusted lab CA and an untrusted censor CA.

The lab CA signs the sites' certificate (every scenario name, plus a wildcard for scale mode);
the agent and the helper trust it through ``--ca-file``.  The censor CA signs the blockpage
server's certificate for the very same names, as a TLS-intercepting middlebox would: the name
matches but nobody trusts the issuer.  Keys are ECDSA (fast to make and to use).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import trustme


@dataclass(frozen=True, slots=True)
class LabPKI:
    ca_file: Path  # trust anchor for agent and helper
    site_cert: Path  # leaf + chain
    site_key: Path
    censor_ca_file: Path  # NOT given to anyone; self-checks use it to prove the MITM
    blockpage_cert: Path
    blockpage_key: Path
    # host -> (leaf + chain, key) for sites whose certificate is broken on purpose
    broken: dict[str, tuple[Path, Path]] = field(default_factory=dict)


# broken-certificate site kinds, as a server misconfigured by its owner would present them
BROKEN_CERT_KINDS = frozenset({"expired-cert", "wrong-name-cert", "untrusted-cert"})


def make_pki(directory: Path, names: list[str],
             broken: Mapping[str, str] | None = None) -> LabPKI:
    """``broken`` maps a host to one of ``BROKEN_CERT_KINDS``: that host gets its own leaf."""
    directory.mkdir(parents=True, exist_ok=True)
    lab_ca = trustme.CA(organization_name="Vigil Lab CA")
    censor_ca = trustme.CA(organization_name="National Filtering Authority (lab censor)")
    hosts = sorted(set(names)) or ["lab.test"]
    site = lab_ca.issue_cert(*hosts, common_name="vigil lab sites")
    block = censor_ca.issue_cert(*hosts, "blockpage.lab.test", common_name="blockpage.lab.test")
    pki = LabPKI(
        ca_file=directory / "lab-ca.pem",
        site_cert=directory / "site-cert.pem",
        site_key=directory / "site-key.pem",
        censor_ca_file=directory / "censor-ca.pem",
        blockpage_cert=directory / "blockpage-cert.pem",
        blockpage_key=directory / "blockpage-key.pem",
    )
    lab_ca.cert_pem.write_to_path(str(pki.ca_file))
    censor_ca.cert_pem.write_to_path(str(pki.censor_ca_file))
    _write_chain(site, pki.site_cert)
    site.private_key_pem.write_to_path(str(pki.site_key))
    _write_chain(block, pki.blockpage_cert)
    block.private_key_pem.write_to_path(str(pki.blockpage_key))
    for p in (pki.site_key, pki.blockpage_key):
        p.chmod(0o600)
    stranger_ca = trustme.CA(organization_name="Unknown Issuer (lab)")  # nobody trusts it
    for i, (host, kind) in enumerate(sorted((broken or {}).items())):
        if kind == "expired-cert":
            now = datetime.datetime.now(datetime.UTC)
            leaf = lab_ca.issue_cert(host, not_before=now - datetime.timedelta(days=400),
                                     not_after=now - datetime.timedelta(days=30))
        elif kind == "wrong-name-cert":
            leaf = lab_ca.issue_cert(f"other-name-{i}.lab.test")
        elif kind == "untrusted-cert":
            leaf = stranger_ca.issue_cert(host)
        else:
            raise ValueError(f"unknown broken certificate kind {kind!r}")
        cert_path, key_path = directory / f"broken-{i}-cert.pem", directory / f"broken-{i}-key.pem"
        _write_chain(leaf, cert_path)
        leaf.private_key_pem.write_to_path(str(key_path))
        key_path.chmod(0o600)
        pki.broken[host] = (cert_path, key_path)
    return pki


def _write_chain(leaf: trustme.LeafCert, path: Path) -> None:
    path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
