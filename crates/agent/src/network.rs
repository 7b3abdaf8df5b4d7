//! Bringing up the NIC the node booted from, with busybox `ip` and `udhcpc`.

use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use metalcast_proto::MacAddr;
use tracing::{info, warn};

/// The script udhcpc runs on lease events; the initramfs installs it (initramfs/udhcpc.script).
const UDHCPC_SCRIPT: &str = "/usr/share/udhcpc/default.script";
/// Drivers bind asynchronously after modprobe returns, so the interface may show up late.
const WAIT_FOR_INTERFACE: Duration = Duration::from_secs(10);
/// Each udhcpc run sends 5 discovers 2 s apart; a DHCP server that is restarting gets this
/// many runs with growing pauses before the agent gives up.
const DHCP_ATTEMPTS: u32 = 4;

/// The boot NIC, configured.
pub struct Link {
    pub iface: String,
    /// IPv4 address with prefix length, e.g. `10.0.0.23/24`.
    pub addr: String,
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(
        "no network interface has MAC {mac} after {waited_secs} s (is its driver in modules.list?)"
    )]
    NoInterface { mac: MacAddr, waited_secs: u64 },
    #[error("cannot run {command}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed ({status})")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
    },
    #[error("no DHCP lease on {iface} after {attempts} attempts")]
    NoLease { iface: String, attempts: u32 },
    #[error("{iface} has no IPv4 address after udhcpc reported a lease")]
    NoAddress { iface: String },
}

/// Finds the interface with `mac`, brings it up and leases an address for it by DHCP.
pub fn bring_up(mac: MacAddr) -> Result<Link, NetError> {
    let iface = wait_for_interface(mac)?;
    info!("boot NIC {mac} is {iface}");
    run("ip", &["link", "set", "lo", "up"])?;
    run("ip", &["link", "set", &iface, "up"])?;

    let mut pause = Duration::from_secs(2);
    for attempt in 1..=DHCP_ATTEMPTS {
        info!("DHCP on {iface} (attempt {attempt}/{DHCP_ATTEMPTS})");
        let args = [
            "-i",
            &iface,
            "-f",
            "-q",
            "-n",
            "-t",
            "5",
            "-T",
            "2",
            "-s",
            UDHCPC_SCRIPT,
        ];
        match run("udhcpc", &args) {
            Ok(()) => {
                let out = output("ip", &["-4", "-o", "addr", "show", "dev", &iface])?;
                let addr = parse_ipv4(&out).ok_or_else(|| NetError::NoAddress {
                    iface: iface.clone(),
                })?;
                return Ok(Link { iface, addr });
            }
            Err(e @ NetError::Spawn { .. }) => return Err(e),
            Err(e) if attempt < DHCP_ATTEMPTS => {
                warn!("{e}; trying again in {} s", pause.as_secs());
                sleep(pause);
                pause *= 2;
            }
            Err(_) => {}
        }
    }
    Err(NetError::NoLease {
        iface,
        attempts: DHCP_ATTEMPTS,
    })
}

fn wait_for_interface(mac: MacAddr) -> Result<String, NetError> {
    let start = Instant::now();
    loop {
        if let Some(name) = find_interface(&read_interfaces(), mac) {
            return Ok(name);
        }
        if start.elapsed() >= WAIT_FOR_INTERFACE {
            return Err(NetError::NoInterface {
                mac,
                waited_secs: WAIT_FOR_INTERFACE.as_secs(),
            });
        }
        sleep(Duration::from_millis(200));
    }
}

/// `(name, address file contents)` for every interface under /sys/class/net.
fn read_interfaces() -> Vec<(String, String)> {
    let Ok(dir) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let address =
                std::fs::read_to_string(Path::new("/sys/class/net").join(&name).join("address"))
                    .ok()?;
            Some((name, address))
        })
        .collect()
}

/// The interface whose address is `mac`; the first by name if several share it.
pub fn find_interface(interfaces: &[(String, String)], mac: MacAddr) -> Option<String> {
    let mut hits: Vec<&String> = interfaces
        .iter()
        .filter(|(_, address)| address.trim().parse::<MacAddr>().is_ok_and(|a| a == mac))
        .map(|(name, _)| name)
        .collect();
    hits.sort();
    hits.first().map(|n| n.to_string())
}

/// The first global IPv4 address in `ip -4 -o addr show` output, e.g. `10.0.0.23/24`.
pub fn parse_ipv4(ip_output: &str) -> Option<String> {
    ip_output.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        words.find(|w| *w == "inet")?;
        let addr = words.next()?;
        let (ip, prefix) = addr.split_once('/')?;
        ip.parse::<std::net::Ipv4Addr>().ok()?;
        prefix.parse::<u8>().ok().filter(|p| *p <= 32)?;
        Some(addr.to_string())
    })
}

fn run(program: &str, args: &[&str]) -> Result<(), NetError> {
    let command = describe(program, args);
    let status = Command::new(program)
        .args(args)
        .status()
        .map_err(|source| NetError::Spawn {
            command: command.clone(),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(NetError::Failed { command, status })
    }
}

fn output(program: &str, args: &[&str]) -> Result<String, NetError> {
    let command = describe(program, args);
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| NetError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetError::Failed {
            command,
            status: out.status,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn describe(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    #[test]
    fn finds_the_interface_by_mac_in_any_case() {
        let ifs = vec![
            ("lo".to_string(), "00:00:00:00:00:00\n".to_string()),
            ("eth1".to_string(), "52:54:00:aa:bb:cc\n".to_string()),
            ("eth0".to_string(), "52:54:00:12:34:56\n".to_string()),
            ("sit0".to_string(), "0.0.0.0\n".to_string()),
        ];
        assert_eq!(
            find_interface(&ifs, mac("52:54:00:AA:BB:CC")),
            Some("eth1".to_string())
        );
        assert_eq!(
            find_interface(&ifs, mac("52:54:00:12:34:56")),
            Some("eth0".to_string())
        );
        assert_eq!(find_interface(&ifs, mac("52:54:00:00:00:99")), None);
    }

    #[test]
    fn several_with_one_mac_pick_the_first_name() {
        let ifs = vec![
            ("eth2".to_string(), "52:54:00:12:34:56".to_string()),
            ("eth0".to_string(), "52:54:00:12:34:56".to_string()),
        ];
        assert_eq!(
            find_interface(&ifs, mac("52:54:00:12:34:56")),
            Some("eth0".to_string())
        );
    }

    #[test]
    fn parses_busybox_ip_output() {
        let out = "2: eth0    inet 10.0.2.15/24 brd 10.0.2.255 scope global eth0\\       valid_lft forever preferred_lft forever\n";
        assert_eq!(parse_ipv4(out), Some("10.0.2.15/24".to_string()));
        assert_eq!(parse_ipv4(""), None);
        assert_eq!(parse_ipv4("2: eth0 inet6 fe80::1/64 scope link"), None);
        assert_eq!(parse_ipv4("2: eth0 inet 10.0.2.300/24"), None);
        assert_eq!(parse_ipv4("2: eth0 inet 10.0.2.3/33"), None);
        assert_eq!(parse_ipv4("2: eth0 inet"), None);
    }
}
