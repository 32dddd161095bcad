#!/usr/bin/env bash
# Install (or upgrade) a Vigil collector host: broker (Mosquitto), collector and control helper.
#
#   sudo scripts/install-collector.sh                 install or upgrade in place
#   sudo scripts/install-collector.sh --uninstall     remove the software and the units; KEEP
#                                                     config, PKI, broker users and the store
#   sudo scripts/install-collector.sh --uninstall --purge   remove everything, the store included
#
# What it does (each step is skipped when already done, so running it again upgrades the
# software in place and keeps the CA, the keys, the configs, the enrolled probes and the data):
#   1. creates the system user `vigil-collector` (no login shell); the broker runs as
#      `mosquitto` (Debian's package creates it);
#   2. installs mosquitto and openssl from the distribution, then the collector and helper in a
#      virtualenv under /opt/vigil/venv (wrapper /opt/vigil/bin/vigil-collector);
#   3. creates the PKI in /etc/vigil/pki with openssl: an own CA (10 years) and server
#      certificates for the broker and the helper whose subjectAltName is the host name
#      (--hostname, default `hostname -f`) plus 127.0.0.1.  Probes trust /etc/vigil/ca.pem.
#      To use ACME-issued certificates instead, see docs/operator-guide.md ("Certificates");
#   4. renders the broker config (scripts/mosquitto_conf.py, configs/mosquitto/) into
#      /etc/vigil/mosquitto/ with a random password for the collector's broker user; the
#      probes' password file is never rewritten once it exists;
#   5. writes /etc/vigil/collector.toml (store, broker login, [revocation] and [helper]
#      filled in for this layout), never over an existing one;
#   6. installs systemd/vigil-broker.service, vigil-collector.service and vigil-helper.service,
#      enables and (re)starts them when systemd is PID 1.
#
# Environment:
#   VIGIL_ROOT (or DESTDIR)  install under this directory instead of /; every path written into
#                            configs, wrappers and units is rewritten to it, so the result runs
#                            in place as the calling user (used by tests).
#   VIGIL_HOSTNAME           the host name for the certificates (same as --hostname NAME)
#   VIGIL_PYTHON             the Python to use (default python3; must be 3.11+)
#   VIGIL_MODE=venv|system   venv (default): /opt/vigil/venv with pip; system: the given
#                            Python's packages are the dependencies and only Vigil's own code
#                            is copied to /opt/vigil/lib/python (offline installs, tests)
#   VIGIL_PIP_ARGS           extra pip arguments, e.g. "--no-index --find-links /srv/wheels"
#   VIGIL_NO_SYSTEMD=1       do not touch systemd even when it runs
#   VIGIL_APT=0              do not apt-get mosquitto, openssl, python3-venv
#   VIGIL_PROBE_PORT, VIGIL_PROBE_CERT_PORT, VIGIL_COLLECTOR_PORT, VIGIL_HELPER_PORT,
#   VIGIL_API_PORT           ports written into fresh configs (defaults 8883 8884 8885 8443 8080)
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT="${VIGIL_ROOT:-${DESTDIR:-}}"
ROOT="${ROOT%/}"
PY="${VIGIL_PYTHON:-python3}"
MODE="${VIGIL_MODE:-venv}"
SVC_USER="vigil-collector"
BROKER_USER="mosquitto"
PREFIX="/opt/vigil"
ETC="/etc/vigil"
PKI="$ETC/pki"
UNITDIR="/etc/systemd/system"
UNITS="vigil-broker.service vigil-collector.service vigil-helper.service"
HOSTNAME_CERT="${VIGIL_HOSTNAME:-}"

say() { printf '%s\n' "$*"; }
die() { printf 'install-collector: %s\n' "$*" >&2; exit 1; }

uninstall=0
purge=0
while [ $# -gt 0 ]; do
    case "$1" in
        --uninstall) uninstall=1 ;;
        --purge) purge=1 ;;
        --hostname) shift; [ $# -gt 0 ] || die "--hostname needs a name"; HOSTNAME_CERT="$1" ;;
        --hostname=*) HOSTNAME_CERT="${1#--hostname=}" ;;
        -h|--help) sed -n '2,45p' "$0"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done
[ "$purge" -eq 0 ] || [ "$uninstall" -eq 1 ] || die "--purge goes with --uninstall"

