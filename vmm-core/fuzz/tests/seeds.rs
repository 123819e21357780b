//! The seeds reach what they are meant to reach, so mutants start from real traffic.

use std::sync::Mutex;

/// The targets count every allocation in the process against their cap (the decoder's
/// threads included), so two targets must not run at once: one's buffers would count
/// against the other.
static ONE_TARGET_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn control_seeds_decode_without_panic() {
    let _one = ONE_TARGET_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let seeds = vmm_core_fuzz::seeds("control_decoder");
    let framed: Vec<_> = seeds
        .iter()
        .filter(|s| vmm_core_fuzz::control_decoder(s))
        .collect();
    assert!(framed.len() >= 10, "only {} seeds decoded", framed.len());
}

#[test]
fn virtio_seeds_get_answers_from_every_device() {
    let _one = ONE_TARGET_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    for (i, seed) in vmm_core_fuzz::seeds("virtio_mmio").iter().enumerate() {
        assert!(
            vmm_core_fuzz::virtio_mmio(seed),
            "seed {i} (device {}) got no answer",
            seed[0]
        );
    }
}

#[test]
fn agent_seeds_decode_in_both_directions_and_the_broken_ones_do_not() {
    let _one = ONE_TARGET_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let seeds = vmm_core_fuzz::seeds("agent_decoder");
    let decoded: Vec<bool> = seeds
        .iter()
        .map(|s| vmm_core_fuzz::agent_decoder(s))
        .collect();
    let agent_side = seeds
        .iter()
        .zip(&decoded)
        .filter(|(s, ok)| **ok && s[0] & 1 == 0)
        .count();
    let host_side = seeds
        .iter()
        .zip(&decoded)
        .filter(|(s, ok)| **ok && s[0] & 1 == 1)
        .count();
    assert!(
        agent_side >= 7,
        "only {agent_side} agent → host seeds decoded"
    );
    assert!(
        host_side >= 5,
        "only {host_side} host → agent seeds decoded"
    );
    assert!(
        decoded.iter().filter(|ok| !**ok).count() >= 4,
        "the broken seeds decoded"
    );
}

#[test]
fn checked_in_corpus_holds_every_built_in_seed() {
    for target in ["control_decoder", "virtio_mmio", "agent_decoder"] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("seeds")
            .join(target);
        let files: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| std::fs::read(e.expect("dir entry").path()).expect("read a seed"))
            .collect();
        for (i, seed) in vmm_core_fuzz::seeds(target).iter().enumerate() {
            assert!(
                files.contains(seed),
                "{target} seed {i} is not in {}: stable_fuzz {target} --write-seeds seeds/{target}",
                dir.display()
            );
        }
    }
}
