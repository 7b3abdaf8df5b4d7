//! `cargo xtask` — project automation: build the boot initramfs, run the netboot lab, the
//! end-to-end tests and the benchmarks.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod demo;
mod e2e;
mod image;
mod initramfs;
mod lab;
mod mcast;
mod test;
mod workspace;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "metalcast build, lab, test and benchmark tasks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the agent and the boot initramfs (kernel + initramfs under target/boot/).
    Initramfs(initramfs::Args),
    /// The netboot lab: network namespaces, metalcastd and QEMU nodes.
    #[command(subcommand)]
    Lab(LabCommand),
    /// End-to-end tests that network-boot QEMU nodes from metalcastd.
    E2e(e2e::Args),
    /// Benchmarks of metalcastd's boot services against the peer tools (dnsmasq, Kea, tftpd-hpa).
    Bench(bench::Args),
    /// Build an image tarball from a recipe under images/ (debootstrap) and print its path.
    Image(image::Args),
    /// Everything CI runs: rustfmt, clippy, unit tests, end-to-end tests.
    Test,
}

#[derive(Subcommand)]
enum LabCommand {
    /// Start the appliance and network-boot one VM into the agent; runs until Ctrl-C.
    Demo(demo::Args),
    /// Remove namespaces left by lab runs that were killed.
    Clean,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Initramfs(args) => initramfs::run(args),
        Command::Lab(LabCommand::Demo(args)) => demo::run(args),
        Command::Lab(LabCommand::Clean) => {
            println!("lab: removed {} stale namespace(s)", lab::clean_stale()?);
            Ok(())
        }
        Command::E2e(args) => e2e::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Image(args) => image::run(args),
        Command::Test => test::run(),
    }
}
