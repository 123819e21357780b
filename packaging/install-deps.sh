#!/bin/sh
# Installs what building, running and testing Bulkhead needs on Debian 12 (or Ubuntu),
# as root or through sudo. Idempotent: installs only what is missing.
#
#   packaging/install-deps.sh          what running from source needs
#   packaging/install-deps.sh --test   plus what the test suite needs (QEMU for the lab,
#                                      Xvfb, lavapipe, packaging tools)
set -eu

want_test=no
[ "${1:-}" = "--test" ] && want_test=yes

say() { echo "install-deps: $*" >&2; }

if ! command -v cargo >/dev/null 2>&1; then
    say "cargo not found: install a Rust toolchain (1.85 or newer) with rustup, then run this again"
    exit 1
fi

# Runtime: the guest image builder (apt, dpkg), the template builder (mmdebstrap,
# tar2sqfs from squashfs-tools-ng, newuidmap/newgidmap from uidmap for unprivileged
# builds, e2fsprogs for private disks), the desktop app's libraries (Vulkan with
# lavapipe as fallback, GL for the glow renderer, X11/Wayland, xkbcommon), passt for NAT.
runtime="apt dpkg ca-certificates pkg-config libvulkan1 mesa-vulkan-drivers libgl1 libegl1
    libx11-6 libxcursor1 libxrandr2 libxi6 libxkbcommon0 libxkbcommon-x11-0
    libwayland-client0 libwayland-egl1 passt
    mmdebstrap squashfs-tools-ng uidmap e2fsprogs"
# Tests: the lab (QEMU with emulated SVM), jq to read cargo's list of test executables,
# cpio to cross-check our initramfs writer, a real X server and screenshots, ACPI
# disassembly, building the .deb (dpkg-shlibdeps from dpkg-dev) and checking it.
testing="qemu-system-x86 jq cpio xvfb x11-utils imagemagick acpica-tools dpkg-dev lintian
    desktop-file-utils man-db xauth"

packages=$runtime
[ "$want_test" = yes ] && packages="$packages $testing"

missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
        missing="$missing $p"
done

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
if [ -n "$missing" ]; then
    say "installing:$missing"
    $SUDO apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing >/dev/null
else
    # The guest image builder asks apt for the current kernel package.
    [ -n "$(ls /var/lib/apt/lists/ 2>/dev/null | grep -v lock | head -n 1)" ] ||
        $SUDO apt-get update -q >/dev/null
fi

say "dependencies present"
