#!/bin/bash
# Every test Bulkhead has, in one command: formatting, lints, unit and property tests,
# micro-guests on /dev/kvm, Linux guests (directly or in the QEMU lab), GUI snapshots
# and a real window under Xvfb, and the .deb install/remove check.
# Installs what it needs first. Everything is built once, in the release profile.
set -euo pipefail
cd "$(dirname "$0")/.."

current_step="start"
started=$SECONDS
# Each step says when it began (seconds since the start): where a slow run's time went.
step() { current_step="$*"; printf '\n=== %s (at %d s) ===\n' "$*" "$((SECONDS - started))"; }
# CI keeps only the end of the log: name the step that failed last.
trap 'status=$?; [ $status -ne 0 ] && printf "\nrun-all: FAILED (exit %s) in step: %s\n" "$status" "$current_step"' EXIT

step "dependencies"
packaging/install-deps.sh --test

step "format"
cargo fmt --all -- --check

step "static partition binary (for the lab and the package), the guest agent, the lab's supervisor driver, the guest's evtest"
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --locked \
    -p vmm-core --bin bulkhead-vmm -p bulkhead-netrelay --bin bulkhead-netrelay \
    -p bulkhead-guest-agent --bin bulkhead-agent \
    -p bulkhead-tests --bin lab-supervise --bin guest-evtest \
    --target x86_64-unknown-linux-gnu
export BULKHEAD_VMM_STATIC="$PWD/target/x86_64-unknown-linux-gnu/release/bulkhead-vmm"
export BULKHEAD_NETRELAY_STATIC="$PWD/target/x86_64-unknown-linux-gnu/release/bulkhead-netrelay"
export BULKHEAD_LAB_SUPERVISE_STATIC="$PWD/target/x86_64-unknown-linux-gnu/release/lab-supervise"
export BULKHEAD_GUEST_EVTEST_STATIC="$PWD/target/x86_64-unknown-linux-gnu/release/guest-evtest"
# The guest image packs the agent (guest_image::agent_binary).
export BULKHEAD_AGENT="$PWD/target/x86_64-unknown-linux-gnu/release/bulkhead-agent"

step "every binary and test of the workspace, built once"
# One cargo invocation over the whole workspace, so every crate is compiled with one
# feature set: `-p vmm-core`, `-p bulkhead` or `-p bulkhead-tests` each resolve features
# differently (syn, rustix, serde_core...) and would rebuild most of the tree three more
# times. Every later step reuses this build; the lab step runs its executables directly.
test_executables=target/workspace-test-executables.json
cargo test --release --locked --workspace --no-run --message-format=json-render-diagnostics \
    > "$test_executables"

step "lints"
# After the build and in its profile: clippy re-checks every crate, but the proc macros and
# build scripts it needs are the ones just built (a check in the dev profile would compile
# them all once more).
cargo clippy --release --workspace --all-targets --locked -- -D warnings

step "guest image"
target/release/bulkhead image build

step "debian-12 template (reused while it matches its declaration; packages cached)"
target/release/bulkhead template build debian-12

step "tests"
export BULKHEAD_TEST_ARTIFACTS="$PWD/target/test-artifacts"
# --no-fail-fast: every test binary runs, and cargo's last lines name each one that failed.
# (Excluding bulkhead-tests leaves every crate's features as in the build above.)
cargo test --release --locked --no-fail-fast --workspace --exclude bulkhead-tests

step "fuzz smoke run: each vmm-core target's checked-in corpus, then 20 s of mutants, under the stable fuzzer (a panic fails)"
# Its own crate (not a workspace member); --target-dir shares the workspace's build. CI has
# no nightly toolchain, so no libFuzzer here (see ARCHITECTURE.md, "Fuzzing"); the seeds'
# tests check the corpus still reaches every device.
cargo test --release --locked --manifest-path vmm-core/fuzz/Cargo.toml --target-dir target
cargo build --release --locked --manifest-path vmm-core/fuzz/Cargo.toml --target-dir target --bin stable_fuzz
for fuzz_target in control_decoder virtio_mmio agent_decoder; do
    (cd vmm-core/fuzz && timeout 60 ../../target/release/stable_fuzz "$fuzz_target" 20)
done

step "micro-guests and Linux guests (the output names the runner: direct /dev/kvm or the lab)"
# bulkhead-tests' own executables from the build above (`cargo test -p bulkhead-tests`
# would rebuild them with its narrower features), one at a time, from the package's
# directory as cargo runs them; every one runs and the failed ones are named at the end.
mapfile -t lab_executables < <(jq -r 'select(.reason == "compiler-artifact" and .profile.test
        and .executable != null and (.manifest_path | endswith("/tests/Cargo.toml")))
        | "\(if .target.kind == ["lib"] then 0 else 1 end) \(.target.name) \(.executable)"' \
        "$test_executables" | sort | cut -d" " -f3)
[ "${#lab_executables[@]}" -gt 1 ] || { echo "run-all: no bulkhead-tests executables in $test_executables"; exit 1; }
failed=""
for exe in "${lab_executables[@]}"; do
    printf '\n--- %s (at %d s) ---\n' "$(basename "$exe")" "$((SECONDS - started))"
    (cd tests && "$exe" --nocapture --test-threads=1) || failed="$failed $(basename "$exe")"
done
[ -z "$failed" ] || { echo "run-all: these test executables failed:$failed"; exit 1; }

step "package"
deb=$(packaging/build-deb.sh --no-build | tail -n 1)
packaging/test-deb.sh "$deb"
printf '\nrun-all: passed in %d s\n' "$((SECONDS - started))"
