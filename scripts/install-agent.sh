#!/usr/bin/env bash
# Install (or upgrade) the Vigil probe agent on a Raspberry Pi or any Debian box.
#
#   sudo scripts/install-agent.sh              install or upgrade in place
#   sudo scripts/install-agent.sh --accept-consent   the same, for scripted installs: you have
#                                              read docs/consent.md and accept it (else a
#                                              terminal asks; without either the service is
#                                              installed but not started)
#   sudo scripts/install-agent.sh --uninstall  remove the software and the unit, KEEP key/config/outbox
#   sudo scripts/install-agent.sh --uninstall --purge   remove everything, the key included
#
# What it does (each step is skipped when already done, so running it again upgrades in place
# and keeps the key, the config and the outbox):
#   1. creates the system user `vigil` (no login shell, home /var/lib/vigil);
#   2. installs the agent without compiling anything: the compiled dependencies come from the
#      distribution (apt: python3-cryptography, python3-aiohttp... on Debian 12 / Raspberry Pi
#      OS bookworm, any Pi), then a virtualenv under /opt/vigil/venv that sees them (default)
#      and gets the rest as pure-Python wheels, or with VIGIL_MODE=system the distribution's
#      Python alone, with the agent's own pure-Python code copied to /opt/vigil/lib;
#   3. writes /etc/vigil/agent.toml from configs/agent.example.toml, never over an existing one;
#   4. creates the probe key (`vigil-agent init`, as the vigil user) and prints the enrolment
#      request for the collector's operator;
#   5. shows what the probe measures, publishes and risks (docs/consent.md) and asks you to
#      accept it (or takes --accept-consent); the agent measures nothing until it is accepted;
#   6. installs systemd/vigil-agent.service, enables it when systemd is PID 1, and starts it
#      once the consent is accepted.
#
# Environment:
#   VIGIL_ROOT (or DESTDIR)  install under this directory instead of / ; every path written into
#                            wrappers and units is rewritten to it, so the result runs in place
#                            (used by tests).  No user is created unless ROOT has /etc/passwd.
#   VIGIL_MODE=venv|system   see step 2 (default venv)
#   VIGIL_PYTHON             the Python to use (default python3; must be 3.11+)
#   VIGIL_PIP_ARGS           extra pip arguments, e.g. "--no-index --find-links /srv/wheels"
#   VIGIL_USER               service user (default vigil)
#   VIGIL_NO_SYSTEMD=1       do not touch systemd even when it runs
#   VIGIL_APT=0              do not apt-get the distribution's packages (step 2)
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT="${VIGIL_ROOT:-${DESTDIR:-}}"
ROOT="${ROOT%/}"
MODE="${VIGIL_MODE:-venv}"
PY="${VIGIL_PYTHON:-python3}"
SVC_USER="${VIGIL_USER:-vigil}"
PREFIX="/opt/vigil"
ETC="/etc/vigil"
STATE="/var/lib/vigil"
UNITDIR="/etc/systemd/system"
UNIT="vigil-agent.service"

say() { printf '%s\n' "$*"; }
die() { printf 'install-agent: %s\n' "$*" >&2; exit 1; }

uninstall=0
purge=0
accept_consent=0
for arg in "$@"; do
    case "$arg" in
        --uninstall) uninstall=1 ;;
        --purge) purge=1 ;;
        --accept-consent) accept_consent=1 ;;
        -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
        *) die "unknown argument: $arg (see --help)" ;;
    esac
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

# A user exists in the target root (the host's, or a chroot's /etc/passwd).
user_exists() {
    if [ -z "$ROOT" ]; then
        id -u "$SVC_USER" >/dev/null 2>&1
    else
        [ -f "$ROOT/etc/passwd" ] && grep -q "^$SVC_USER:" "$ROOT/etc/passwd"
    fi
}
can_manage_users() { [ "$as_root" -eq 1 ] && { [ -z "$ROOT" ] || [ -f "$ROOT/etc/passwd" ]; }; }

