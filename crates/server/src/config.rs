//! `metalcastd.toml`: serde wire types with defaults ([`ConfigFile`]), validated into
//! [`Config`]. Every key is documented in `docs/config.md`; a test fails if one is not.
//!
//! Relative paths are taken relative to the directory of the configuration file, so a
//! config works the same whichever directory `metalcastd` is started from.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use metalcast_dhcp::DhcpConfig;
use metalcast_tftp::TftpConfig;
use serde::{Deserialize, Deserializer};

use crate::http::BootFiles;
use crate::mcast::McastSettings;
use crate::ra::{self, Prefix};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/metalcast";
pub const DEFAULT_LAYOUTS_DIR: &str = "/etc/metalcast/layouts";
pub const DEFAULT_HTTP_PORT: u16 = 8080;
pub const DEFAULT_KERNEL_ARGS: &str = "console=ttyS0,115200 console=tty0";
/// Where Debian's `ipxe` package puts undionly.kpxe, ipxe.efi and snponly.efi.
pub const DEFAULT_IPXE_DIR: &str = "/usr/lib/ipxe";
/// The TFTP root under `data_dir` when `tftp.root` is not set.
const STAGED_TFTP_DIR: &str = "tftp";
pub const DEFAULT_RA_INTERVAL_SECS: u64 = 10;
/// How long node events are kept: long enough to compare this quarter's boots with the last.
pub const DEFAULT_EVENTS_KEEP_DAYS: u64 = 90;
/// 1 TiB: more than any database and log need.
const MAX_IMAGES_RESERVE_MB: u64 = 1 << 20;
/// A century: more than any appliance's life, and far from overflowing milliseconds.
const MAX_EVENTS_KEEP_DAYS: u64 = 36_500;
/// Room left for our own arguments within the kernel's 2048-byte command line (x86).
const MAX_KERNEL_ARGS: usize = 1024;
const MAX_IFNAME: usize = 15;

/// The file as written. Unknown keys are refused everywhere.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default = "default_layouts_dir")]
    pub layouts_dir: PathBuf,
    #[serde(default)]
    pub http: HttpFile,
    pub boot: BootFile,
    #[serde(default = "default_tftp", deserialize_with = "tftp_section")]
    pub tftp: TftpConfig,
    /// Absent: no DHCP service (another DHCP server, or iPXE ROMs configured by hand).
    #[serde(default)]
    pub dhcp: Option<DhcpConfig>,
    #[serde(default)]
    pub ra: RaFile,
    /// Absent: no multicast sessions.
    #[serde(default)]
    pub mcast: Option<McastFile>,
    #[serde(default)]
    pub events: EventsFile,
    #[serde(default)]
    pub images: ImagesFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesFile {
    #[serde(default = "default_images_reserve_mb")]
    pub reserve_mb: u64,
}

impl Default for ImagesFile {
    fn default() -> Self {
        ImagesFile {
            reserve_mb: default_images_reserve_mb(),
        }
    }
}