as_root=0
[ "$(id -u)" -eq 0 ] && as_root=1
if [ -z "$ROOT" ] && [ "$as_root" -eq 0 ]; then
    die "run as root (sudo $0), or set VIGIL_ROOT=/some/dir for an unprivileged install"
fi
systemd_running() {
    [ -z "$ROOT" ] && [ -z "${VIGIL_NO_SYSTEMD:-}" ] && [ -d /run/systemd/system ]
}
# Users exist and are managed only on a real install (not under VIGIL_ROOT): there the
# services run as the calling user.
real_install() { [ -z "$ROOT" ] && [ "$as_root" -eq 1 ]; }
if ! real_install; then SVC_USER="$(id -un)"; BROKER_USER="$(id -un)"; fi

# ---- uninstall ---------------------------------------------------------------------------------
if [ "$uninstall" -eq 1 ]; then
    for unit in $UNITS; do
        if systemd_running; then systemctl disable --now "$unit" 2>/dev/null || true; fi
        rm -f "$ROOT$UNITDIR/$unit"
    done
    if systemd_running; then systemctl daemon-reload; fi
    rm -f "$ROOT$PREFIX/bin/vigil-collector" "$ROOT$PREFIX/COLLECTOR_VERSION"
    rm -rf "$ROOT$PREFIX/lib/python/collector"
    if [ -L "$ROOT/usr/local/bin/vigil-collector" ]; then rm -f "$ROOT/usr/local/bin/vigil-collector"; fi
    # The venv is shared with a probe agent installed on the same box (install-agent.sh).
    if [ ! -e "$ROOT$PREFIX/bin/vigil-agent" ]; then rm -rf "$ROOT$PREFIX"; fi
    if [ "$purge" -eq 1 ]; then
        rm -rf "$ROOT$PKI" "$ROOT$ETC/mosquitto" "$ROOT$ETC/collector.toml" \
            "$ROOT$ETC/collector.pass" "$ROOT$ETC/ca.pem" \
            "$ROOT/var/lib/vigil-broker" "$ROOT/var/lib/vigil-collector" "$ROOT/var/lib/vigil-helper"
        rmdir "$ROOT$ETC" 2>/dev/null || true
        if real_install && id -u vigil-collector >/dev/null 2>&1; then
            userdel vigil-collector 2>/dev/null || true
        fi
        say "Vigil collector removed with its CA, keys, configs and store (purged)."
    else
        say "Vigil collector software removed. Kept: $ETC (config, PKI, broker users) and"
        say "/var/lib/vigil-{broker,collector,helper} (data). Remove them with: $0 --uninstall --purge"
    fi
    exit 0
fi

# ---- checks ------------------------------------------------------------------------------------
command -v "$PY" >/dev/null 2>&1 || die "$PY not found (apt-get install python3 python3-venv)"
PY="$(command -v "$PY")"
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || die "$PY is older than 3.11 (Debian 12 has 3.11)"
[ -f "$SRC/pyproject.toml" ] && [ -d "$SRC/collector" ] || die "run me from a Vigil checkout ($SRC)"
VERSION="$("$PY" -c 'import re,sys; print(re.search(r"__version__ = \"(.+?)\"", open(sys.argv[1]).read()).group(1))' "$SRC/agent/__init__.py")"
if [ -z "$HOSTNAME_CERT" ]; then
    HOSTNAME_CERT="$(hostname -f 2>/dev/null || hostname 2>/dev/null || echo localhost)"
fi
case "$MODE" in venv|system) ;; *) die "VIGIL_MODE must be venv or system" ;; esac
case "$HOSTNAME_CERT" in
    *[!A-Za-z0-9.-]*|"") die "host name '$HOSTNAME_CERT' is not a DNS name (use --hostname)" ;;
esac

# ---- 1 + 2. distribution packages, service user, software -------------------------------------
if real_install && [ "${VIGIL_APT:-1}" != 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt_missing=()
    for pkg in mosquitto openssl python3-venv; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || apt_missing+=("$pkg")
    done
    if [ "${#apt_missing[@]}" -gt 0 ]; then
        say "installing from the distribution: ${apt_missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends "${apt_missing[@]}" >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null 2>&1 || true
                 apt-get install -y -q --no-install-recommends "${apt_missing[@]}"; } \
            || die "apt-get could not install ${apt_missing[*]}"
    fi
    # Debian starts its own mosquitto on 1883 with /etc/mosquitto: Vigil runs its own unit.
    if systemd_running && systemctl is-enabled --quiet mosquitto.service 2>/dev/null; then
        systemctl disable --now mosquitto.service >/dev/null 2>&1 || true
        say "disabled Debian's default mosquitto.service (vigil-broker.service replaces it)"
    fi
