//! The `audit_compact` fuzz corpus (`fuzz/corpus/audit_compact`), replayed on stable.

use coffer_store::audit_codec::{fuzzing, render, template_id};

#[test]
fn audit_compact_corpus() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/audit_compact");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        fuzzing::render_stored(&std::fs::read(entry.unwrap().path()).unwrap());
        n += 1;
    }
    assert!(n > 0, "no corpus in {}", dir.display());
    // The valid seed is the committed vector's body: the corpus reaches every kind of hole.
    let seed = std::fs::read(dir.join("seed-valid")).unwrap();
    let at = seed.iter().position(|b| *b == 0).unwrap();
    let (template, body) = (std::str::from_utf8(&seed[..at]).unwrap(), &seed[at + 1..]);
    assert_eq!(template_id(body).unwrap(), 42);
    let strings = |id: u64| (1..=3).contains(&id).then(|| "x".to_owned());
    let json = render(body, template, 1_765_000_000_123, &strings).unwrap();
    assert!(
        json.contains("\"time\":\"2025-12-06T05:46:40.123Z\""),
        "{json}"
    );
}
