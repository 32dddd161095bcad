#!/usr/bin/env bash
# Install the Debian packages Vigil's lab, broker and tests need, only those missing.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have mosquitto || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
have mosquitto_passwd || need+=(mosquitto-clients)
[ -x /usr/sbin/nft ] || have nft || need+=(nftables)
have tcpdump || [ -x /usr/bin/tcpdump ] || need+=(tcpdump)
[ -x /usr/sbin/ip ] || have ip || need+=(iproute2)
have openssl || need+=(openssl)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
# systemd-analyze verifies the shipped units (tests/integration/test_systemd_units.py).
have systemd-analyze || [ -x /usr/bin/systemd-analyze ] || need+=(systemd)
if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing packages: ${need[*]} (run as root or: sudo apt-get install ${need[*]})" >&2
        exit 2
    fi
    echo "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q || true
    apt-get install -y -q --no-install-recommends "${need[@]}"
fi