fi
command -v openssl >/dev/null 2>&1 || die "openssl not found (apt-get install openssl)"
MOSQUITTO_PASSWD="${VIGIL_MOSQUITTO_PASSWD:-$(command -v mosquitto_passwd || echo /usr/bin/mosquitto_passwd)}"
[ -x "$MOSQUITTO_PASSWD" ] || die "mosquitto_passwd not found (apt-get install mosquitto)"
if real_install; then
    if ! id -u "$SVC_USER" >/dev/null 2>&1; then
        useradd --system --user-group --home-dir /var/lib/vigil-collector --no-create-home \
            --shell /usr/sbin/nologin --comment "Vigil collector" "$SVC_USER"
        say "created system user $SVC_USER"
    fi
    id -u "$BROKER_USER" >/dev/null 2>&1 || useradd --system --user-group \
        --home-dir /var/lib/vigil-broker --no-create-home --shell /usr/sbin/nologin "$BROKER_USER"
fi
own() { if real_install; then chown "$@"; fi; }

install -d -m 0755 "$ROOT$PREFIX" "$ROOT$PREFIX/bin"
if [ "$MODE" = venv ]; then
    venv="$ROOT$PREFIX/venv"
    if [ ! -x "$venv/bin/python" ]; then
        "$PY" -m venv --system-site-packages "$venv" || die "cannot create a venv (apt-get install python3-venv)"
    fi
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade \
        ${VIGIL_PIP_ARGS:-} "$SRC[collector]" || die "pip could not install the collector (see above)"
    RUNPY="$venv/bin/python"
    cat >"$ROOT$PREFIX/bin/vigil-collector.tmp" <<EOF
#!/bin/sh
exec "$venv/bin/vigil-collector" "\$@"
EOF
else
    # The given Python's own packages are the dependencies; only Vigil's code is copied.
    "$PY" -c 'import aiohttp, aiomqtt, click, cryptography, dns, jsonschema, prometheus_client' \
        2>/dev/null || die "VIGIL_MODE=system: $PY lacks the collector's dependencies (pip install '.[collector]')"
    lib="$ROOT$PREFIX/lib/python"
    install -d -m 0755 "$lib"
    for pkg in agent collector; do
        rm -rf "$lib/$pkg.new"
        cp -RL "$SRC/$pkg" "$lib/$pkg.new"
        find "$lib/$pkg.new" -name __pycache__ -prune -exec rm -rf {} +
        rm -rf "$lib/$pkg"
        mv "$lib/$pkg.new" "$lib/$pkg"
    done
    chmod -R a+rX "$lib"
    RUNPY="$PY"
    cat >"$ROOT$PREFIX/bin/vigil-collector.tmp" <<EOF
#!/bin/sh
PYTHONPATH="$lib\${PYTHONPATH:+:\$PYTHONPATH}" exec "$PY" -m collector "\$@"
EOF
fi
chmod 0755 "$ROOT$PREFIX/bin/vigil-collector.tmp"
mv "$ROOT$PREFIX/bin/vigil-collector.tmp" "$ROOT$PREFIX/bin/vigil-collector"
"$ROOT$PREFIX/bin/vigil-collector" --help >/dev/null || die "the installed collector does not start"
previous="$(cat "$ROOT$PREFIX/COLLECTOR_VERSION" 2>/dev/null || true)"
printf '%s\n' "$VERSION" >"$ROOT$PREFIX/COLLECTOR_VERSION"
install -d -m 0755 "$ROOT/usr/local/bin"
ln -sfn "$ROOT$PREFIX/bin/vigil-collector" "$ROOT/usr/local/bin/vigil-collector"
install -d -m 0755 "$ROOT$PREFIX/share/doc"
for doc in operator-guide.md operations.md threat-model.md; do
    [ -f "$SRC/docs/$doc" ] && install -m 0644 "$SRC/docs/$doc" "$ROOT$PREFIX/share/doc/$doc"
done
if [ -z "$previous" ]; then say "installed vigil-collector $VERSION in $ROOT$PREFIX"
elif [ "$previous" = "$VERSION" ]; then say "vigil-collector $VERSION reinstalled in $ROOT$PREFIX"
else say "upgraded vigil-collector $previous -> $VERSION in $ROOT$PREFIX"; fi

