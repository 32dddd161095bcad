#!/usr/bin/env bash
# Build a Debian 12 chroot for the slow installer test (tests/integration/test_install.py):
#
#   sudo scripts/make-test-chroot.sh /var/tmp/vigil-chroot
#   sudo VIGIL_TEST_CHROOT=/var/tmp/vigil-chroot .venv/bin/pytest -m slow tests/integration/test_install.py
#
# This is the only step that downloads: debootstrap fetches Debian packages, and pip fills a
# wheelhouse (/wheels in the chroot) with the agent's dependencies, so the test itself installs
# offline (VIGIL_PIP_ARGS="--no-index --find-links /wheels").  Run it once; reuse the chroot.
set -euo pipefail
dir="${1:?usage: $0 DIR}"
src="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 2; }
command -v debootstrap >/dev/null || { apt-get update -q; apt-get install -y -q debootstrap; }
if [ ! -x "$dir/usr/bin/python3" ]; then
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,passwd,util-linux \
        bookworm "$dir"
fi
# The wheelhouse: the agent's dependencies plus what pip needs to build the agent itself,
# downloaded by the host's pip (it knows the host's proxy and CA settings) for CPython 3.11,
# bookworm's Python.
mkdir -p "$dir/wheels"
reqs="$dir/wheels/requirements.txt"
python3 - "$src/pyproject.toml" "$reqs" <<'PY'
import sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
open(sys.argv[2], "w").write("\n".join([*deps, "setuptools>=68", "wheel"]) + "\n")
PY
python3 -m pip download --quiet --dest "$dir/wheels" --python-version 3.11 \
    --only-binary=:all: -r "$reqs"
echo "chroot ready: $dir (export VIGIL_TEST_CHROOT=$dir)"
