use comfy_table::{ContentArrangement, Table, presets::UTF8_BORDERS_ONLY};
use serde::Serialize;

pub fn json<T: Serialize + ?Sized>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// The outcome of a command that changes something: `v` with --json, else `text`.
pub fn done(
    as_json: bool,
    v: serde_json::Value,
    text: impl std::fmt::Display,
) -> anyhow::Result<()> {
    if as_json {
        json(&v)
    } else {
        println!("{text}");
        Ok(())
    }
}

pub fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.iter().copied());
    for r in rows {
        t.add_row(r);
    }
    println!("{t}");
}

pub const MASK: &str = "********";