# ---- 3. PKI: an own CA, broker and helper server certificates ----------------------------------
install -d -m 0755 "$ROOT$ETC"
install -d -m 0750 "$ROOT$PKI"
pki="$ROOT$PKI"
umask_old="$(umask)"; umask 077
if [ ! -s "$pki/ca.key" ] || [ ! -s "$pki/ca.pem" ]; then
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$pki/ca.key" 2>/dev/null
    openssl req -x509 -new -key "$pki/ca.key" -sha256 -days 3650 -out "$pki/ca.pem" \
        -subj "/O=Vigil/CN=Vigil collector CA $HOSTNAME_CERT" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    chmod 0644 "$pki/ca.pem"
    say "created the CA $PKI/ca.pem (its key $PKI/ca.key never leaves this host)"
fi
issue() { # name: server certificate signed by the CA, SAN = host name + loopback
    local name="$1"
    [ -s "$pki/$name.key" ] && [ -s "$pki/$name.pem" ] && return 0
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$pki/$name.key" 2>/dev/null
    openssl req -new -key "$pki/$name.key" -subj "/O=Vigil/CN=$HOSTNAME_CERT" -out "$pki/$name.csr" 2>/dev/null
    printf 'subjectAltName=DNS:%s,DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' \
        "$HOSTNAME_CERT" >"$pki/$name.ext"
    openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" \
        -CAcreateserial -days 825 -sha256 -extfile "$pki/$name.ext" -out "$pki/$name.pem" 2>/dev/null
    rm -f "$pki/$name.csr" "$pki/$name.ext"
    chmod 0644 "$pki/$name.pem"
    say "issued $PKI/$name.pem for $HOSTNAME_CERT"
}
issue broker
issue helper
umask "$umask_old"
chmod 0640 "$pki/broker.key" "$pki/helper.key"
own "root:$BROKER_USER" "$pki/broker.key"
own "root:$SVC_USER" "$pki/helper.key"
own "root:$SVC_USER" "$pki"
chmod 0751 "$pki"
install -m 0644 "$pki/ca.pem" "$ROOT$ETC/ca.pem"

# ---- 4. broker config --------------------------------------------------------------------------
install -d -m 0755 "$ROOT$ETC/mosquitto"
install -d -m 0700 "$ROOT/var/lib/vigil-broker"
own "$BROKER_USER:$BROKER_USER" "$ROOT/var/lib/vigil-broker"
if [ ! -s "$ROOT$ETC/collector.pass" ]; then
    (umask 077; "$PY" -c 'import secrets; print(secrets.token_urlsafe(24))' >"$ROOT$ETC/collector.pass")
fi
chmod 0640 "$ROOT$ETC/collector.pass"
own "root:$SVC_USER" "$ROOT$ETC/collector.pass"
if systemd_running || real_install; then broker_log=stderr; else broker_log="file $ROOT/var/lib/vigil-broker/mosquitto.log"; fi
pw_group=()
real_install && pw_group=(--password-group "$BROKER_USER")
(cd "$SRC" && VIGIL_MOSQUITTO_PASSWD="$MOSQUITTO_PASSWD" PYTHONPATH="$SRC" "$RUNPY" -m scripts.mosquitto_conf \
    --dir "$ROOT$ETC/mosquitto" --data-dir "$ROOT/var/lib/vigil-broker" \
    --ca-file "$pki/ca.pem" --cert-file "$pki/broker.pem" --key-file "$pki/broker.key" \
    --probe-port "${VIGIL_PROBE_PORT:-8883}" --probe-cert-port "${VIGIL_PROBE_CERT_PORT:-8884}" \
    --collector-port "${VIGIL_COLLECTOR_PORT:-8885}" --user "$BROKER_USER" \
    --collector "vigil-collector=$(cat "$ROOT$ETC/collector.pass")" --keep-users \
    --pid-file "$ROOT/run/vigil-broker/mosquitto.pid" --log-dest "$broker_log" \
    "${pw_group[@]}" >/dev/null) || die "cannot render the broker config"
install -d -m 0755 "$ROOT/run/vigil-broker"
own "$BROKER_USER:$BROKER_USER" "$ROOT/run/vigil-broker"
say "broker config in $ETC/mosquitto/ (probes: TLS ${VIGIL_PROBE_PORT:-8883} password, ${VIGIL_PROBE_CERT_PORT:-8884} certificate)"

