//! `metalcast` — the admin command line. Every command is a call to the appliance's HTTP API.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use metalcast_proto::{MacAddr, NodeSettings, NodeState, credentials};

mod client;
mod image;
mod layout;
mod mcast;
mod render;

use client::Client;

#[derive(Parser)]
#[command(name = "metalcast", version, about = "Drive a metalcast appliance")]
struct Cli {
    /// Base URL of the appliance's HTTP service.
    #[arg(
        long,
        env = "METALCAST_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// Admin bearer token (made by `metalcastd token create`).
    #[arg(long, env = "METALCAST_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Nodes the appliance knows.
    #[command(subcommand, visible_alias = "node")]
    Nodes(NodesCommand),
    /// Disk layouts, checked locally (no appliance needed).
    #[command(subcommand)]
    Layout(layout::LayoutCommand),
    /// Images: import, list, show, rollback, gc.
    #[command(subcommand, visible_alias = "images")]
    Image(image::ImageCommand),
    /// Multicast sessions: start one for an image and nodes, show progress, stop.
    #[command(subcommand)]
    Mcast(mcast::McastCommand),
}

#[derive(Subcommand)]
enum NodesCommand {
    /// One line per node: MAC, state, firmware, disks, address, last seen.
    List {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A node's hardware and its events with per-phase timings.
    Show {
        mac: MacAddr,
        /// Print the API's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Set a node's state (discovered, provisioning, provisioned).
    SetState { mac: MacAddr, state: NodeState },
    /// Change a node's settings; a MAC the appliance has not seen yet is enrolled.
    Set {
        mac: MacAddr,
        #[arg(long)]
        hostname: Option<String>,
        /// Name of a layout in the appliance's layouts directory.
        #[arg(long)]
        layout: Option<String>,
        /// Image to install: NAME follows its `latest`, NAME@VERSION pins one version.
        #[arg(long, value_parser = image::parse_image_ref)]
        image: Option<String>,
        #[arg(long)]
        state: Option<NodeState>,
        /// crypt(3) hash of root's password in the installed system (`mkpasswd -m yescrypt`);
        /// an empty string removes it.
        #[arg(long, value_parser = parse_password_hash)]
        root_password_hash: Option<String>,
        /// File of SSH public keys (authorized_keys lines) for root; replaces the node's keys,
        /// an empty file removes them.
        #[arg(long)]
        ssh_key_file: Option<PathBuf>,
    },
    /// Reinstall a node on its next network boot (sets its state to provisioning; its disks
    /// will be wiped).
    Reimage { mac: MacAddr },
    /// Dry run: the node's layout planned against its registered disks.
    Plan { mac: MacAddr },
}

fn parse_password_hash(text: &str) -> Result<String, String> {
    if !text.is_empty() {
        credentials::validate_password_hash(text).map_err(|e| e.to_string())?;
    }
    Ok(text.to_string())
}

/// The key lines of an authorized_keys file, each checked; blank lines and comments skipped.
fn read_keys(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading SSH keys from {}", path.display()))?;
    let keys: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    for (i, key) in keys.iter().enumerate() {
        credentials::validate_authorized_key(key)
            .with_context(|| format!("{}: key {}", path.display(), i + 1))?;
    }
    Ok(keys)
}

fn main() {
    let cli = Cli::parse();
    if let Err(err) = run(cli) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let Cli {
        url,
        token,
        command,
    } = cli;
    let connect = || -> Result<Client> {
        let token = token.context(
            "no API token: pass --token or set METALCAST_TOKEN (make one with `metalcastd token create`)",
        )?;
        Ok(Client::new(&url, &token))
    };
    match command {
        Command::Layout(command) => layout::run(command),
        Command::Image(command) => image::run(&connect()?, command),
        Command::Mcast(command) => mcast::run(&connect()?, command),
        Command::Nodes(command) => nodes(&connect()?, command),
    }
}

fn nodes(client: &Client, command: NodesCommand) -> Result<()> {
    match command {
        NodesCommand::List { json } => nodes_list(client, json),
        NodesCommand::Show { mac, json } => nodes_show(client, mac, json),
        NodesCommand::SetState { mac, state } => nodes_set_state(client, mac, state),
        NodesCommand::Set {
            mac,
            hostname,
            layout,
            image,
            state,
            root_password_hash,
            ssh_key_file,
        } => {
            let settings = NodeSettings {
                hostname,
                layout,
                image,
                state,
                root_password_hash,
                ssh_authorized_keys: ssh_key_file.as_deref().map(read_keys).transpose()?,
            };
            anyhow::ensure!(
                settings != NodeSettings::default(),
                "nothing to set: give --hostname, --layout, --image, --state, \
                 --root-password-hash or --ssh-key-file"
            );
            let node = client.update_node(mac, &settings)?;
            print!("{}", render::node_settings(&node));
            Ok(())
        }
        NodesCommand::Reimage { mac } => {
            let node = client.set_state(mac, NodeState::Provisioning)?;
            println!(
                "{} is now {}: it is reinstalled with {} on its next network boot",
                node.mac,
                node.state,
                node.image
                    .as_deref()
                    .unwrap_or("no image (set one with --image)")
            );
            Ok(())
        }
        NodesCommand::Plan { mac } => {
            let plan = client.layout_plan(mac)?;
            println!("layout {} on {mac}:\n{}", plan.layout, plan.plan.trim_end());
            Ok(())
        }
    }
}

fn nodes_list(client: &Client, json: bool) -> Result<()> {
    let nodes = client.nodes()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&nodes)?);
    } else {
        print!("{}", render::node_table(&nodes, render::now_ms()));
    }
    Ok(())
}

fn nodes_show(client: &Client, mac: MacAddr, json: bool) -> Result<()> {
    let detail = client.node(mac)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&detail)?);
    } else {
        print!("{}", render::node_detail(&detail));
    }
    Ok(())
}

fn nodes_set_state(client: &Client, mac: MacAddr, state: NodeState) -> Result<()> {
    let node = client.set_state(mac, state)?;
    println!("{} is now {}", node.mac, node.state);
    Ok(())
}