# ---- uninstall ---------------------------------------------------------------------------------
if [ "$uninstall" -eq 1 ]; then
    if systemd_running; then
        systemctl disable --now "$UNIT" 2>/dev/null || true
    fi
    rm -f "$ROOT$UNITDIR/$UNIT"
    systemd_running && systemctl daemon-reload
    rm -rf "$ROOT$PREFIX"
    if [ -L "$ROOT/usr/local/bin/vigil-agent" ]; then rm -f "$ROOT/usr/local/bin/vigil-agent"; fi
    if [ "$purge" -eq 1 ]; then
        rm -rf "$ROOT$ETC" "$ROOT$STATE" "$ROOT/var/log/vigil"
        if user_exists && can_manage_users; then
            if [ -z "$ROOT" ]; then userdel "$SVC_USER" 2>/dev/null || true
            else userdel --root "$ROOT" "$SVC_USER" 2>/dev/null || true; fi
        fi
        say "Vigil removed, with its key, config and outbox (purged)."
    else
        say "Vigil software removed. Kept: $ETC (config) and $STATE (key, outbox)."
        say "Remove them too with: $0 --uninstall --purge"
    fi
    exit 0
fi

# ---- checks ------------------------------------------------------------------------------------
command -v "$PY" >/dev/null 2>&1 || die "$PY not found (apt-get install python3 python3-venv)"
PY="$(command -v "$PY")"
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || die "$PY is older than 3.11 (Raspberry Pi OS bookworm or newer has 3.11)"
[ -f "$SRC/pyproject.toml" ] && [ -d "$SRC/agent" ] || die "run me from a Vigil checkout ($SRC)"
[ -f "$SRC/configs/agent.example.toml" ] || die "missing $SRC/configs/agent.example.toml"
VERSION="$("$PY" -c 'import re,sys; print(re.search(r"__version__ = \"(.+?)\"", open(sys.argv[1]).read()).group(1))' "$SRC/agent/__init__.py")"
case "$MODE" in venv|system) ;; *) die "VIGIL_MODE must be venv or system" ;; esac

# ---- 1. the service user -----------------------------------------------------------------------
if ! user_exists; then
    if can_manage_users; then
        nologin=/usr/sbin/nologin
        if [ -z "$ROOT" ]; then
            useradd --system --user-group --home-dir "$STATE" --no-create-home \
                --shell "$nologin" --comment "Vigil probe" "$SVC_USER"
        else
            useradd --root "$ROOT" --system --user-group --home-dir "$STATE" --no-create-home \
                --shell "$nologin" --comment "Vigil probe" "$SVC_USER"
        fi
        say "created system user $SVC_USER"
    else
        say "note: not creating user $SVC_USER in $ROOT (no /etc/passwd there or not root)"
    fi
fi
owner() { # chown when the user exists and we may
    if user_exists && [ "$as_root" -eq 1 ]; then
        if [ -z "$ROOT" ]; then chown "$@"; else
            # resolve names in the target root, not on the host
            local spec="$1"; shift
            local uid gid
            uid=$(awk -F: -v u="${spec%%:*}" '$1==u{print $3}' "$ROOT/etc/passwd")
            gid=$(awk -F: -v g="${spec##*:}" '$1==g{print $3}' "$ROOT/etc/group")
            chown "$uid:$gid" "$@"
        fi
    fi
}

# ---- 2. the software ---------------------------------------------------------------------------
# The compiled dependencies from the distribution: on 32-bit ARM PyPI has no wheels for
# cryptography/cffi and building them (Rust, C) on a Pi Zero is not an option.  Debian 12's
# versions do the job (the agent needs cryptography >= 38, aiohttp >= 3.8).
if [ -z "$ROOT" ] && [ "$as_root" -eq 1 ] && [ "${VIGIL_APT:-1}" != 0 ] \
        && command -v apt-get >/dev/null 2>&1 && command -v dpkg-query >/dev/null 2>&1; then
    apt_missing=()
    for pkg in python3-venv python3-cryptography python3-aiohttp python3-click python3-tqdm \
            python3-fastjsonschema; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || apt_missing+=("$pkg")
    done
    if [ "${#apt_missing[@]}" -gt 0 ]; then
        say "installing from the distribution: ${apt_missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends "${apt_missing[@]}" >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null 2>&1 || true
                 apt-get install -y -q --no-install-recommends "${apt_missing[@]}"; } \
            || say "warning: apt-get could not install ${apt_missing[*]}; pip will try (it may need to compile)"
    fi
