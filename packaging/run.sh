#!/bin/sh
# Runs Bulkhead from source: installs what is missing, builds, prepares the guest image,
# then opens the desktop app with the default partitions (or, with no display, starts
# them headless and prints their states).
set -eu
cd "$(dirname "$0")/.."
packaging/install-deps.sh
cargo build --release -p bulkhead -p vmm-core
export PATH="$PWD/target/release:$PATH"
bulkhead image build
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
    exec bulkhead "$@"
else
    echo "run.sh: no display: starting the default partitions headless" >&2
    exec bulkhead up "$@"
fi
