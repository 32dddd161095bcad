#!/usr/bin/env bash
# Prove the probe agent installs and runs on Raspberry Pi-class ARM without compiling anything.
#
#   sudo scripts/test-on-arm.sh                      armhf and arm64
#   sudo scripts/test-on-arm.sh --arch armhf         one of them
#   sudo scripts/test-on-arm.sh --workdir DIR        where the chroots live (default /var/tmp/vigil-arm);
#                                                    they are kept and reused, --fresh rebuilds them
#   sudo scripts/test-on-arm.sh --prepare            only build the chroots (the slow, download part)
#
# For each architecture (armhf: Pi 2/3/4/Zero 2 on a 32-bit OS; arm64: Pi 3/4/5 on a 64-bit OS):
#   1. debootstrap builds a Debian 12 (bookworm) chroot, run through qemu-user-static; the
#      chroot has no C compiler, so any step that tried to compile would fail;
#   2. scripts/install-agent.sh runs inside it as on a Pi: Debian's compiled packages
#      (python3-cryptography 38, python3-aiohttp 3.8...) and pure-Python wheels for the rest;
#   3. an HTTPS site is served by the chroot's own Python on loopback (a test CA made on the
#      host), the control helper runs on the host's loopback (the chroot shares the host's
#      network), and the installed agent does `vigil-agent run --once` on it as the service
#      user: DNS-free (an IP address), TCP, TLS with Debian's cryptography and OpenSSL, HTTP
#      with Debian's aiohttp; the record must say "ok";
#   4. the figures: install time, peak RSS of `run --once`, `--help` and `doctor` (the RSS is
#      qemu's, emulator included: a real Pi's is lower), written to DIR/results-ARCH.txt.
#
# Downloads Debian packages (debootstrap, apt) and PyPI wheels: run it by hand, not in CI.
# Slow: 15-40 minutes per architecture under emulation on a 2-core machine.
set -euo pipefail

SRC="${VIGIL_SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
WORK=/var/tmp/vigil-arm
FRESH=0
PREPARE=0
ARCHES=()
MIRROR="${VIGIL_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
HOST_PY="${VIGIL_HOST_PYTHON:-$SRC/.venv/bin/python}"

die() { printf 'test-on-arm: %s\n' "$*" >&2; exit 1; }
say() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --arch) ARCHES+=("${2:?--arch needs armhf or arm64}"); shift 2 ;;
        --workdir) WORK="${2:?--workdir needs a directory}"; shift 2 ;;
        --fresh) FRESH=1; shift ;;
        --prepare) PREPARE=1; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
[ "${#ARCHES[@]}" -gt 0 ] || ARCHES=(armhf arm64)
[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, chroot, binfmt)"
[ -x "$HOST_PY" ] || die "no $HOST_PY: make the venv first (python3 -m venv .venv && .venv/bin/pip install -e '.[dev]')"
"$HOST_PY" -c 'import collector.helper.app' 2>/dev/null \
    || "$HOST_PY" -c 'import collector.helper' 2>/dev/null \
    || die "$HOST_PY cannot import the collector (the control helper runs on the host)"

# ---- host tools: debootstrap, qemu-user-static, binfmt_misc ---------------------------------
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v qemu-arm-static >/dev/null || need+=(qemu-user-static)
if [ "${#need[@]}" -gt 0 ]; then
    say "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" \
        || { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
             apt-get install -y -q --no-install-recommends "${need[@]}"; }
fi
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
for q in arm aarch64; do
    if [ ! -e "/proc/sys/fs/binfmt_misc/qemu-$q" ]; then
        conf="/usr/lib/binfmt.d/qemu-$q.conf"
        [ -f "$conf" ] || die "$conf missing (qemu-user-static not installed?)"
        # the F flag opens the interpreter now, so the chroot needs no copy of it
        grep -v '^#' "$conf" | head -1 >/proc/sys/fs/binfmt_misc/register
        say "registered qemu-$q with binfmt_misc"
    fi
done