fi
install -d -m 0755 "$ROOT$PREFIX" "$ROOT$PREFIX/bin"
case "$(uname -m)" in
    armv6l|armv7l)
        # No compiled wheels on PyPI for these: build aiohttp & co. as pure Python (slower,
        # but a Pi Zero measures a few sites a minute) and prefer wheels for the rest
        # (Raspberry Pi OS points pip at piwheels.org, which has ARM wheels of cryptography).
        export AIOHTTP_NO_EXTENSIONS=1 MULTIDICT_NO_EXTENSIONS=1 YARL_NO_EXTENSIONS=1 \
            FROZENLIST_NO_EXTENSIONS=1 PROPCACHE_NO_EXTENSIONS=1
        VIGIL_PIP_ARGS="--prefer-binary ${VIGIL_PIP_ARGS:-}"
        ;;
esac
if [ "$MODE" = venv ]; then
    venv="$ROOT$PREFIX/venv"
    if [ ! -x "$venv/bin/python" ]; then
        # --system-site-packages: reuse what the distribution already ships (python3-cryptography
        # on Raspberry Pi OS saves building it); pip installs only what is missing or too old.
        "$PY" -m venv --system-site-packages "$venv" || die "cannot create a venv (apt-get install python3-venv)"
    fi
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade \
        ${VIGIL_PIP_ARGS:-} "$SRC" || die "pip could not install the agent (see above)"
    target="$PREFIX/venv/bin/vigil-agent"
    cat >"$ROOT$PREFIX/bin/vigil-agent.tmp" <<EOF
#!/bin/sh
exec "$ROOT$target" "\$@"
EOF
else
    # The distribution's Python: dependencies come from apt; only the agent's own code (pure
    # Python) is copied, so nothing is compiled on the Pi.
    "$PY" -c 'import click, cryptography, aiohttp, aiomqtt, dns, fastjsonschema, tqdm' 2>/dev/null || die \
        "VIGIL_MODE=system needs the dependencies from the distribution: apt-get install python3-click python3-cryptography python3-aiohttp python3-dnspython python3-fastjsonschema python3-tqdm (and aiomqtt, which may need pip)"
    lib="$ROOT$PREFIX/lib/python"
    install -d -m 0755 "$lib"
    rm -rf "$lib/agent.new"
    cp -RL "$SRC/agent" "$lib/agent.new"  # -L: agent/data/consent.md links to docs/
    find "$lib/agent.new" -name __pycache__ -prune -exec rm -rf {} +
    rm -rf "$lib/agent"
    mv "$lib/agent.new" "$lib/agent"
    cat >"$ROOT$PREFIX/bin/vigil-agent.tmp" <<EOF
#!/bin/sh
PYTHONPATH="$ROOT$PREFIX/lib/python\${PYTHONPATH:+:\$PYTHONPATH}" exec "$PY" -m agent "\$@"
EOF
fi
chmod 0755 "$ROOT$PREFIX/bin/vigil-agent.tmp"
mv "$ROOT$PREFIX/bin/vigil-agent.tmp" "$ROOT$PREFIX/bin/vigil-agent"
previous="$(cat "$ROOT$PREFIX/VERSION" 2>/dev/null || true)"
printf '%s\n' "$VERSION" >"$ROOT$PREFIX/VERSION"
"$ROOT$PREFIX/bin/vigil-agent" --version >/dev/null || die "the installed agent does not start"
install -d -m 0755 "$ROOT$PREFIX/share/doc"
if [ -f "$SRC/docs/raspberry-pi.md" ]; then
    install -m 0644 "$SRC/docs/raspberry-pi.md" "$ROOT$PREFIX/share/doc/raspberry-pi.md"
fi
# On the PATH for `vigil-agent status` / `doctor` (status reads the state dir from the config).
install -d -m 0755 "$ROOT/usr/local/bin"
ln -sfn "$ROOT$PREFIX/bin/vigil-agent" "$ROOT/usr/local/bin/vigil-agent"
if [ -z "$previous" ]; then say "installed vigil-agent $VERSION ($MODE) in $ROOT$PREFIX"
elif [ "$previous" = "$VERSION" ]; then say "vigil-agent $VERSION reinstalled in $ROOT$PREFIX"
else say "upgraded vigil-agent $previous -> $VERSION in $ROOT$PREFIX"; fi

