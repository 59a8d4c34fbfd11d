//! A Python that can import asyncpg, for the anchor scripts: the state dir's `bench-venv`, or
//! `python3` with `bench-pylib` on its path; installed there with pip when neither works.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::bail;

use super::say;

/// How to run the anchors' Python.
#[derive(Debug, Clone)]
pub(crate) struct Python {
    pub(crate) program: PathBuf,
    /// `PYTHONPATH` it needs, if any.
    pythonpath: Option<PathBuf>,
}

impl Python {
    /// The environment the anchors run with.
    pub(crate) fn env(&self) -> Vec<(String, String)> {
        self.pythonpath
            .iter()
            .map(|p| ("PYTHONPATH".to_owned(), p.display().to_string()))
            .collect()
    }

    fn imports_asyncpg(&self) -> bool {
        Command::new(&self.program)
            .args(["-c", "import asyncpg"])
            .envs(self.env())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Finds (or installs into the state dir) a Python with asyncpg.
    pub(crate) fn ensure(state_dir: &Path) -> anyhow::Result<Self> {
        let venv = state_dir.join("bench-venv");
        let target = state_dir.join("bench-pylib");
        let in_venv = Python {
            program: venv.join("bin/python"),
            pythonpath: None,
        };
        if in_venv.program.is_file() && in_venv.imports_asyncpg() {
            return Ok(in_venv);
        }
        let with_target = Python {
            program: PathBuf::from("python3"),
            pythonpath: Some(target.clone()),
        };
        if target.is_dir() && with_target.imports_asyncpg() {
            return Ok(with_target);
        }
        let python = if in_venv.program.is_file()
            || succeeds(Command::new("python3").arg("-m").arg("venv").arg(&venv))
        {
            say(&format!("installing asyncpg into {}", venv.display()));
            let installed = succeeds(Command::new(&in_venv.program).args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "--quiet",
                "asyncpg",
            ]));
            if !installed {
                bail!("pip install asyncpg into {} failed", venv.display());
            }
            in_venv
        } else {
            say(&format!(
                "python3 -m venv is unavailable; installing asyncpg into {}",
                target.display()
            ));
            let _ = std::fs::remove_dir_all(&venv);
            let installed = succeeds(
                Command::new("python3")
                    .args([
                        "-m",
                        "pip",
                        "install",
                        "--disable-pip-version-check",
                        "--no-input",
                        "--quiet",
                        "--target",
                    ])
                    .arg(&target)
                    .arg("asyncpg")
                    .env("PIP_USER", "0")
                    .env("PIP_REQUIRE_VIRTUALENV", "0"),
            );
            if !installed {
                bail!("pip install --target {} asyncpg failed", target.display());
            }
            with_target
        };
        if !python.imports_asyncpg() {
            bail!(
                "asyncpg is still not importable by {}",
                python.program.display()
            );
        }
        Ok(python)
    }
}

/// Runs a preparation command with its output on stderr; whether it succeeded.
fn succeeds(command: &mut Command) -> bool {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::io::stderr()))
        .status()
        .is_ok_and(|s| s.success())
}