fn default_images_reserve_mb() -> u64 {
    crate::images::DEFAULT_RESERVE >> 20
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsFile {
    /// 0 keeps events forever.
    #[serde(default = "default_events_keep_days")]
    pub keep_days: u64,
}

impl Default for EventsFile {
    fn default() -> Self {
        EventsFile {
            keep_days: default_events_keep_days(),
        }
    }
}

fn default_events_keep_days() -> u64 {
    DEFAULT_EVENTS_KEEP_DAYS
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McastFile {
    /// Default: the first `dhcp.interfaces` entry.
    #[serde(default)]
    pub interface: Option<String>,
    #[serde(default = "default_mcast_group_base")]
    pub group_base: Ipv4Addr,
    #[serde(default = "default_mcast_port")]
    pub port: u16,
    #[serde(default = "default_mcast_rate")]
    pub rate_mbit: u32,
    #[serde(default = "default_mcast_max_duration")]
    pub max_duration_secs: u64,
    #[serde(default = "default_mcast_member_deadline")]
    pub member_deadline_secs: u64,
    #[serde(default)]
    pub auto_min_nodes: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFile {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

impl Default for HttpFile {
    fn default() -> Self {
        HttpFile {
            listen: default_listen(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootFile {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    #[serde(default = "default_kernel_args")]
    pub kernel_args: String,
    #[serde(default = "default_ipxe_dir")]
    pub ipxe_dir: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaFile {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub interfaces: Vec<String>,
    #[serde(default = "default_ra_interval")]
    pub interval_secs: u64,
    #[serde(default)]
    pub prefix: Option<String>,
}

impl Default for RaFile {
    fn default() -> Self {
        RaFile {
            enabled: false,
            interfaces: Vec::new(),
            interval_secs: default_ra_interval(),
            prefix: None,
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(DEFAULT_DATA_DIR)
}

fn default_layouts_dir() -> PathBuf {
    PathBuf::from(DEFAULT_LAYOUTS_DIR)
}

fn default_listen() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, DEFAULT_HTTP_PORT))
}

fn default_kernel_args() -> String {
    DEFAULT_KERNEL_ARGS.to_string()
}

fn default_ipxe_dir() -> PathBuf {
    PathBuf::from(DEFAULT_IPXE_DIR)
}

fn default_ra_interval() -> u64 {
    DEFAULT_RA_INTERVAL_SECS
}

fn default_tftp() -> TftpConfig {
    TftpConfig {
        root: PathBuf::new(),
        ..TftpConfig::default()
    }
}

/// `[tftp]` as `metalcast_tftp` reads it, except that an unset root stays empty: the
/// appliance then stages its own root under `data_dir` (see [`Config::tftp_stage`]).
fn tftp_section<'de, D: Deserializer<'de>>(d: D) -> Result<TftpConfig, D::Error> {
    let mut table = toml::Table::deserialize(d)?;
    table
        .entry("root")
        .or_insert_with(|| toml::Value::String(String::new()));
    TftpConfig::deserialize(toml::Value::Table(table)).map_err(serde::de::Error::custom)
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// Disk layouts by name: `layouts_dir/NAME.toml`.
    pub layouts_dir: PathBuf,
    pub http_listen: SocketAddr,
    pub boot: BootFiles,
    pub tftp: TftpConfig,
    /// When `tftp.root` is not set: the directory the iPXE builds are copied from into the
    /// staged root `data_dir/tftp`. Copies, not links: Debian links `ipxe.efi` to `/boot`,
    /// and the TFTP server refuses links that leave its root.
    pub tftp_stage: Option<PathBuf>,
    pub dhcp: Option<DhcpConfig>,
    /// `None` when router advertisements are off.
    pub ra: Option<RaConfig>,
    /// `None` when there is no `[mcast]` section.
    pub mcast: Option<McastSettings>,
    /// Events older than this are removed; `None` keeps them forever.
    pub events_keep: Option<Duration>,
    /// Free bytes chunk uploads leave on the data disk.
    pub images_reserve: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaConfig {
    pub interfaces: Vec<String>,
    pub interval: Duration,
    pub prefix: Option<Prefix>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The messages leave the path out: callers say which file they were loading.
    #[error("reading the file")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing TOML")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    /// A value that cannot work, named by its key (`ra.interval_secs`).
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

impl Config {
    /// Read, parse and validate a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let file: ConfigFile = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        Config::validate(file, base)
    }

    /// Check a parsed file; relative paths are made relative to `base`.
    pub fn validate(file: ConfigFile, base: &Path) -> Result<Config, ConfigError> {
        if file.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        for (key, path) in [
            ("boot.kernel", &file.boot.kernel),
            ("boot.initramfs", &file.boot.initramfs),
        ] {
            if path.as_os_str().is_empty() {
                return Err(invalid(key, "must name a file"));
            }
        }
        let args = &file.boot.kernel_args;
        if args.chars().any(char::is_control) {
            // A newline would end the iPXE `kernel` line and start a command of its own.
            return Err(invalid(
                "boot.kernel_args",
                "must be one line without control characters",
            ));
        }
        if args.len() > MAX_KERNEL_ARGS {
            return Err(invalid(
                "boot.kernel_args",
                format!(
                    "is {} bytes; at most {MAX_KERNEL_ARGS} fit on the kernel command line",
                    args.len()
                ),
            ));
        }
        file.tftp
            .validate()
            .map_err(|e| invalid("tftp", e.to_string()))?;
        if let Some(dhcp) = &file.dhcp {
            dhcp.validate()
                .map_err(|e| invalid(format!("dhcp.{}", e.field), e.reason))?;
        }
        let ra = validate_ra(&file.ra)?;
        let keep_days = file.events.keep_days;
        if keep_days > MAX_EVENTS_KEEP_DAYS {
            return Err(invalid(
                "events.keep_days",
                format!(
                    "is {keep_days}; at most {MAX_EVENTS_KEEP_DAYS}, or 0 to keep events forever"
                ),
            ));
        }
        let events_keep = (keep_days > 0).then(|| Duration::from_secs(keep_days * 86_400));
        let reserve_mb = file.images.reserve_mb;
        if reserve_mb > MAX_IMAGES_RESERVE_MB {
            return Err(invalid(
                "images.reserve_mb",
                format!("is {reserve_mb}; at most {MAX_IMAGES_RESERVE_MB}"),
            ));
        }
        let mcast = file
            .mcast
            .as_ref()
            .map(|m| validate_mcast(m, file.dhcp.as_ref()))
            .transpose()?;
        let data_dir = base.join(&file.data_dir);
        let mut tftp = file.tftp;
        let tftp_stage = if tftp.root.as_os_str().is_empty() {
            tftp.root = data_dir.join(STAGED_TFTP_DIR);
            Some(base.join(&file.boot.ipxe_dir))
        } else {
            tftp.root = base.join(&tftp.root);
            None
        };
        Ok(Config {
            layouts_dir: base.join(&file.layouts_dir),
            data_dir,
            http_listen: file.http.listen,
            boot: BootFiles {
                kernel: base.join(&file.boot.kernel),
                initramfs: base.join(&file.boot.initramfs),
                kernel_args: file.boot.kernel_args.trim().to_string(),
            },
            tftp,
            tftp_stage,
            dhcp: file.dhcp,
            ra,
            mcast,
            events_keep,
            images_reserve: reserve_mb << 20,
        })
    }

    /// The iPXE builds DHCP hands out by name (the defaults when DHCP is off, for clients
    /// whose firmware is pointed at this server by another DHCP server).
    pub fn ipxe_files(&self) -> Vec<String> {
        let boot = self
            .dhcp
            .as_ref()
            .map(|dhcp| dhcp.boot.clone())
            .unwrap_or_default();
        let mut names = vec![boot.bios, boot.uefi];
        names.dedup();
        names
    }

    /// Checks against the file system, for `check-config` and start-up: the boot files
    /// must be readable files and the TFTP root a directory. Returns warnings about what
    /// will fail later but need not stop the appliance (a DHCP boot file name missing from
    /// the TFTP root, say).
    pub fn check_files(&self) -> Result<Vec<String>, ConfigError> {
        for (key, path) in [
            ("boot.kernel", &self.boot.kernel),
            ("boot.initramfs", &self.boot.initramfs),
        ] {
            match std::fs::metadata(path) {
                Ok(m) if m.is_file() => {}
                Ok(_) => return Err(invalid(key, format!("{} is not a file", path.display()))),
                Err(e) => {
                    return Err(invalid(
                        key,
                        format!(
                            "{}: {e} (build it with `cargo xtask initramfs`)",
                            path.display()
                        ),
                    ));
                }
            }
        }
        let (root, root_key) = match &self.tftp_stage {
            Some(ipxe_dir) => (ipxe_dir, "boot.ipxe_dir"),
            None => (&self.tftp.root, "tftp.root"),
        };
        if !root.is_dir() {
            return Err(invalid(
                root_key,
                format!(
                    "{} is not a directory (Debian's `ipxe` package provides /usr/lib/ipxe)",
                    root.display()
                ),
            ));
        }
        let mut warnings = Vec::new();
        if let Some(dhcp) = &self.dhcp {
            for (key, name) in [
                ("dhcp.boot.bios", &dhcp.boot.bios),
                ("dhcp.boot.uefi", &dhcp.boot.uefi),
            ] {
                if !root.join(name).is_file() {
                    warnings.push(format!(
                        "{key}: {name} is not in {root_key} {}; those clients cannot boot",
                        root.display()
                    ));
                }
            }
        }
        Ok(warnings)
    }
}

fn check_ifname(key: String, name: &str) -> Result<(), ConfigError> {
    if name.is_empty()
        || name.len() > MAX_IFNAME
        || name
            .bytes()
            .any(|b| b == b'/' || b.is_ascii_whitespace() || b == 0)
    {
        return Err(invalid(key, format!("{name:?} is not an interface name")));
    }
    Ok(())
}

/// Multicast groups sessions may use: the organization-local scope (RFC 2365), which
/// routers at the site's edge keep inside.
const MCAST_SCOPE: (Ipv4Addr, u8) = (Ipv4Addr::new(239, 0, 0, 0), 8);

fn validate_mcast(
    file: &McastFile,
    dhcp: Option<&DhcpConfig>,
) -> Result<McastSettings, ConfigError> {
    let interface = match (&file.interface, dhcp.and_then(|d| d.interfaces.first())) {
        (Some(name), _) | (None, Some(name)) => name.clone(),
        (None, None) => {
            return Err(invalid(
                "mcast.interface",
                "name the interface sessions are sent on (there is no dhcp.interfaces to default to)",
            ));
        }
    };
    check_ifname("mcast.interface".into(), &interface)?;
    let (scope, bits) = MCAST_SCOPE;
    if u32::from(file.group_base) >> (32 - bits) != u32::from(scope) >> (32 - bits) {
        return Err(invalid(
            "mcast.group_base",
            format!(
                "{} is not in {scope}/{bits} (administratively scoped multicast)",
                file.group_base
            ),
        ));
    }
    if file.port == 0 {
        return Err(invalid("mcast.port", "must not be 0"));
    }
    if !(1..=100_000).contains(&file.rate_mbit) {
        return Err(invalid(
            "mcast.rate_mbit",
            format!("{} is outside 1..=100000", file.rate_mbit),
        ));
    }
    for (key, secs) in [
        ("mcast.max_duration_secs", file.max_duration_secs),
        ("mcast.member_deadline_secs", file.member_deadline_secs),
    ] {
        if !(10..=86_400).contains(&secs) {
            return Err(invalid(key, format!("{secs} is outside 10..=86400")));
        }
    }
    Ok(McastSettings {
        interface,
        group_base: file.group_base,
        port: file.port,
        rate_ceiling: u64::from(file.rate_mbit) * 1_000_000,
        max_duration: Duration::from_secs(file.max_duration_secs),
        member_deadline: Duration::from_secs(file.member_deadline_secs),
        auto_min_nodes: file.auto_min_nodes,
    })
}

fn default_mcast_group_base() -> Ipv4Addr {
    Ipv4Addr::new(239, 77, 0, 0)
}

fn default_mcast_port() -> u16 {
    5000
}

fn default_mcast_rate() -> u32 {
    500
}

fn default_mcast_max_duration() -> u64 {
    3600
}

fn default_mcast_member_deadline() -> u64 {
    1800
}

fn validate_ra(file: &RaFile) -> Result<Option<RaConfig>, ConfigError> {
    for (i, name) in file.interfaces.iter().enumerate() {
        check_ifname(format!("ra.interfaces[{i}]"), name)?;
        if file.interfaces[..i].contains(name) {
            return Err(invalid(
                format!("ra.interfaces[{i}]"),
                format!("{name} is listed twice"),
            ));
        }
    }
    if !(ra::MIN_INTERVAL_SECS..=ra::MAX_INTERVAL_SECS).contains(&file.interval_secs) {
        return Err(invalid(
            "ra.interval_secs",
            format!(
                "{} is outside {}..={} (RFC 4861 MaxRtrAdvInterval)",
                file.interval_secs,
                ra::MIN_INTERVAL_SECS,
                ra::MAX_INTERVAL_SECS
            ),
        ));
    }
    let prefix = file
        .prefix
        .as_deref()
        .map(str::parse::<Prefix>)
        .transpose()
        .map_err(|e| invalid("ra.prefix", e.to_string()))?;
    if !file.enabled {
        return Ok(None);
    }
    if file.interfaces.is_empty() {
        return Err(invalid(
            "ra.interfaces",
            "name at least one interface when ra.enabled = true",
        ));
    }
    Ok(Some(RaConfig {
        interfaces: file.interfaces.clone(),
        interval: Duration::from_secs(file.interval_secs),
        prefix,
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: "test.toml".into(),
            source,
        })?;
        Config::validate(file, Path::new("/etc/metalcast"))
    }

    const MINIMAL: &str =
        "[boot]\nkernel = \"boot/vmlinuz\"\ninitramfs = \"/srv/initramfs.cpio.zst\"\n";

    fn key_of(text: &str) -> String {
        match parse(text) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.data_dir, Path::new("/var/lib/metalcast"));
        assert_eq!(c.http_listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.boot.kernel, Path::new("/etc/metalcast/boot/vmlinuz"));
        assert_eq!(c.boot.initramfs, Path::new("/srv/initramfs.cpio.zst"));
        assert_eq!(c.boot.kernel_args, "console=ttyS0,115200 console=tty0");
        assert_eq!(c.tftp.root, Path::new("/var/lib/metalcast/tftp"));
        assert_eq!(c.tftp_stage.as_deref(), Some(Path::new("/usr/lib/ipxe")));
        assert_eq!(c.tftp.bind, TftpConfig::default().bind);
        assert!(c.dhcp.is_none());
        assert!(c.ra.is_none());
    }

    #[test]
    fn tftp_root_is_staged_unless_set() {
        let c = parse(&format!(
            "{MINIMAL}ipxe_dir = \"ipxe\"\n[tftp]\nmax_blksize = 1400\n"
        ))
        .unwrap();
        assert_eq!(c.tftp.root, Path::new("/var/lib/metalcast/tftp"));
        assert_eq!(
            c.tftp_stage.as_deref(),
            Some(Path::new("/etc/metalcast/ipxe"))
        );
        assert_eq!(c.tftp.max_blksize, 1400);
        let c = parse(&format!("{MINIMAL}[tftp]\nroot = \"tftp\"\n")).unwrap();
        assert_eq!(c.tftp.root, Path::new("/etc/metalcast/tftp"));
        assert_eq!(c.tftp_stage, None);
    }

    #[test]
    fn the_example_parses_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../etc/metalcastd.toml");
        let c = Config::load(&path).unwrap();
        let dhcp = c.dhcp.expect("the example configures DHCP");
        assert_eq!(dhcp.interfaces, vec!["eth1".to_string()]);
        let ra = c.ra.expect("the example enables router advertisements");
        assert_eq!(ra.interfaces, vec!["eth1".to_string()]);
        assert_eq!(ra.interval, Duration::from_secs(10));
        let mcast = c.mcast.expect("the example configures multicast");
        assert_eq!(mcast.interface, "eth1");
        assert_eq!(mcast.rate_ceiling, 500_000_000);
    }

    #[test]
    fn mcast_settings_default_to_the_dhcp_interface_and_are_checked() {
        let c = parse(&format!(
            "{MINIMAL}[mcast]
interface = \"br0\"\n"
        ))
        .unwrap();
        assert_eq!(
            c.mcast,
            Some(McastSettings {
                interface: "br0".into(),
                group_base: Ipv4Addr::new(239, 77, 0, 0),
                port: 5000,
                rate_ceiling: 500_000_000,
                max_duration: Duration::from_secs(3600),
                member_deadline: Duration::from_secs(1800),
                auto_min_nodes: 0,
            })
        );
        assert!(parse(MINIMAL).unwrap().mcast.is_none());
        assert_eq!(key_of(&format!("{MINIMAL}[mcast]\n")), "mcast.interface");
        for (bad, key) in [
            ("group_base = \"224.0.0.0\"", "mcast.group_base"),
            ("rate_mbit = 0", "mcast.rate_mbit"),
            ("port = 0", "mcast.port"),
            ("max_duration_secs = 1", "mcast.max_duration_secs"),
            ("interface = \"a b\"", "mcast.interface"),
        ] {
            let text = format!("{MINIMAL}[mcast]\ninterface = \"br0\"\n{bad}\n");
            let text = if bad.starts_with("interface") {
                format!("{MINIMAL}[mcast]\n{bad}\n")
            } else {
                text
            };
            assert_eq!(key_of(&text), key, "{bad}");
        }
    }

    #[test]
    fn events_kept_and_upload_reserve_default_and_are_checked() {
        let days = |text: &str| parse(&format!("{MINIMAL}{text}")).unwrap().events_keep;
        assert_eq!(days(""), Some(Duration::from_secs(90 * 86_400)));
        assert_eq!(
            days("[events]\nkeep_days = 7\n"),
            Some(Duration::from_secs(7 * 86_400))
        );
        assert_eq!(days("[events]\nkeep_days = 0\n"), None);
        let reserve = |text: &str| parse(&format!("{MINIMAL}{text}")).unwrap().images_reserve;
        assert_eq!(reserve(""), 512 << 20);
        assert_eq!(reserve("[images]\nreserve_mb = 0\n"), 0);
        assert_eq!(
            key_of(&format!("{MINIMAL}[images]\nreserve_mb = 1048577\n")),
            "images.reserve_mb"
        );
        assert_eq!(
            key_of(&format!("{MINIMAL}[events]\nkeep_days = 36501\n")),
            "events.keep_days"
        );
    }

    #[test]
    fn ra_settings() {
        let c = parse(&format!(
            "{MINIMAL}[ra]\nenabled = true\ninterfaces = [\"br0\"]\ninterval_secs = 30\nprefix = \"fd00:77::/64\"\n"
        ))
        .unwrap();
        assert_eq!(
            c.ra,
            Some(RaConfig {
                interfaces: vec!["br0".into()],
                interval: Duration::from_secs(30),
                prefix: Some("fd00:77::/64".parse().unwrap()),
            })
        );
        // Disabled but filled in, as a lab writes it: valid, and off.
        let c = parse(&format!(
            "{MINIMAL}[ra]\nenabled = false\ninterfaces = [\"br0\"]\n"
        ))
        .unwrap();
        assert!(c.ra.is_none());
    }

    #[test]
    fn invalid_values_name_their_key() {
        assert_eq!(
            key_of(&format!("{MINIMAL}[ra]\nenabled = true\n")),
            "ra.interfaces"
        );
        assert_eq!(
            key_of(&format!("{MINIMAL}[ra]\ninterval_secs = 2\n")),
            "ra.interval_secs"
        );
        assert_eq!(
            key_of(&format!("{MINIMAL}[ra]\nprefix = \"fd00::1/64\"\n")),
            "ra.prefix"
        );
        assert_eq!(
            key_of(&format!("{MINIMAL}[ra]\ninterfaces = [\"a\", \"a\"]\n")),
            "ra.interfaces[1]"
        );
        assert_eq!(
            key_of(&format!("{MINIMAL}[ra]\ninterfaces = [\"a b\"]\n")),
            "ra.interfaces[0]"
        );
        assert_eq!(
            key_of(&format!("{MINIMAL}[tftp]\nmax_blksize = 2\n")),
            "tftp"
        );
        assert_eq!(
            key_of(&format!("{MINIMAL}[dhcp]\ninterfaces = []\n")),
            "dhcp.interfaces"
        );
        assert_eq!(
            key_of("data_dir = \"\"\n[boot]\nkernel = \"k\"\ninitramfs = \"i\"\n"),
            "data_dir"
        );
        assert_eq!(
            key_of("[boot]\nkernel = \"\"\ninitramfs = \"i\"\n"),
            "boot.kernel"
        );
        assert_eq!(
            key_of(
                "[boot]\nkernel = \"k\"\ninitramfs = \"i\"\nkernel_args = \"a\\nchain http://evil\"\n"
            ),
            "boot.kernel_args"
        );
        let long = "x".repeat(MAX_KERNEL_ARGS + 1);
        assert_eq!(
            key_of(&format!(
                "[boot]\nkernel = \"k\"\ninitramfs = \"i\"\nkernel_args = \"{long}\"\n"
            )),
            "boot.kernel_args"
        );
    }

    #[test]
    fn unknown_and_missing_keys_are_refused_with_their_name() {
        for (text, name) in [
            (format!("{MINIMAL}[http]\nport = 80\n"), "port"),
            (format!("{MINIMAL}datadir = \"/x\"\n"), "datadir"),
            (format!("{MINIMAL}[tftp]\nblksize = 1\n"), "blksize"),
            (format!("{MINIMAL}[ra]\nlifetime = 1\n"), "lifetime"),
            ("[boot]\nkernel = \"k\"\n".to_string(), "initramfs"),
            (format!("{MINIMAL}[http]\nlisten = \"nowhere\"\n"), "listen"),
        ] {
            let err = parse(&text).unwrap_err();
            let chain = match &err {
                ConfigError::Parse { source, .. } => source.to_string(),
                other => other.to_string(),
            };
            assert!(chain.contains(name), "{name} not named in: {chain}");
        }
    }

    #[test]
    fn check_files_finds_missing_boot_files() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[boot]\nkernel = \"vmlinuz\"\ninitramfs = \"initramfs\"\n[tftp]\nroot = \"tftp\"\n\
                    [dhcp]\nmode = \"proxy\"\ninterfaces = [\"eth0\"]\n";
        let file: ConfigFile = toml::from_str(text).unwrap();
        let c = Config::validate(file, dir.path()).unwrap();
        let key = |r: Result<Vec<String>, ConfigError>| match r {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{other:?}"),
        };
        assert_eq!(key(c.check_files()), "boot.kernel");
        std::fs::write(dir.path().join("vmlinuz"), b"k").unwrap();
        assert_eq!(key(c.check_files()), "boot.initramfs");
        std::fs::write(dir.path().join("initramfs"), b"i").unwrap();
        assert_eq!(key(c.check_files()), "tftp.root");
        std::fs::create_dir(dir.path().join("tftp")).unwrap();
        let warnings = c.check_files().unwrap();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].starts_with("dhcp.boot.bios: undionly.kpxe"));
        std::fs::write(dir.path().join("tftp/undionly.kpxe"), b"b").unwrap();
        std::fs::write(dir.path().join("tftp/ipxe.efi"), b"u").unwrap();
        assert_eq!(c.check_files().unwrap(), Vec::<String>::new());
    }

    #[test]
    fn every_key_is_documented() {
        let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/config.md");
        let doc = std::fs::read_to_string(&doc_path).unwrap();
        let mut keys: BTreeSet<String> = keyprobe::keys::<ConfigFile>().into_iter().collect();
        // `[tftp]` goes through a table first (for its default root), so probe it directly.
        keys.extend(
            keyprobe::keys::<TftpConfig>()
                .into_iter()
                .map(|k| format!("tftp.{k}")),
        );
        for must in [
            "data_dir",
            "http.listen",
            "boot.kernel",
            "tftp.root",
            "dhcp.interfaces",
            "dhcp.pools.subnet",
            "ra.prefix",
        ] {
            assert!(keys.contains(must), "the key probe missed {must}: {keys:?}");
        }
        // Sections (`dhcp`, `dhcp.pools`) are headings; every key with a value is a row.
        let is_section = |k: &String| keys.iter().any(|other| other.starts_with(&format!("{k}.")));
        let missing: Vec<&String> = keys
            .iter()
            .filter(|k| !is_section(k) && !doc.contains(&format!("`{k}`")))
            .collect();
        assert!(
            missing.is_empty(),
            "keys not documented in docs/config.md: {missing:?}"
        );
    }

    /// Lists the keys of a serde type by driving its `Deserialize` with a deserializer that
    /// records the field names each struct asks for, then descends into one field at a time
    /// (so a leaf it cannot fake never hides a sibling). Arrays of tables are descended too:
    /// `dhcp.pools.subnet`.
    mod keyprobe {
        use std::cell::RefCell;
        use std::collections::BTreeSet;
        use std::fmt;

        use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

        #[derive(Debug)]
        struct Stop;

        impl fmt::Display for Stop {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("probe stops here")
            }
        }

        impl std::error::Error for Stop {}

        impl de::Error for Stop {
            fn custom<T: fmt::Display>(_: T) -> Self {
                Stop
            }
        }

        pub fn keys<T: serde::de::DeserializeOwned>() -> Vec<String> {
            let found = RefCell::new(BTreeSet::new());
            let mut queue: Vec<Vec<&'static str>> = vec![vec![]];
            while let Some(path) = queue.pop() {
                let before = found.borrow().clone();
                let _ = T::deserialize(Probe {
                    path: &path,
                    depth: 0,
                    prefix: String::new(),
                    found: &found,
                });
                for new in found.borrow().difference(&before) {
                    queue.push(new.1.clone());
                }
            }
            found.into_inner().into_iter().map(|(k, _)| k).collect()
        }

        type Found = RefCell<BTreeSet<(String, Vec<&'static str>)>>;

        struct Probe<'a> {
            /// Field names to follow, one per struct level.
            path: &'a [&'static str],
            depth: usize,
            prefix: String,
            found: &'a Found,
        }

        impl<'de> Deserializer<'de> for Probe<'_> {
            type Error = Stop;

            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
                Err(Stop)
            }

            fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
                v.visit_some(self)
            }

            fn deserialize_newtype_struct<V: Visitor<'de>>(
                self,
                _: &'static str,
                v: V,
            ) -> Result<V::Value, Stop> {
                v.visit_newtype_struct(self)
            }

            fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
                v.visit_seq(OneElement(Some(self)))
            }

            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                v: V,
            ) -> Result<V::Value, Stop> {
                let mut walked: Vec<&'static str> = self.path[..self.depth].to_vec();
                for f in fields {
                    walked.push(f);
                    self.found
                        .borrow_mut()
                        .insert((format!("{}{f}", self.prefix), walked.clone()));
                    walked.pop();
                }
                let next = self
                    .path
                    .get(self.depth)
                    .copied()
                    .filter(|f| fields.contains(f));
                v.visit_map(OneField {
                    next,
                    probe: Some(self),
                })
            }

            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
                byte_buf unit unit_struct tuple tuple_struct map enum identifier ignored_any
            }
        }

        struct OneElement<'a>(Option<Probe<'a>>);

        impl<'de> SeqAccess<'de> for OneElement<'_> {
            type Error = Stop;

            fn next_element_seed<S: DeserializeSeed<'de>>(
                &mut self,
                seed: S,
            ) -> Result<Option<S::Value>, Stop> {
                match self.0.take() {
                    Some(probe) => seed.deserialize(probe).map(Some),
                    None => Ok(None),
                }
            }
        }

        /// Yields the one field on the path (if any), with a probe one level deeper.
        struct OneField<'a> {
            next: Option<&'static str>,
            probe: Option<Probe<'a>>,
        }

        impl<'de> MapAccess<'de> for OneField<'_> {
            type Error = Stop;

            fn next_key_seed<K: DeserializeSeed<'de>>(
                &mut self,
                seed: K,
            ) -> Result<Option<K::Value>, Stop> {
                match self.next.take() {
                    Some(name) => seed
                        .deserialize(de::value::BorrowedStrDeserializer::<Stop>::new(name))
                        .map(Some),
                    None => Ok(None),
                }
            }

            fn next_value_seed<S: DeserializeSeed<'de>>(
                &mut self,
                seed: S,
            ) -> Result<S::Value, Stop> {
                let probe = self.probe.take().ok_or(Stop)?;
                let name = probe.path[probe.depth];
                seed.deserialize(Probe {
                    path: probe.path,
                    depth: probe.depth + 1,
                    prefix: format!("{}{name}.", probe.prefix),
                    found: probe.found,
                })
            }
        }
    }
}