# ---- 3. config (never overwritten) -------------------------------------------------------------
install -d -m 0755 "$ROOT$ETC"
conf="$ROOT$ETC/agent.toml"
if [ ! -e "$conf" ]; then
    tmp="$conf.tmp.$$"
    # state_dir set explicitly: `sudo -u vigil vigil-agent doctor|consent` then find the
    # service's state without the unit's VIGIL_STATE_DIR
    sed -e "s|^#* *state_dir *=.*|state_dir = \"$ROOT$STATE\"|" \
        "$SRC/configs/agent.example.toml" >"$tmp"
    chmod 0640 "$tmp"
    owner "root:$SVC_USER" "$tmp"
    mv "$tmp" "$conf"
    say "wrote $conf (edit [mqtt] and [control] with what your operator gave you)"
else
    say "kept existing $conf"
fi

# ---- 4. state directory and key ----------------------------------------------------------------
install -d -m 0750 "$ROOT$STATE"
owner "$SVC_USER:$SVC_USER" "$ROOT$STATE"
run_as_service() {
    if [ -z "$ROOT" ] && [ "$as_root" -eq 1 ] && user_exists; then
        runuser -u "$SVC_USER" -- "$@"
    else
        "$@"
    fi
}
say ""
run_as_service "$ROOT$PREFIX/bin/vigil-agent" init --config "$conf" --state-dir "$ROOT$STATE"
say ""

# ---- 5. informed consent -----------------------------------------------------------------------
agent_cmd() { run_as_service env VIGIL_STATE_DIR="$ROOT$STATE" "$ROOT$PREFIX/bin/vigil-agent" "$@"; }
install -m 0644 "$SRC/docs/consent.md" "$ROOT$PREFIX/share/doc/consent.md"
if agent_cmd consent --check --config "$conf" >/dev/null 2>&1; then
    say "consent: $(agent_cmd consent --check --config "$conf")"
elif [ "$accept_consent" -eq 1 ]; then
    cat "$SRC/docs/consent.md"
    agent_cmd consent --accept --config "$conf"
elif [ -t 0 ] && [ -t 1 ]; then
    agent_cmd consent --config "$conf" || true
else
    agent_cmd consent --config "$conf"
fi
consented=0
agent_cmd consent --check --config "$conf" >/dev/null 2>&1 && consented=1
if [ "$consented" -eq 0 ]; then
    say ""
    say "NOT ACCEPTED: the agent will not measure anything until you accept the text above"
    say "(also in $PREFIX/share/doc/consent.md):"
    say "    sudo -u $SVC_USER $PREFIX/bin/vigil-agent consent"
fi
say ""

# ---- 6. systemd ----------------------------------------------------------------------------
install -d -m 0755 "$ROOT$UNITDIR"
unit_tmp="$ROOT$UNITDIR/.$UNIT.tmp"
sed -e "s|/opt/vigil/|$ROOT$PREFIX/|g" \
    -e "s|=/etc/vigil/|=$ROOT$ETC/|g" \
    -e "s|=/var/lib/vigil\$|=$ROOT$STATE|" \
    -e "s|^User=vigil\$|User=$SVC_USER|" -e "s|^Group=vigil\$|Group=$SVC_USER|" \
    "$SRC/systemd/$UNIT" >"$unit_tmp"
chmod 0644 "$unit_tmp"
mv "$unit_tmp" "$ROOT$UNITDIR/$UNIT"
if systemd_running; then
    systemctl daemon-reload
    systemctl enable "$UNIT" >/dev/null 2>&1
    if [ "$consented" -eq 0 ]; then
        say "enabled $UNIT; start it after accepting: sudo systemctl start $UNIT"
    elif systemctl is-active --quiet "$UNIT"; then
        systemctl restart "$UNIT"
        say "restarted $UNIT"
    else
        systemctl start "$UNIT" || say "warning: $UNIT did not start; see: journalctl -u $UNIT"
        say "enabled and started $UNIT"
    fi
    say "check it with: vigil-agent status   (and: sudo -u $SVC_USER $PREFIX/bin/vigil-agent doctor)"
else
    say "systemd is not running here (not PID 1, or VIGIL_ROOT/VIGIL_NO_SYSTEMD set):"
    say "the unit is in $ROOT$UNITDIR/$UNIT; start the agent another way, e.g."
    say "    runuser -u $SVC_USER -- env VIGIL_CONFIG=$ROOT$ETC/agent.toml $ROOT$PREFIX/bin/vigil-agent run"
fi
