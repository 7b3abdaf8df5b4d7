//! `metalcast layout check`: validate a layout file and plan it against a node's disks, on
//! this machine, without the appliance.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use metalcast_layout::{Layout, LayoutError};
use metalcast_proto::{Disk, Firmware, Hardware, MacAddr};
use serde::Deserialize;

#[derive(Subcommand)]
pub enum LayoutCommand {
    /// Validate a layout; with --disks, plan it against those disks and print the plan.
    /// Exits 1 when the layout is refused, naming each wrong field.
    Check {
        /// Layout file (TOML, see docs/layouts.md).
        file: PathBuf,
        /// The node's disks as JSON: a node as `metalcast nodes show --json` prints it, its
        /// hardware report, or a list of disks.
        #[arg(long)]
        disks: Option<PathBuf>,
        /// Firmware to plan for; default: the firmware in the --disks file.
        #[arg(long, value_parser = parse_firmware)]
        firmware: Option<Firmware>,
        /// Seed of the generated UUIDs. The agent uses the node's MAC; default: the MAC in
        /// the --disks file, else "example".
        #[arg(long)]
        seed: Option<String>,
        /// Also print the commands the agent would run, fstab and mdadm.conf.
        #[arg(long)]
        commands: bool,
    },
}

fn parse_firmware(s: &str) -> Result<Firmware, String> {
    match s {
        "bios" => Ok(Firmware::Bios),
        "uefi" => Ok(Firmware::Uefi),
        _ => Err(format!("{s:?}: expected bios or uefi")),
    }
}

pub fn run(command: LayoutCommand) -> Result<()> {
    match command {
        LayoutCommand::Check {
            file,
            disks,
            firmware,
            seed,
            commands,
        } => check(&file, disks.as_deref(), firmware, seed, commands),
    }
}

fn refused(file: &Path, e: LayoutError) -> anyhow::Error {
    let lines: Vec<String> = e.to_string().lines().map(|l| format!("  {l}")).collect();
    anyhow::anyhow!("{} is refused:\n{}", file.display(), lines.join("\n"))
}

fn check(
    file: &Path,
    disks: Option<&Path>,
    firmware: Option<Firmware>,
    seed: Option<String>,
    show_commands: bool,
) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let layout = Layout::from_toml(&text).map_err(|e| refused(file, e))?;
    let Some(disks_file) = disks else {
        println!(
            "{}: valid (schema and references only: pass --disks to plan it against a \
             node's disks)",
            file.display()
        );
        if let Some(d) = &layout.description {
            println!("  {d}");
        }
        return Ok(());
    };
    let node = read_disks(disks_file)?;
    let Some(firmware) = firmware.or(node.firmware) else {
        bail!(
            "{} names no firmware: pass --firmware bios or --firmware uefi",
            disks_file.display()
        );
    };
    let seed = seed
        .or_else(|| node.mac.map(|m| m.to_string()))
        .unwrap_or_else(|| "example".to_owned());
    let plan = metalcast_layout::plan(&layout, &node.disks, firmware, &seed)
        .map_err(|e| refused(file, e))?;
    print!("{plan}");
    if show_commands {
        println!("\ncommands (filesystems mounted under /target):");
        for action in metalcast_layout::commands(&plan, "/target") {
            println!("  {action}");
        }
        println!("\nboot loader, after the image:");
        for action in metalcast_layout::bootloader_commands(&plan, "/target") {
            println!("  {action}");
        }
        print!("\n/etc/fstab:\n{}", metalcast_layout::fstab(&plan));
        if !plan.raids.is_empty() {
            print!("\nmdadm.conf:\n{}", metalcast_layout::mdadm_conf(&plan));
        }
    }
    Ok(())
}

/// Disks, firmware and MAC from whichever JSON shape the file holds.
struct NodeDisks {
    disks: Vec<Disk>,
    firmware: Option<Firmware>,
    mac: Option<MacAddr>,
}

/// A node as the API returns it; only what planning needs.
#[derive(Deserialize)]
struct NodeJson {
    mac: MacAddr,
    hardware: Option<Hardware>,
}

fn read_disks(path: &Path) -> Result<NodeDisks> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let what = |shape: &str| format!("reading {} as {shape}", path.display());
    if value.is_array() {
        let disks = serde_json::from_value(value).with_context(|| what("a list of disks"))?;
        return Ok(NodeDisks {
            disks,
            firmware: None,
            mac: None,
        });
    }
    if value.get("mac").is_some() {
        let node: NodeJson = serde_json::from_value(value).with_context(|| what("a node"))?;
        let Some(hw) = node.hardware else {
            bail!(
                "node {} has not reported its hardware yet (boot it into the agent first)",
                node.mac
            );
        };
        return Ok(NodeDisks {
            disks: hw.disks,
            firmware: Some(hw.firmware),
            mac: Some(node.mac),
        });
    }
    let hw: Hardware = serde_json::from_value(value).with_context(|| what("a hardware report"))?;
    Ok(NodeDisks {
        disks: hw.disks,
        firmware: Some(hw.firmware),
        mac: None,
    })
}
