//! Extracts the SQL projection example of `docs/projections.md` into `OUT_DIR`, where
//! `src/sql_projections/mod.rs` compiles it in its tests: the page's code is checked by the
//! compiler, not by eye.

use std::path::{Path, PathBuf};

/// The first line of the example's code block: the file it stands for.
const EXAMPLE_MARKER: &str = "// projector/src/sql_projections/daily_counts.rs";

fn main() {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    let out = std::env::var_os("OUT_DIR").map(PathBuf::from);
    let (Some(manifest), Some(out)) = (manifest, out) else {
        println!("cargo::error=CARGO_MANIFEST_DIR and OUT_DIR must be set by cargo");
        return;
    };
    let page = manifest.join("../docs/projections.md");
    println!("cargo::rerun-if-changed={}", page.display());
    let code = match example(&page) {
        Ok(code) => code,
        // Only the test build includes the example: fail that one, not the binary's build.
        Err(reason) => format!("compile_error!({reason:?});\n"),
    };
    let target = out.join("projections_doc_example.rs");
    if let Err(error) = std::fs::write(&target, code) {
        println!("cargo::error=cannot write {}: {error}", target.display());
    }
}

/// The code block of `page` that starts with [`EXAMPLE_MARKER`].
fn example(page: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(page)
        .map_err(|error| format!("cannot read {}: {error}", page.display()))?;
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "```rust" {
            continue;
        }
        let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        if block.first().map(|first| first.trim()) == Some(EXAMPLE_MARKER) {
            return Ok(block.join("\n") + "\n");
        }
    }
    Err(format!(
        "{} has no ```rust block starting with `{EXAMPLE_MARKER}`",
        page.display()
    ))
}