mkdir -p "$WORK"
PIDS=()
MOUNTS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    for ((i=${#MOUNTS[@]}-1; i>=0; i--)); do umount "${MOUNTS[$i]}" 2>/dev/null || umount -l "${MOUNTS[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT

free_port() { "$HOST_PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # port, seconds: bounded poll until something listens
    "$HOST_PY" - "$1" "$2" <<'PY'
import socket, sys, time
port, limit = int(sys.argv[1]), float(sys.argv[2])
deadline = time.monotonic() + limit
while time.monotonic() < deadline:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.5)
sys.exit(1)
PY
}

# ---- one architecture --------------------------------------------------------------------------
test_arch() {
    local arch="$1" dir="$WORK/bookworm-$1" out="$WORK/results-$1.txt"
    local qemu
    case "$arch" in armhf) qemu=qemu-arm ;; arm64) qemu=qemu-aarch64 ;; *) die "unknown arch $arch" ;; esac
    : >"$out"
    [ "$FRESH" -eq 0 ] || rm -rf "$dir"
    if [ ! -x "$dir/usr/bin/python3" ]; then
        rm -rf "$dir"
        say "$arch: debootstrap (first stage)"
        local t0; t0=$(date +%s)
        debootstrap --arch="$arch" --foreign --variant=minbase \
            --include=python3,python3-venv,python3-pip,ca-certificates,passwd,util-linux \
            bookworm "$dir" "$MIRROR" >"$WORK/debootstrap-$arch.log" 2>&1 \
            || { tail -20 "$WORK/debootstrap-$arch.log"; die "$arch: debootstrap failed"; }
        say "$arch: debootstrap (second stage, emulated)"
        chroot "$dir" /debootstrap/debootstrap --second-stage >>"$WORK/debootstrap-$arch.log" 2>&1 \
            || { tail -20 "$WORK/debootstrap-$arch.log"; die "$arch: second stage failed"; }
        echo "chroot build: $(( $(date +%s) - t0 )) s" >>"$out"
    fi
    if [ "$PREPARE" -eq 1 ]; then say "$arch: chroot ready in $dir"; return 0; fi
    mount -t proc proc "$dir/proc"; MOUNTS+=("$dir/proc")
    mount --bind /dev "$dir/dev"; MOUNTS+=("$dir/dev")
    cp /etc/resolv.conf "$dir/etc/resolv.conf"
    # The host's CA bundle: pip inside reaches PyPI the way the host does.
    cp /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/host-ca-bundle.crt"
    local machine; machine=$(chroot "$dir" uname -m)
    say "$arch: chroot runs as $machine ($qemu)"
    if chroot "$dir" sh -c 'command -v cc || command -v gcc || command -v rustc' >/dev/null 2>&1; then
        die "$arch: the chroot has a compiler; this test must prove nothing is compiled"
    fi

    # the checkout, as a volunteer would have it
    rm -rf "$dir/src/vigil"; mkdir -p "$dir/src/vigil"
    (cd "$SRC" && tar --exclude=__pycache__ --exclude='*.pyc' -cf - \
        agent configs docs scripts systemd pyproject.toml README.md) | tar -xf - -C "$dir/src/vigil"

    say "$arch: install-agent.sh (emulated)"
    local t0 t1; t0=$(date +%s)
    if ! chroot "$dir" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        PIP_CERT=/etc/ssl/host-ca-bundle.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
        DEBIAN_FRONTEND=noninteractive \
        bash /src/vigil/scripts/install-agent.sh --accept-consent >"$WORK/install-$arch.log" 2>&1 </dev/null; then
        tail -30 "$WORK/install-$arch.log"; die "$arch: install-agent.sh failed"
    fi
    t1=$(date +%s)
    echo "install-agent.sh: $((t1 - t0)) s (apt packages + pip, emulated)" >>"$out"
    chroot "$dir" /opt/vigil/venv/bin/python - >>"$out" <<'PY'
import importlib.metadata as md, platform
print("python", platform.python_version(), platform.machine())
for name in ("cryptography", "aiohttp", "dnspython", "aiomqtt", "paho-mqtt", "fastjsonschema", "click", "tqdm"):
    try:
        dist = md.distribution(name)
        where = "debian" if "/usr/lib/python3/dist-packages" in str(dist.locate_file("")) else "pip"
        print(f"  {name} {dist.version} ({where})")
    except md.PackageNotFoundError:
        print(f"  {name} missing")
PY

    # an HTTPS site inside the chroot, the control helper on the host, both on loopback
    local site_port helper_port
    site_port=$(free_port); helper_port=$(free_port)
    mkdir -p "$dir/srv/site" "$dir/srv/pki"
    "$HOST_PY" - "$WORK/pki" <<'PY'
import pathlib, sys
import trustme
d = pathlib.Path(sys.argv[1]); d.mkdir(exist_ok=True)
ca = trustme.CA()
ca.cert_pem.write_to_path(str(d / "ca.pem"))
ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(d / "site.pem"))
PY
    cp "$WORK/pki/ca.pem" "$WORK/pki/site.pem" "$dir/srv/pki/"
    chmod 0644 "$dir/srv/pki/ca.pem"
    cat >"$dir/srv/site.py" <<'PY'
