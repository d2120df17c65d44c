//! The scale benchmark's tools: `coffer bench-load` and `coffer bench --targets`.

use crate::*;

/// `coffer bench-load` fills a fresh database with organisations, values and one API key
/// each; `coffer bench --targets` reads random values of all of them through a server and
/// checks every answer against the value loaded for that organisation.
#[test]
fn scale_benchmark_loads_and_reads_across_organisations() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let targets = dir.path().join("targets.tsv");
    let load = |out: &Path| {
        Command::new(BIN)
            .args([
                "bench-load",
                "--orgs",
                "4",
                "--values",
                "40",
                "--concurrency",
                "2",
            ])
            .arg("--data-dir")
            .arg(&data)
            .arg("--out")
            .arg(out)
            .env_remove("COFFER_DATABASE_URL")
            .output()
            .unwrap()
    };
    let o = load(&targets);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // API keys inside: readable by the owner only.
    let mode = std::fs::metadata(&targets).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = std::fs::read_to_string(&targets).unwrap();
    assert_eq!(
        text.lines().count(),
        5,
        "a header and one line per organisation"
    );
    assert!(text.starts_with("# coffer bench targets v1\tscale\t10\n"));
    // Only into a fresh database.
    let again = load(&dir.path().join("again.tsv"));
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("fresh database"));

    let server = start_server_env(&data, true, &[], false, &[("COFFER_DATABASE_URL", "")]);
    let cli = Cli::of(&server, dir.path().join("cfg"));
    let bench = |file: &Path| {
        let path = file.to_str().unwrap();
        cli.json(&[
            "bench",
            "--targets",
            path,
            "--duration",
            "1",
            "--connections",
            "2",
        ])[0]
            .clone()
    };
    let m = bench(&targets);
    assert_eq!(m["errors"], 0, "{m}");
    assert!(m["requests"].as_u64().unwrap() > 10, "{m}");

    // Each organisation's key reads its own values only: with the keys moved one line
    // down, every answer is another organisation's value and counts as an error.
    let mut lines: Vec<&str> = text.lines().collect();
    let keys: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split('\t').nth(1).unwrap())
        .collect();
    let shifted: Vec<String> = (0..keys.len())
        .map(|i| format!("{i}\t{}", keys[(i + 1) % keys.len()]))
        .collect();
    lines.truncate(1);
    let swapped = dir.path().join("swapped.tsv");
    std::fs::write(&swapped, format!("{}\n{}\n", lines[0], shifted.join("\n"))).unwrap();
    let m = bench(&swapped);
    assert_eq!(m["requests"], 0, "{m}");
    assert!(m["errors"].as_u64().unwrap() > 10, "{m}");
}
