//! The `[dhcp]` configuration section: serde types with defaults, and their validation.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use metalcast_proto::MacAddr;
use serde::{Deserialize, Serialize};

/// Seven days: a node that spends hours loading an image never has to renew mid-way.
pub const DEFAULT_LEASE_TIME_SECS: u32 = 7 * 24 * 3600;
/// How long after a completed TFTP transfer an iPXE request from that MAC gets the script URL.
pub const DEFAULT_CHAINLOAD_WINDOW_SECS: u32 = 120;
/// Quarantine for an address a client declined (RFC 2131 4.3.3), as Kea's probation period.
pub const DEFAULT_DECLINE_SECS: u32 = 24 * 3600;
pub const DEFAULT_BIOS_FILE: &str = "undionly.kpxe";
pub const DEFAULT_UEFI_FILE: &str = "ipxe.efi";

/// Longest boot file name: the BOOTP `file` field is 128 bytes including its NUL.
const MAX_BOOT_FILE: usize = 127;
/// IFNAMSIZ is 16 including the NUL.
const MAX_IFNAME: usize = 15;
/// Shortest lease we accept; shorter leases make clients renew faster than a boot can finish.
const MIN_LEASE_TIME_SECS: u32 = 60;

/// The `[dhcp]` section. Every key has a default except what a site must decide: the
/// interfaces to serve and, in authoritative mode, the pools.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DhcpConfig {
    pub mode: Mode,
    /// Interfaces to serve, by name (`eth1`). Each needs an IPv4 address.
    pub interfaces: Vec<String>,
    pub unknown_nodes: UnknownNodes,
    pub lease_time_secs: u32,
    /// How long a declined address stays out of the pool.
    pub decline_secs: u32,
    pub pools: Vec<PoolConfig>,
    pub reservations: Vec<Reservation>,
    pub boot: BootFiles,
    pub chainload: Chainload,
    pub chainload_window_secs: u32,
}

impl Default for DhcpConfig {
    fn default() -> Self {
        DhcpConfig {
            mode: Mode::Authoritative,
            interfaces: Vec::new(),
            unknown_nodes: UnknownNodes::Discover,
            lease_time_secs: DEFAULT_LEASE_TIME_SECS,
            decline_secs: DEFAULT_DECLINE_SECS,
            pools: Vec::new(),
            reservations: Vec::new(),
            boot: BootFiles::default(),
            chainload: Chainload::Always,
            chainload_window_secs: DEFAULT_CHAINLOAD_WINDOW_SECS,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// We own the addresses: pools, reservations, leases.
    Authoritative,
    /// Another server owns the addresses; we only add boot information for PXE clients.
    Proxy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnknownNodes {
    /// Answer MACs we do not know, so they boot the agent and register.
    Discover,
    /// Do not answer MACs we do not know at all.
    Ignore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Chainload {
    /// Every client gets our iPXE binary over TFTP first, even one already running iPXE.
    Always,
    /// Clients already running iPXE get the script URL at once.
    NonIpxe,
}

/// One address pool: a subnet (a link), the dynamic range in it and what clients are told.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// The link's network, `10.0.0.0/24`.
    pub subnet: Ipv4Net,
    /// First and last address handed out dynamically, inclusive.
    pub range: [Ipv4Addr; 2],
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<Ipv4Addr>,
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

/// A fixed address for one MAC. It applies on the link whose pool subnet holds `ip`; the
/// address may lie inside or outside that pool's dynamic range.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Reservation {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// TFTP file names of the iPXE builds, relative to the TFTP root.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BootFiles {
    /// For PC BIOS clients (option 93 = 0).
    pub bios: String,
    /// For x86 UEFI clients (option 93 = 6, 7 or 9).
    pub uefi: String,
}

impl Default for BootFiles {
    fn default() -> Self {
        BootFiles {
            bios: DEFAULT_BIOS_FILE.to_string(),
            uefi: DEFAULT_UEFI_FILE.to_string(),
        }
    }
}

/// A configuration value that cannot work, named by its key path inside `[dhcp]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        reason: reason.into(),
    }
}

impl DhcpConfig {
    /// Checks everything that can be checked without the network; the first problem found is
    /// returned, naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_interfaces()?;
        if self.lease_time_secs < MIN_LEASE_TIME_SECS || self.lease_time_secs == u32::MAX {
            return Err(invalid(
                "lease_time_secs",
                format!("must be between {MIN_LEASE_TIME_SECS} and {}", u32::MAX - 1),
            ));
        }
        if self.decline_secs == 0 {
            return Err(invalid("decline_secs", "must be at least 1"));
        }
        if self.chainload_window_secs == 0 {
            return Err(invalid("chainload_window_secs", "must be at least 1"));
        }
        for (field, name) in [
            ("boot.bios", &self.boot.bios),
            ("boot.uefi", &self.boot.uefi),
        ] {
            if name.is_empty() || name.len() > MAX_BOOT_FILE || name.contains('\0') {
                return Err(invalid(
                    field,
                    format!("must be 1 to {MAX_BOOT_FILE} bytes without NUL"),
                ));
            }
        }
        match self.mode {
            Mode::Authoritative if self.pools.is_empty() => Err(invalid(
                "pools",
                "authoritative mode needs at least one pool",
            )),
            Mode::Authoritative => {
                self.validate_pools()?;
                self.validate_reservations()
            }
            Mode::Proxy if !self.pools.is_empty() => Err(invalid(
                "pools",
                "proxy mode hands out no addresses; remove the pools or use mode = \"authoritative\"",
            )),
            Mode::Proxy if !self.reservations.is_empty() => Err(invalid(
                "reservations",
                "proxy mode hands out no addresses; remove the reservations or use mode = \"authoritative\"",
            )),
            Mode::Proxy => Ok(()),
        }
    }

