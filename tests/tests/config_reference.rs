//! `docs/configuration.md` is generated from the binaries' typed config structs (their clap
//! help: every flag, environment variable and default), so docs and code cannot drift. Run with
//! `ESK_UPDATE_DOCS=1` to regenerate it after changing a setting.

use esk_tests::process::bin_dir;

fn generate() -> anyhow::Result<String> {
    let mut doc = String::from(
        "# Configuration reference\n\n\
         Generated from the binaries' typed configuration (`<binary> --help`) by\n\
         `ESK_UPDATE_DOCS=1 cargo test -p esk-tests --test config_reference`; a test fails when\n\
         this page and the code disagree. Every setting is a flag and an environment variable;\n\
         flags win over the environment, which wins over the default.\n",
    );
    for binary in ["ingest", "indexer", "projector", "esk"] {
        let output = std::process::Command::new(bin_dir()?.join(binary))
            .arg("--help")
            .env_clear()
            .output()?;
        anyhow::ensure!(output.status.success(), "{binary} --help failed");
        doc.push_str(&format!(
            "\n## `{binary}`\n\n```text\n{}```\n",
            String::from_utf8(output.stdout)?
        ));
    }
    Ok(doc)
}

#[test]
fn the_configuration_reference_matches_the_code() -> anyhow::Result<()> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let generated = generate()?;
    if std::env::var_os("ESK_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &generated)?;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == generated,
        "docs/configuration.md is stale: run ESK_UPDATE_DOCS=1 cargo test -p esk-tests --test config_reference"
    );
    Ok(())
}
