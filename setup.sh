#!/bin/sh
# usniff: one-step set-up on Debian 12 / Ubuntu 24.04, as root.
# Installs the system packages, creates .venv (pip builds the C extension),
# builds the BPF object and installs usniff (console script in /usr/local/bin).
set -eu
cd "$(dirname "$0")"

if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: run as root (sudo ./setup.sh)" >&2
    exit 1
fi

PKGS="clang llvm make libbpf-dev libbpf1 bpftool python3-venv python3-dev gcc libc6-dev
      redis-server redis-tools mariadb-server mariadb-client postgresql postgresql-contrib memcached tshark socat strace
      busybox-static qemu-system-x86 cpio podman curl php8.2-fpm nginx-light
      libfcgi-bin prometheus tcpdump dbus-daemon dbus-bin systemd"  # tcpdump: record_tcpdump.py
PKGS="$PKGS debootstrap runc"  # make test-install: root file systems; podman's runtime here
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get update -q
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing
fi
# Debian's server packages start their daemons; the tests start their own.
for svc in redis-server mariadb memcached php8.2-fpm nginx; do
    (systemctl disable --now "$svc" || service "$svc" stop) >/dev/null 2>&1 || true
done

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q -U pip
.venv/bin/pip install -q -e '.[test,bench,dist]'

mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
make bpf
ln -sf "$(pwd)/.venv/bin/usniff" /usr/local/bin/usniff
echo "setup.sh: done: $(usniff --version)"
