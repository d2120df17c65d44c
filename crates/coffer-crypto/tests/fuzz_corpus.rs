//! The fuzz corpus (`fuzz/corpus/`), replayed on stable: every committed input, including
//! any that once crashed a target, still holds the target's property.

// Test helpers panic on unexpected failures by design: a panic is a failed test.
#![allow(clippy::unwrap_used)]

fn replay(target: &str, check: fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        check(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n > 0, "no corpus in {}", dir.display());
}

#[test]
fn envelope_corpus() {
    replay("envelope", coffer_crypto::fuzzing::envelope);
}

#[test]
fn shamir_corpus() {
    replay("shamir", coffer_crypto::fuzzing::shamir);
}
