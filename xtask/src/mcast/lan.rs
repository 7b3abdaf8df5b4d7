//! A switched LAN made of namespaces: a "switch" namespace with a bridge (IGMP snooping with an
//! IGMPv3 querier), one sender and N receivers, each in its own namespace on a veth port. Loss is
//! injected by nftables on the receivers' input, the sender's rate is capped by `tc tbf`.
//! Everything goes away with the namespaces on drop.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{Context, Result};

use crate::lab::{self, Netns};

/// The host side of every port.
pub const IFACE: &str = "eth0";
const BRIDGE: &str = "br0";

pub struct Host {
    pub ns: Netns,
    pub addr: Ipv4Addr,
}

impl Host {
    /// A command that runs on this host.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.ns.command(program)
    }
}

pub struct Lan {
    pub sender: Host,
    pub receivers: Vec<Host>,
    // Dropped last: the ports' peers live here.
    _switch: Netns,
}

impl Lan {
    /// 10.79.0.0/24: the bridge is .254, the sender .1, receiver i is .(10 + i).
    pub fn create(receivers: usize) -> Result<Lan> {
        let switch = Netns::create("msw")?;
        switch.bridge(BRIDGE, "10.79.0.254/24")?;
        let port = |label: &str, host: u8, index: usize| -> Result<Host> {
            let ns = Netns::create(label)?;
            let peer = format!("p{index}");
            switch.ip(&[
                "link", "add", &peer, "type", "veth", "peer", "name", IFACE, "netns", &ns.name,
            ])?;
            switch.ip(&["link", "set", &peer, "master", BRIDGE, "up"])?;
            let addr = Ipv4Addr::new(10, 79, 0, host);
            // udpcast needs a broadcast address on the interface, or it waits forever.
            ns.ip(&[
                "addr",
                "add",
                &format!("{addr}/24"),
                "brd",
                "+",
                "dev",
                IFACE,
            ])?;
            ns.ip(&["link", "set", IFACE, "up"])?;
            Ok(Host { ns, addr })
        };
        let sender = port("msnd", 1, 0)?;
        let receivers = (0..receivers)
            .map(|i| port(&format!("mr{i}"), 10 + i as u8, i + 1))
            .collect::<Result<Vec<_>>>()?;
        Ok(Lan {
            sender,
            receivers,
            _switch: switch,
        })
    }

    /// Drops `percent`% of the UDP datagrams every receiver is sent (all tools, all ports,
    /// data and control alike), at random: `numgen random mod 100 < N drop`.
    pub fn set_loss(&self, percent: u32) -> Result<()> {
        for host in &self.receivers {
            let nft = |args: &[&str]| lab::run(host.command("nft").args(args)).map(drop);
            let _ = lab::run(
                host.command("nft")
                    .args(["delete", "table", "ip", "mcloss"]),
            );
            if percent == 0 {
                continue;
            }
            nft(&["add", "table", "ip", "mcloss"])?;
            nft(&[
                "add",
                "chain",
                "ip",
                "mcloss",
                "input",
                "{ type filter hook input priority 0; }",
            ])?;
            nft(&[
                "add",
                "rule",
                "ip",
                "mcloss",
                "input",
                "meta",
                "l4proto",
                "udp",
                "numgen",
                "random",
                "mod",
                "100",
                "<",
                &percent.to_string(),
                "drop",
            ])?;
        }
        Ok(())
    }

    /// Caps the sender's link with a token bucket filter.
    pub fn cap_sender(&self, mbit: u32) -> Result<()> {
        lab::run(self.sender.command("tc").args([
            "qdisc",
            "replace",
            "dev",
            IFACE,
            "root",
            "tbf",
            "rate",
            &format!("{mbit}mbit"),
            "burst",
            "256kb",
            "latency",
            "50ms",
        ]))
        .map(drop)
    }

    /// Datagrams the sender's qdisc has dropped so far (a full tbf queue): loss that the
    /// sender itself caused, which the bench reports beside the injected loss.
    pub fn sender_drops(&self) -> Result<u64> {
        let out = lab::run(
            self.sender
                .command("tc")
                .args(["-s", "qdisc", "show", "dev", IFACE]),
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split("dropped ")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no drop count in `tc -s qdisc`: {text}"))
    }
}