import functools, http.server, ssl, sys
port = int(sys.argv[1])
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory="/srv/site")
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
tls.load_cert_chain("/srv/pki/site.pem")
server.socket = tls.wrap_socket(server.socket, server_side=True)
server.serve_forever()
PY
    printf '<html><head><title>Vigil ARM test</title></head><body>%s</body></html>\n' \
        "$(head -c 3000 /dev/zero | tr '\0' 'x')" >"$dir/srv/site/index.html"
    printf 'url,category_code,category_description,date_added,source,notes\nhttps://127.0.0.1:%s/,NEWS,News Media,2026-01-01,arm-test,\n' \
        "$site_port" >"$dir/srv/list.csv"
    chmod 0644 "$dir/srv/list.csv"
    chroot "$dir" python3 /srv/site.py "$site_port" >"$WORK/site-$arch.log" 2>&1 &
    PIDS+=($!)
    printf '127.0.0.0\t127.255.255.255\t64500\tZZ\tVIGIL-ARM-TEST\n' >"$WORK/ipdb.tsv"
    (cd "$SRC" && exec "$HOST_PY" -m collector.cli.main helper --host 127.0.0.1 \
        --port "$helper_port" --mode open --allow-range 127.0.0.0/8 --ipdb "$WORK/ipdb.tsv" \
        --ca-file "$WORK/pki/ca.pem" >"$WORK/helper-$arch.log" 2>&1) &
    PIDS+=($!)
    wait_port "$helper_port" 60 || { cat "$WORK/helper-$arch.log"; die "the helper did not start"; }
    wait_port "$site_port" 120 || { cat "$WORK/site-$arch.log"; die "$arch: the site did not start"; }

    # the figures: peak RSS of the child (qemu's, emulator included) and wall time
    local measure='import resource, subprocess, sys, time
t = time.monotonic(); p = subprocess.run(sys.argv[2:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
dt = time.monotonic() - t; rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
open(sys.argv[1], "w").write(p.stdout)
print(f"{dt:.1f} s, peak RSS {rss:.0f} MB, exit {p.returncode}")
sys.exit(p.returncode)'
    local as_vigil=(runuser -u vigil -- env VIGIL_CONFIG=/etc/vigil/agent.toml VIGIL_STATE_DIR=/var/lib/vigil)
    echo "python3 -c pass (emulator + interpreter baseline): $(chroot "$dir" python3 -c \
        "$measure" /tmp/pass.out python3 -c pass)" >>"$out"
    echo "vigil-agent --help: $(chroot "$dir" python3 -c "$measure" /tmp/help.out \
        "${as_vigil[@]}" /opt/vigil/bin/vigil-agent --help)" >>"$out"
    echo "vigil-agent run --once (1 URL): $(chroot "$dir" python3 -c "$measure" /tmp/run.out \
        "${as_vigil[@]}" /opt/vigil/bin/vigil-agent run --once --list /srv/list.csv \
        --tests web_connectivity --control-url "http://127.0.0.1:$helper_port" \
        --ca-file /srv/pki/ca.pem --output /var/lib/vigil/arm-test.jsonl || true)" >>"$out"
    echo "vigil-agent doctor: $(chroot "$dir" python3 -c "$measure" /tmp/doctor.out \
        "${as_vigil[@]}" /opt/vigil/bin/vigil-agent doctor --timeout 5 || true)" >>"$out"
    cat "$dir/tmp/run.out" >"$WORK/run-$arch.log"
    cat "$dir/tmp/doctor.out" >"$WORK/doctor-$arch.log"
    local verdict
    verdict=$(chroot "$dir" python3 -c 'import json,sys; r=json.loads(open(sys.argv[1]).readline()); print(r["verdict"]["status"], r["annotations"]["architecture"])' \
        /var/lib/vigil/arm-test.jsonl 2>/dev/null || echo "no record")
    echo "record: $verdict" >>"$out"

    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
    umount "$dir/dev" "$dir/proc"; MOUNTS=()
    say "$arch results:"; sed 's/^/    /' "$out"
    case "$verdict" in ok\ *) ;; *) cat "$WORK/run-$arch.log"; die "$arch: run --once did not produce an ok record" ;; esac
}

for arch in "${ARCHES[@]}"; do test_arch "$arch"; done
say "all passed: ${ARCHES[*]} (figures in $WORK/results-*.txt)"
