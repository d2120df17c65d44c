//! The `audit_export` fuzz corpus (`fuzz/corpus/audit_export`), replayed on stable.

#[test]
fn audit_export_corpus() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/audit_export");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        coffer_core::audit::fuzzing::verify_export(&std::fs::read(entry.unwrap().path()).unwrap());
        n += 1;
    }
    assert!(n > 0, "no corpus in {}", dir.display());
    // The valid seed is a real, intact chain: the corpus exercises the whole verifier.
    let valid = std::fs::read(dir.join("seed-valid")).unwrap();
    let r = coffer_core::audit::verify_export(valid.as_slice(), None).unwrap();
    assert!(r.ok && r.events == 3, "{r:?}");
}
