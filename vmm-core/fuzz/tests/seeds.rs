//! The seeds reach what they are meant to reach, so mutants start from real traffic.

#[test]
fn control_seeds_decode_without_panic() {
    let seeds = vmm_core_fuzz::seeds("control_decoder");
    let framed: Vec<_> = seeds
        .iter()
        .filter(|s| vmm_core_fuzz::control_decoder(s))
        .collect();
    assert!(framed.len() >= 10, "only {} seeds decoded", framed.len());
}

#[test]
fn virtio_seeds_get_answers_from_every_device() {
    for (i, seed) in vmm_core_fuzz::seeds("virtio_mmio").iter().enumerate() {
        assert!(
            vmm_core_fuzz::virtio_mmio(seed),
            "seed {i} (device {}) got no answer",
            seed[0]
        );
    }
}