# ---- 5. collector.toml (never overwritten) -----------------------------------------------------
for d in vigil-collector vigil-helper; do
    install -d -m 0750 "$ROOT/var/lib/$d"
    own "$SVC_USER:$SVC_USER" "$ROOT/var/lib/$d"
done
probes_file="$ROOT/var/lib/vigil-helper/probes.jsonl"
if [ ! -e "$probes_file" ]; then
    : >"$probes_file"
    chmod 0640 "$probes_file"
    own "$SVC_USER:$SVC_USER" "$probes_file"
fi
conf="$ROOT$ETC/collector.toml"
if [ ! -e "$conf" ]; then
    tmp="$conf.tmp.$$"
    sed -e "s|^port = 8885 |port = ${VIGIL_COLLECTOR_PORT:-8885} |" \
        -e "s|^ca_file = \"/etc/vigil/ca.pem\"|ca_file = \"$ROOT$ETC/ca.pem\"|" \
        -e "s|^password_file = \"/etc/vigil/collector.pass\"|password_file = \"$ROOT$ETC/collector.pass\"|" \
        -e "s|^url = \"sqlite:///var/lib/vigil/collector.db\"|url = \"sqlite://$ROOT/var/lib/vigil-collector/collector.db\"|" \
        -e "s|^port = 8080|port = ${VIGIL_API_PORT:-8080}|" \
        -e "s|^# broker_password_file = .*|broker_password_file = \"$ROOT$ETC/mosquitto/probes.passwd\"|" \
        -e "s|^# broker_pid_file = .*|broker_pid_file = \"$ROOT/run/vigil-broker/mosquitto.pid\"|" \
        -e "s|^# helper_probes_file = .*|helper_probes_file = \"$probes_file\"|" \
        "$SRC/configs/collector.example.toml" >"$tmp"
    cat >>"$tmp" <<EOF

[helper]
host = "0.0.0.0"
port = ${VIGIL_HELPER_PORT:-8443}
tls_cert = "$ROOT$PKI/helper.pem"
tls_key = "$ROOT$PKI/helper.key"
mode = "signed"
probes_file = "$probes_file"
EOF
    chmod 0640 "$tmp"
    own "root:$SVC_USER" "$tmp"
    mv "$tmp" "$conf"
    say "wrote $conf"
else
    say "kept existing $conf"
fi
as_service() { if real_install; then runuser -u "$SVC_USER" -- "$@"; else "$@"; fi; }
as_service "$ROOT$PREFIX/bin/vigil-collector" probes list --config "$conf" >/dev/null \
    || die "$conf does not load (see above)"

# ---- 6. systemd --------------------------------------------------------------------------------
install -d -m 0755 "$ROOT$UNITDIR"
for unit in $UNITS; do
    tmp="$ROOT$UNITDIR/.$unit.tmp"
    sed -e "s|/opt/vigil/|$ROOT$PREFIX/|g" -e "s|/etc/vigil/|$ROOT$ETC/|g" \
        -e "s|^User=vigil-collector\$|User=$SVC_USER|" -e "s|^Group=vigil-collector\$|Group=$SVC_USER|" \
        -e "s|^User=mosquitto\$|User=$BROKER_USER|" -e "s|^Group=mosquitto\$|Group=$BROKER_USER|" \
        "$SRC/systemd/$unit" >"$tmp"
    chmod 0644 "$tmp"
    mv "$tmp" "$ROOT$UNITDIR/$unit"
done
if systemd_running; then
    systemctl daemon-reload
    for unit in $UNITS; do
        systemctl enable "$unit" >/dev/null 2>&1
        if systemctl is-active --quiet "$unit"; then systemctl restart "$unit"; else systemctl start "$unit" \
            || say "warning: $unit did not start; see: journalctl -u $unit"; fi
    done
    say "enabled and started: $UNITS"
else
    say "systemd is not running here: the units are in $ROOT$UNITDIR; start the services by hand"
    say "(docs/operator-guide.md, \"Without systemd\")."
fi
say ""
say "Next: enrol a probe with"
say "    vigil-collector probes add <probe_id> <public_key> --config $ETC/collector.toml"
say "and give its operator $ETC/ca.pem, the broker password it prints, and the helper's address."
