//! `cargo xtask test`: everything CI runs — formatting, lints, unit tests, end-to-end tests.

use std::process::Command;

use anyhow::{Result, bail};

use crate::e2e;
use crate::workspace;

pub fn run() -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--quiet",
        "--",
        "-D",
        "warnings",
    ])?;
    cargo(&["test", "--workspace"])?;
    // Every suite: boot, layouts, the Debian deploy and multicast.
    e2e::run(e2e::Args { suites: Vec::new() })
}

fn cargo(args: &[&str]) -> Result<()> {
    println!("test: cargo {}", args.join(" "));
    let status = Command::new(env!("CARGO"))
        .current_dir(workspace::root())
        .args(args)
        .status()?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}
