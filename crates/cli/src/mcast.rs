//! `metalcast mcast …`: multicast sessions — open one for an image and a set of nodes, watch
//! every member's progress, stop one.

use anyhow::Result;
use clap::Subcommand;
use metalcast_proto::mcast::SessionId;
use metalcast_proto::{CreateMcastSession, MacAddr};

use crate::client::Client;
use crate::image::parse_image_ref;
use crate::render;

#[derive(Subcommand)]
pub enum McastCommand {
    /// Send an image version to these nodes at once; they join when they next network-boot
    /// with state `provisioning` and this image.
    Start {
        /// `NAME` (its latest) or `NAME@VERSION`: what the nodes install.
        #[arg(value_parser = parse_image_ref)]
        image: String,
        /// Member nodes, by MAC.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<MacAddr>,
        /// Rate ceiling on the wire, Mbit/s (default: the appliance's `mcast.rate_mbit`).
        #[arg(long)]
        rate_mbit: Option<u32>,
    },
    /// Every session, or one, with each member's progress, loss and rate.
    Status {
        id: Option<SessionId>,
        /// Print the API's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Stop a session; members not done fetch the rest over HTTP.
    Stop { id: SessionId },
}

pub fn run(client: &Client, command: McastCommand) -> Result<()> {
    match command {
        McastCommand::Start {
            image,
            nodes,
            rate_mbit,
        } => {
            let status = client.create_session(&CreateMcastSession {
                image,
                nodes,
                rate_mbit,
            })?;
            print!("{}", render::session(&status));
        }
        McastCommand::Status { id, json } => {
            let sessions = match id {
                Some(id) => vec![client.session(id)?],
                None => client.sessions()?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&sessions)?);
            } else if sessions.is_empty() {
                println!("no multicast sessions");
            } else {
                for s in &sessions {
                    print!("{}", render::session(s));
                }
            }
        }
        McastCommand::Stop { id } => {
            let status = client.stop_session(id)?;
            print!("{}", render::session(&status));
        }
    }
    Ok(())
}
