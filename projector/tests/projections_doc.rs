//! `docs/projections.md` tells how to add a SQL projection: one file, one registration line, a
//! migration. The file is compiled by the crate's tests (`src/sql_projections/mod.rs`); these
//! check the other two steps against the code, so the page cannot drift from it.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

/// The contents of the page's code blocks of `language`, in order.
fn code_blocks(page: &str, language: &str) -> Vec<String> {
    let fence = format!("```{language}");
    let mut blocks = Vec::new();
    let mut lines = page.lines();
    while let Some(line) = lines.next() {
        if line.trim() == fence {
            let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            blocks.push(block.join("\n"));
        }
    }
    blocks
}

/// A registry line, `"kind" => module::Type,`, as (kind, module, type).
fn registry_entry(line: &str) -> Option<(String, String, String)> {
    let (kind, target) = line.trim().strip_suffix(',')?.split_once(" => ")?;
    let kind = kind.strip_prefix('"')?.strip_suffix('"')?;
    let (module, projection) = target.split_once("::")?;
    Some((kind.into(), module.into(), projection.into()))
}

#[test]
fn the_documented_registration_line_registers_the_documented_file() {
    let page = read("docs/projections.md");
    let rust = code_blocks(&page, "rust");
    let example = rust
        .iter()
        .find(|block| block.starts_with("// projector/src/sql_projections/"))
        .expect("the page shows the example file");
    let file = example
        .lines()
        .next()
        .and_then(|first| first.strip_prefix("// projector/src/sql_projections/"))
        .and_then(|name| name.strip_suffix(".rs"))
        .expect("the example starts with its path");
    let entries: Vec<_> = rust.iter().filter_map(|b| registry_entry(b)).collect();
    assert_eq!(entries.len(), 1, "one registration line: {entries:?}");
    let (_, module, projection) = &entries[0];
    assert_eq!(module, file, "the line names the example's module");
    assert!(
        example.contains(&format!("pub(crate) struct {projection};")),
        "the line names the example's type {projection}"
    );
    // The built-in projections are registered by lines of the same shape.
    let registry = read("projector/src/sql_projections/mod.rs");
    let built_in = registry
        .split("registry! {")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .expect("sql_projections/mod.rs invokes registry!");
    let lines: Vec<&str> = built_in.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in lines {
        assert!(
            registry_entry(line).is_some(),
            "{line:?} has the documented shape"
        );
    }
}

#[test]
fn the_documented_migration_number_is_free() {
    let page = read("docs/projections.md");
    let named = page
        .split("migrations/")
        .skip(1)
        .filter_map(|rest| rest.split('`').next())
        .find(|name| name.ends_with("_daily_counts.sql"))
        .expect("the page names the example's migration");
    let number = named.split('_').next().unwrap_or_default();
    let taken: Vec<String> = std::fs::read_dir(repo().join("migrations"))
        .expect("migrations/ is listable")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    assert!(
        !taken
            .iter()
            .any(|file| file.starts_with(&format!("{number}_"))),
        "{named} collides with an existing migration: {taken:?}"
    );
    let next = taken
        .iter()
        .filter_map(|file| file.split('_').next()?.parse::<u32>().ok())
        .max()
        .unwrap_or(0)
        + 1;
    assert_eq!(
        number,
        format!("{next:04}"),
        "the page says it is the next free number"
    );
}
