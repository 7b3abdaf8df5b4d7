#!/usr/bin/env bash
# Installs what metalcast needs to build, run its lab and run its tests on Debian 12.
# Idempotent and non-interactive; run as root (or through sudo).
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    exec sudo --preserve-env=PATH "$0" "$@"
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q

# QEMU: install one consistent set. A newer qemu-utils from backports breaks bookworm's
# qemu-system-x86, so pin qemu-utils to bookworm's own build.
qemu_utils="qemu-utils"
if apt-cache policy qemu-utils | grep -q '~bpo'; then
    qemu_utils="qemu-utils/bookworm"
fi

packages=(
    # build
    build-essential pkg-config musl-tools
    # lab: namespaces, virtual machines, firmware
    iproute2 nftables qemu-system-x86 "$qemu_utils" ipxe-qemu ovmf ipxe curl
    # initramfs contents (copied from the host) and kernel modules tooling
    busybox-static kmod cpio zstd mdadm lvm2 e2fsprogs xfsprogs dosfstools gdisk fdisk
    efibootmgr kexec-tools util-linux
    # image recipes (images/*)
    debootstrap
    # e2e deploy logs into the installed nodes with a key and a password hash made here
    openssh-client openssl
    # peers used by the tests and benchmarks
    dnsmasq-base isc-dhcp-relay kea-admin kea-dhcp4-server tftpd-hpa sqlite3 udpcast uftp
    # serves the `curl | zstd -d | tar -x` baseline of `cargo xtask bench deploy`
    nginx-light
)
apt-get install -y -q --allow-downgrades --no-install-recommends "${packages[@]}"

# tftpd-hpa is a benchmark peer only: it must not hold port 69 on the host.
systemctl disable --now tftpd-hpa >/dev/null 2>&1 || service tftpd-hpa stop >/dev/null 2>&1 || true
# Likewise nginx: the benchmark starts its own inside a lab namespace.
systemctl disable --now nginx >/dev/null 2>&1 || service nginx stop >/dev/null 2>&1 || true

if ! command -v cargo >/dev/null 2>&1; then
    echo "Rust is not installed: install it with rustup (https://rustup.rs), then run this again." >&2
    exit 1
fi
# The agent is a static binary.
rustup target add x86_64-unknown-linux-musl