    fn validate_interfaces(&self) -> Result<(), ConfigError> {
        if self.interfaces.is_empty() {
            return Err(invalid(
                "interfaces",
                "name at least one interface to serve",
            ));
        }
        let mut seen = HashSet::new();
        for (i, name) in self.interfaces.iter().enumerate() {
            let field = format!("interfaces[{i}]");
            if name.is_empty()
                || name.len() > MAX_IFNAME
                || name
                    .bytes()
                    .any(|b| b == b'/' || b.is_ascii_whitespace() || b == 0)
            {
                return Err(invalid(field, format!("{name:?} is not an interface name")));
            }
            if !seen.insert(name) {
                return Err(invalid(field, format!("{name} is listed twice")));
            }
        }
        Ok(())
    }

    fn validate_pools(&self) -> Result<(), ConfigError> {
        for (i, pool) in self.pools.iter().enumerate() {
            let at = |key: &str| format!("pools[{i}].{key}");
            let net = pool.subnet;
            if net.trunc() != net {
                return Err(invalid(
                    at("subnet"),
                    format!("{net} has host bits set; the network is {}", net.trunc()),
                ));
            }
            if net.prefix_len() > 30 {
                return Err(invalid(
                    at("subnet"),
                    format!("{net} leaves no room for clients"),
                ));
            }
            let [start, end] = pool.range;
            if start > end {
                return Err(invalid(
                    at("range"),
                    format!("start {start} is after end {end}"),
                ));
            }
            for ip in [start, end] {
                if !host_in(net, ip) {
                    return Err(invalid(
                        at("range"),
                        format!("{ip} is not a host address of {net}"),
                    ));
                }
            }
            if let Some(router) = pool.router {
                if !host_in(net, router) {
                    return Err(invalid(
                        at("router"),
                        format!("{router} is not a host address of {net}"),
                    ));
                }
                if (start..=end).contains(&router) {
                    return Err(invalid(
                        at("router"),
                        format!("{router} lies inside the range {start}-{end}"),
                    ));
                }
            }
            if let Some(domain) = pool.domain.as_ref().filter(|d| !valid_domain(d)) {
                return Err(invalid(
                    at("domain"),
                    format!("{domain:?} is not a domain name"),
                ));
            }
            if pool.dns.len() > 8 {
                return Err(invalid(at("dns"), "at most 8 servers"));
            }
            for (j, other) in self.pools[..i].iter().enumerate() {
                if other.subnet.contains(&net.network()) || net.contains(&other.subnet.network()) {
                    return Err(invalid(
                        at("subnet"),
                        format!("{net} overlaps pools[{j}].subnet {}", other.subnet),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_reservations(&self) -> Result<(), ConfigError> {
        let mut macs = HashSet::new();
        let mut ips = HashSet::new();
        for (i, r) in self.reservations.iter().enumerate() {
            let at = |key: &str| format!("reservations[{i}].{key}");
            if !macs.insert(r.mac) {
                return Err(invalid(at("mac"), format!("{} is reserved twice", r.mac)));
            }
            if !ips.insert(r.ip) {
                return Err(invalid(at("ip"), format!("{} is reserved twice", r.ip)));
            }
            if !self.pools.iter().any(|p| host_in(p.subnet, r.ip)) {
                return Err(invalid(
                    at("ip"),
                    format!("{} is not a host address of any pool's subnet", r.ip),
                ));
            }
            if let Some(router) = self
                .pools
                .iter()
                .find_map(|p| p.router.filter(|&g| g == r.ip))
            {
                return Err(invalid(at("ip"), format!("{router} is a pool's router")));
            }
            if let Some(name) = r.hostname.as_ref().filter(|h| !valid_label(h)) {
                return Err(invalid(
                    at("hostname"),
                    format!(
                        "{name:?} must be 1-63 letters, digits or '-', not starting or ending with '-'"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `ip` is in `net` and is neither its network nor its broadcast address.
pub(crate) fn host_in(net: Ipv4Net, ip: Ipv4Addr) -> bool {
    net.contains(&ip) && ip != net.network() && ip != net.broadcast()
}

fn valid_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn valid_domain(s: &str) -> bool {
    s.len() <= 253 && s.trim_end_matches('.').split('.').all(valid_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> DhcpConfig {
        toml::from_str(
            r#"
            interfaces = ["eth1"]
            [[pools]]
            subnet = "10.0.0.0/24"
            range = ["10.0.0.100", "10.0.0.199"]
            router = "10.0.0.1"
            dns = ["10.0.0.1"]
            domain = "lab.example"
            [[reservations]]
            mac = "52:54:00:00:00:01"
            ip = "10.0.0.10"
            hostname = "node01"
            "#,
        )
        .unwrap()
    }

    fn field_of(cfg: &DhcpConfig) -> String {
        cfg.validate().unwrap_err().field
    }

    #[test]
    fn defaults_apply_to_missing_keys() {
        let cfg = base();
        assert_eq!(cfg.mode, Mode::Authoritative);
        assert_eq!(cfg.unknown_nodes, UnknownNodes::Discover);
        assert_eq!(cfg.lease_time_secs, 604_800);
        assert_eq!(cfg.chainload, Chainload::Always);
        assert_eq!(cfg.chainload_window_secs, 120);
        assert_eq!(cfg.boot.bios, "undionly.kpxe");
        assert_eq!(cfg.boot.uefi, "ipxe.efi");
        cfg.validate().unwrap();
    }

    #[test]
    fn kebab_case_enums_parse() {
        let cfg: DhcpConfig = toml::from_str(
            "mode = \"proxy\"\ninterfaces = [\"eth0\"]\nchainload = \"non-ipxe\"\nunknown_nodes = \"ignore\"",
        )
        .unwrap();
        assert_eq!(cfg.mode, Mode::Proxy);
        assert_eq!(cfg.chainload, Chainload::NonIpxe);
        assert_eq!(cfg.unknown_nodes, UnknownNodes::Ignore);
        cfg.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err =
            toml::from_str::<DhcpConfig>("interfaces = [\"eth0\"]\nleasetime = 5").unwrap_err();
        assert!(err.to_string().contains("leasetime"), "{err}");
        let err = toml::from_str::<DhcpConfig>("[boot]\nefi = \"x\"").unwrap_err();
        assert!(err.to_string().contains("efi"), "{err}");
    }

    #[test]
    fn each_problem_names_its_field() {
        let mut c = base();
        c.pools[0].range = [Ipv4Addr::new(10, 0, 0, 199), Ipv4Addr::new(10, 0, 0, 100)];
        assert_eq!(field_of(&c), "pools[0].range");

        let mut c = base();
        c.pools[0].range[1] = Ipv4Addr::new(10, 0, 1, 5);
        assert_eq!(field_of(&c), "pools[0].range");

        let mut c = base();
        c.pools[0].range[1] = Ipv4Addr::new(10, 0, 0, 255);
        assert_eq!(
            field_of(&c),
            "pools[0].range",
            "broadcast address is not a host"
        );

        let mut c = base();
        c.pools[0].subnet = "10.0.0.5/24".parse().unwrap();
        assert_eq!(field_of(&c), "pools[0].subnet");

        let mut c = base();
        c.pools.push(c.pools[0].clone());
        c.pools[1].subnet = "10.0.0.0/16".parse().unwrap();
        c.pools[1].range = [Ipv4Addr::new(10, 0, 5, 1), Ipv4Addr::new(10, 0, 5, 9)];
        c.pools[1].router = None;
        assert_eq!(field_of(&c), "pools[1].subnet");

        let mut c = base();
        c.pools[0].router = Some(Ipv4Addr::new(10, 0, 0, 150));
        assert_eq!(field_of(&c), "pools[0].router");

        let mut c = base();
        c.pools[0].domain = Some("bad domain".into());
        assert_eq!(field_of(&c), "pools[0].domain");

        let mut c = base();
        c.reservations[0].ip = Ipv4Addr::new(192, 168, 1, 5);
        assert_eq!(field_of(&c), "reservations[0].ip");

        let mut c = base();
        c.reservations.push(c.reservations[0].clone());
        c.reservations[1].ip = Ipv4Addr::new(10, 0, 0, 11);
        assert_eq!(field_of(&c), "reservations[1].mac");

        let mut c = base();
        c.reservations.push(c.reservations[0].clone());
        c.reservations[1].mac = "52:54:00:00:00:02".parse().unwrap();
        assert_eq!(field_of(&c), "reservations[1].ip");

        let mut c = base();
        c.reservations[0].hostname = Some("-x".into());
        assert_eq!(field_of(&c), "reservations[0].hostname");

        let mut c = base();
        c.interfaces.clear();
        assert_eq!(field_of(&c), "interfaces");

        let mut c = base();
        c.interfaces.push("eth1".into());
        assert_eq!(field_of(&c), "interfaces[1]");

        let mut c = base();
        c.lease_time_secs = 10;
        assert_eq!(field_of(&c), "lease_time_secs");

        let mut c = base();
        c.boot.uefi = "x".repeat(128);
        assert_eq!(field_of(&c), "boot.uefi");

        let mut c = base();
        c.pools.clear();
        c.reservations.clear();
        assert_eq!(field_of(&c), "pools");

        let mut c = base();
        c.mode = Mode::Proxy;
        assert_eq!(field_of(&c), "pools");
    }

    const DOC: &str = include_str!("../../../docs/dhcp.md");

    /// Every `toml` block of docs/dhcp.md, as the `[dhcp]` section it shows.
    fn documented_examples() -> Vec<DhcpConfig> {
        #[derive(Deserialize)]
        struct File {
            dhcp: DhcpConfig,
        }
        DOC.split("```toml\n")
            .skip(1)
            .map(|block| {
                let text = block.split("```").next().unwrap();
                toml::from_str::<File>(text)
                    .unwrap_or_else(|e| panic!("{e}\n{text}"))
                    .dhcp
            })
            .collect()
    }

    #[test]
    fn documented_examples_are_valid() {
        let examples = documented_examples();
        assert_eq!(examples.len(), 2);
        for cfg in &examples {
            cfg.validate().unwrap();
        }
        assert_eq!(examples[0].boot.uefi, "snponly.efi");
        assert_eq!(examples[1].mode, Mode::Proxy);
    }

    #[test]
    fn every_key_is_documented() {
        fn keys(prefix: &str, value: &toml::Value, out: &mut Vec<String>) {
            match value {
                toml::Value::Table(t) => {
                    for (k, v) in t {
                        let key = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        out.push(key.clone());
                        keys(&key, v, out);
                    }
                }
                toml::Value::Array(items) => {
                    for item in items.iter().filter(|i| i.is_table()) {
                        keys(&format!("{prefix}[]"), item, out);
                    }
                }
                _ => {}
            }
        }
        let mut all = Vec::new();
        keys(
            "",
            &toml::Value::try_from(&documented_examples()[0]).unwrap(),
            &mut all,
        );
        assert!(all.len() > 20, "{all:?}");
        for key in all {
            assert!(
                DOC.contains(&format!("| `{key}` |")),
                "{key} is not in the key table of docs/dhcp.md"
            );
        }
    }

    #[test]
    fn error_message_reads_as_field_then_reason() {
        let mut c = base();
        c.pools[0].range = [Ipv4Addr::new(10, 0, 0, 199), Ipv4Addr::new(10, 0, 0, 100)];
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "pools[0].range: start 10.0.0.199 is after end 10.0.0.100"
        );
    }
}
