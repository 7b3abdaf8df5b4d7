//! Making the installed tree this node: the files that name it and connect it (pure
//! generators, tested here, and thin writers), then the image's own tools in a chroot
//! (initramfs, boot loader) and the unmounts before the reboot.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use metalcast_layout::{Action, Command, Plan, bootloader_commands, fstab, mdadm_conf};
use metalcast_proto::{Credentials, MacAddr, credentials};

/// Name the boot NIC gets in an ifupdown system (renamed by a systemd `.link` file): its
/// kernel or predictable name in the installed system is not known from the initramfs.
pub const BOOT_IFACE: &str = "boot0";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "hostname {0:?} is not a valid host name (RFC 1123: labels of letters, digits and hyphens)"
    )]
    Hostname(String),
    #[error("{0}")]
    Credentials(credentials::CredentialError),
    #[error("the image has no root account in /etc/shadow to set a password for")]
    NoRootAccount,
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The node's host name: the plan's, or one made from the boot NIC's MAC when the node has
/// none (`node-525400123456`), so two unnamed nodes never share a name.
pub fn hostname(planned: Option<&str>, mac: MacAddr) -> Result<String, ConfigError> {
    let name = match planned {
        Some(h) => h.to_string(),
        None => format!("node-{}", mac.to_string().replace(':', "")),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(ConfigError::Hostname(name));
    }
    Ok(name)
}

/// `/etc/hostname`: the short name (the part before the first dot).
pub fn hostname_file(name: &str) -> String {
    let short = name.split('.').next().unwrap_or(name);
    format!("{short}\n")
}

/// `/etc/hosts` the Debian way: the host's own name on 127.0.1.1, so it resolves without
/// DNS; a fully qualified name comes first, then the short one.
pub fn hosts_file(name: &str) -> String {
    let short = name.split('.').next().unwrap_or(name);
    let names = if short == name {
        name.to_string()
    } else {
        format!("{name} {short}")
    };
    format!(
        "127.0.0.1\tlocalhost\n127.0.1.1\t{names}\n\n\
         # The following lines are desirable for IPv6 capable hosts\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         ff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n"
    )
}

/// How the installed system configures its network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetStack {
    /// systemd-networkd is enabled in the image.
    Networkd,
    /// ifupdown (`/etc/network/interfaces`).
    Ifupdown,
    /// Neither: nothing is written.
    Unknown,
}

/// Picks the stack from what the tree holds; `exists` answers for paths relative to its root.
/// An enabled networkd wins: ifupdown's package may be present but unused.
pub fn net_stack(exists: impl Fn(&str) -> bool) -> NetStack {
    let networkd_enabled = [
        "etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
        "etc/systemd/system/sockets.target.wants/systemd-networkd.socket",
    ];
    if networkd_enabled.iter().any(|p| exists(p)) {
        NetStack::Networkd
    } else if ["sbin/ifup", "usr/sbin/ifup", "etc/network/interfaces"]
        .iter()
        .any(|p| exists(p))
    {
        NetStack::Ifupdown
    } else {
        NetStack::Unknown
    }
}

/// The UEFI BootOrder that keeps the network entry this boot came through (BootCurrent) first
/// and puts the installed system's entries (labels starting with `ours`, created without
/// touching BootOrder) right after it, from `efibootmgr`'s listing. The appliance stays in
/// control of every boot: its iPXE script `exit`s to the next entry, which must be the disk.
/// The firmware's other network entries (IPv6, HTTP boot) go after the disks: each of them
/// could spend minutes on timeouts before the disk's turn. `None` when nothing needs to change.
pub fn boot_order(listing: &str, ours: &str) -> Option<String> {
    let current: Vec<&str> = listing
        .lines()
        .find_map(|l| l.strip_prefix("BootOrder:"))
        .map(|o| o.trim().split(',').filter(|n| !n.is_empty()).collect())
        .unwrap_or_default();
    let entries: Vec<(&str, &str)> = listing
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("Boot")?;
            let (num, label) = rest.split_at_checked(4)?;
            if !num.chars().all(|c| c.is_ascii_hexdigit()) {
                return None;
            }
            Some((num, label.trim_start_matches('*').trim()))
        })
        .collect();
    let label_of = |num: &str| entries.iter().find(|(n, _)| *n == num).map(|(_, l)| *l);
    let network = |num: &&str| {
        label_of(num).is_some_and(|l| {
            let l = l.to_ascii_uppercase();
            ["PXE", "HTTP", "NETWORK", "IPXE"]
                .iter()
                .any(|k| l.contains(k))
        })
    };
    let mine: Vec<&str> = entries
        .iter()
        .filter(|(_, l)| l.starts_with(ours))
        .map(|(n, _)| *n)
        .collect();
    if mine.is_empty() {
        return None;
    }
    let booted = listing
        .lines()
        .find_map(|l| l.strip_prefix("BootCurrent:"))
        .map(str::trim)
        .filter(network);
    let first = booted.or_else(|| current.iter().copied().find(network));
    let mut order: Vec<&str> = first.into_iter().collect();
    order.extend(&mine);
    order.extend(
        current
            .iter()
            .copied()
            .filter(|n| Some(*n) != first && !mine.contains(n)),
    );
    (order != current).then(|| order.join(","))
}

/// A file to write into the target: path relative to its root, content and mode.
#[derive(Debug, PartialEq, Eq)]
pub struct File {
    pub path: String,
    pub content: String,
    pub mode: u32,
    /// Set for secrets: the file's directory is made (or narrowed to) owner-only.
    pub private_dir: bool,
}

impl File {
    fn new(path: &str, content: String) -> Self {
        Self {
            path: path.to_string(),
            content,
            mode: 0o644,
            private_dir: false,
        }
    }
}

/// `/etc/shadow` with root's password hash replaced; every other line and field kept.
pub fn shadow_with_root_hash(shadow: &str, hash: &str) -> Result<String, ConfigError> {
    credentials::validate_password_hash(hash).map_err(ConfigError::Credentials)?;
    let mut found = false;
    let mut out = String::with_capacity(shadow.len() + hash.len());
    for line in shadow.lines() {
        match line.split_once(':') {
            Some(("root", rest)) if !found => {
                found = true;
                let after_hash = rest.split_once(':').map_or("", |(_, tail)| tail);
                out.push_str(&format!("root:{hash}:{after_hash}"));
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    if found {
        Ok(out)
    } else {
        Err(ConfigError::NoRootAccount)
    }
}

/// The installed system's account files for `credentials`: `/etc/shadow` (from the image's
/// `shadow`, which must exist when a hash is set) and root's `authorized_keys`.
pub fn credential_files(
    credentials: &Credentials,
    shadow: Option<&str>,
) -> Result<Vec<File>, ConfigError> {
    let mut files = Vec::new();
    if let Some(hash) = &credentials.root_password_hash {
        let shadow = shadow.ok_or(ConfigError::NoRootAccount)?;
        files.push(File {
            mode: 0o640,
            ..File::new("etc/shadow", shadow_with_root_hash(shadow, hash)?)
        });
    }
    if !credentials.ssh_authorized_keys.is_empty() {
        for key in &credentials.ssh_authorized_keys {
            credentials::validate_authorized_key(key).map_err(ConfigError::Credentials)?;
        }
        let mut text = "# written by metalcast: the node's keys on the appliance\n".to_string();
        for key in &credentials.ssh_authorized_keys {
            text.push_str(key);
            text.push('\n');
        }
        files.push(File {
            mode: 0o600,
            private_dir: true,
            ..File::new("root/.ssh/authorized_keys", text)
        });
    }
    Ok(files)
}

/// `/etc/resolv.conf` for the installed system: the name servers DHCP gave the agent (its own
/// resolv.conf, written by the udhcpc script), unless the image runs systemd-resolved, which
/// owns the file. None when DHCP gave no name server.
pub fn resolv_conf(from_dhcp: Option<&str>, image_runs_resolved: bool) -> Option<File> {
    let text = from_dhcp?;
    if image_runs_resolved
        || !text
            .lines()
            .any(|l| l.trim_start().starts_with("nameserver"))
    {
        return None;
    }
    Some(File::new(
        "etc/resolv.conf",
        format!("# written by metalcast: the name servers of the provisioning network\n{text}"),
    ))
}

/// The network files for DHCP on the boot NIC, matched by its MAC. `interfaces` is the
/// image's `/etc/network/interfaces`, if any: ifupdown reads `interfaces.d` only when it
/// says so.
pub fn network_files(stack: NetStack, mac: MacAddr, interfaces: Option<&str>) -> Vec<File> {
    let header =
        format!("# written by metalcast: the NIC the node was provisioned through ({mac})\n");
    match stack {
        NetStack::Networkd => vec![File::new(
            "etc/systemd/network/10-metalcast-boot.network",
            format!("{header}[Match]\nMACAddress={mac}\n\n[Network]\nDHCP=yes\n"),
        )],
        NetStack::Ifupdown => {
            let mut files = vec![
                File::new(
                    "etc/systemd/network/10-metalcast-boot.link",
                    format!("{header}[Match]\nMACAddress={mac}\n\n[Link]\nName={BOOT_IFACE}\n"),
                ),
                File::new(
                    "etc/network/interfaces.d/metalcast-boot",
                    format!("{header}allow-hotplug {BOOT_IFACE}\niface {BOOT_IFACE} inet dhcp\n"),
                ),
            ];
            let sources = interfaces.is_some_and(|text| {
                text.lines()
                    .map(str::trim)
                    .any(|l| l.starts_with("source") && l.contains("/etc/network/interfaces.d/"))
            });
            if !sources {
                let mut text = interfaces
                    .unwrap_or("auto lo\niface lo inet loopback\n")
                    .to_string();
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                text.push_str("source /etc/network/interfaces.d/*\n");
                files.push(File::new("etc/network/interfaces", text));
            }
            files
        }
        NetStack::Unknown => Vec::new(),
    }
}

/// Everything written into the tree before the chroot: names, network, fstab, arrays, and
/// an empty machine-id (systemd makes a new one at first boot, so no two nodes share one).
/// GRUB settings that give the installed kernel the agent's consoles, and GRUB itself the
/// serial port when one of them is serial (Debian's grub-mkconfig reads
/// `/etc/default/grub.d/*.cfg` after `/etc/default/grub`).
pub fn grub_console_defaults(consoles: &[String]) -> Option<String> {
    if consoles.is_empty() {
        return None;
    }
    let args: Vec<String> = consoles.iter().map(|c| format!("console={c}")).collect();
    let mut out = format!(
        "# written by metalcast: the consoles the node was provisioned with\n\
         GRUB_CMDLINE_LINUX=\"$GRUB_CMDLINE_LINUX {}\"\n",
        args.join(" ")
    );
    let serial = consoles.iter().find_map(|c| {
        let rest = c.strip_prefix("ttyS")?;
        let (unit, speed) = rest.split_once(',').unwrap_or((rest, "115200"));
        let speed: String = speed.chars().take_while(char::is_ascii_digit).collect();
        Some((unit.to_string(), speed))
    });
    if let Some((unit, speed)) = serial {
        out.push_str(&format!(
            "GRUB_TERMINAL=\"console serial\"\n\
             GRUB_SERIAL_COMMAND=\"serial --unit={unit} --speed={speed}\"\n"
        ));
    }
    Some(out)
}

pub fn config_files(name: &str, net: Vec<File>, plan: &Plan, consoles: &[String]) -> Vec<File> {
    let mut files = vec![
        File::new("etc/hostname", hostname_file(name)),
        File::new("etc/hosts", hosts_file(name)),
        File::new("etc/fstab", fstab(plan)),
        File::new("etc/machine-id", String::new()),
    ];
    if !plan.raids.is_empty() {
        files.push(File::new("etc/mdadm/mdadm.conf", mdadm_conf(plan)));
    }
    if let Some(grub) = grub_console_defaults(consoles) {
        files.push(File::new(
            "etc/default/grub.d/50-metalcast-console.cfg",
            grub,
        ));
    }
    files.extend(net);
    files
}

/// Writes `file` under `root`, making its directory; a symlink in its place is replaced,
/// never followed out of the tree.
pub fn write(root: &Path, file: &File) -> Result<(), ConfigError> {
    let path = root.join(&file.path);
    let err = |source| ConfigError::Write {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(err)?;
        if file.private_dir {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(err)?;
        }
    }
    match fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_symlink() => fs::remove_file(&path).map_err(err)?,
        _ => {}
    }
    // Narrowed before the content goes in, so a secret is never readable by others.
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(file.mode)
        .open(&path)
        .map_err(err)?;
    out.set_permissions(fs::Permissions::from_mode(file.mode))
        .map_err(err)?;
    out.write_all(file.content.as_bytes()).map_err(err)
}

/// Reads `rel` under `root` when it is a regular file.
pub fn read(root: &Path, rel: &str) -> Option<String> {
    let path = root.join(rel);
    let meta = fs::symlink_metadata(&path).ok()?;
    if meta.is_file() {
        fs::read_to_string(path).ok()
    } else {
        None
    }
}

/// The kernel's filesystems the image's tools need inside the chroot, in mount order.
pub fn chroot_binds(uefi: bool) -> Vec<&'static str> {
    let mut binds = vec!["/dev", "/dev/pts", "/proc", "/sys", "/run"];
    if uefi {
        // grub-install and efibootmgr write boot entries through it.
        binds.push("/sys/firmware/efi/efivars");
    }
    binds
}

pub fn bind_commands(target: &str, binds: &[&str]) -> Vec<Action> {
    binds
        .iter()
        .map(|b| {
            Action::Run(Command::new(
                "mount",
                // `-o bind`: busybox and util-linux both take it.
                ["-o", "bind", b, &format!("{target}{b}")],
            ))
        })
        .collect()
}

/// Where each step reports: the initramfs is configuration; GRUB is the boot loader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    Config,
    Bootloader,
}

/// The steps run in the chroot: the initramfs rebuilt with the node's arrays and volumes,
/// GRUB installed as the plan says, then its configuration generated.
pub fn chroot_steps(plan: &Plan, target: &str) -> Vec<(StepKind, Action)> {
    let chroot = |args: &[&str]| {
        let mut all = vec![target];
        all.extend_from_slice(args);
        Action::Run(Command::new("chroot", all))
    };
    let mut steps = Vec::new();
    // The image's own initramfs finds a root filesystem on a plain partition; arrays and
    // volume groups need it rebuilt with this node's mdadm.conf and LVM hooks (a rebuild takes
    // minutes on a slow machine, so it is skipped when nothing calls for it).
    if !plan.raids.is_empty() || !plan.vgs.is_empty() {
        steps.push((
            StepKind::Config,
            chroot(&["update-initramfs", "-u", "-k", "all"]),
        ));
    }
    steps.extend(
        bootloader_commands(plan, target)
            .into_iter()
            .map(|a| (StepKind::Bootloader, a)),
    );
    steps.push((
        StepKind::Bootloader,
        chroot(&["grub-mkconfig", "-o", "/boot/grub/grub.cfg"]),
    ));
    steps
}

/// What to unmount before the reboot, innermost first: the binds, then the layout's
/// filesystems in reverse mount order.
pub fn unmount_order(plan: &Plan, target: &str, binds: &[&str]) -> Vec<String> {
    let mut paths: Vec<String> = binds.iter().rev().map(|b| format!("{target}{b}")).collect();
    paths.extend(plan.mount_order().iter().rev().filter_map(|fs| {
        let mount = fs.mount.as_deref()?;
        Some(if mount == "/" {
            target.to_string()
        } else {
            format!("{target}{mount}")
        })
    }));
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac() -> MacAddr {
        "52:54:00:12:34:56".parse().unwrap()
    }

    #[test]
    fn hostnames_from_the_plan_or_the_mac_and_only_valid_ones() {
        assert_eq!(hostname(Some("web1"), mac()).unwrap(), "web1");
        assert_eq!(hostname(None, mac()).unwrap(), "node-525400123456");
        assert_eq!(
            hostname(Some("web1.lab.example"), mac()).unwrap(),
            "web1.lab.example"
        );
        for bad in [
            "",
            "-web",
            "web-",
            "we b",
            "web..lab",
            "wéb",
            &"a".repeat(64),
        ] {
            assert!(
                matches!(hostname(Some(bad), mac()), Err(ConfigError::Hostname(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn hostname_and_hosts_files() {
        assert_eq!(hostname_file("web1"), "web1\n");
        assert_eq!(hostname_file("web1.lab.example"), "web1\n");
        let hosts = hosts_file("web1");
        assert!(
            hosts.starts_with("127.0.0.1\tlocalhost\n127.0.1.1\tweb1\n"),
            "{hosts}"
        );
        assert!(hosts.contains("::1\tlocalhost ip6-localhost ip6-loopback\n"));
        assert!(hosts_file("web1.lab.example").contains("127.0.1.1\tweb1.lab.example web1\n"));
    }

    #[test]
    fn networkd_when_enabled_else_ifupdown_else_nothing() {
        let has = |paths: &'static [&'static str]| move |p: &str| paths.contains(&p);
        assert_eq!(
            net_stack(has(&[
                "etc/network/interfaces",
                "etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
            ])),
            NetStack::Networkd
        );
        assert_eq!(
            net_stack(has(&["usr/sbin/ifup", "etc/network/interfaces"])),
            NetStack::Ifupdown
        );
        assert_eq!(
            net_stack(has(&["usr/lib/systemd/systemd-networkd"])),
            NetStack::Unknown
        );
    }

    #[test]
    fn networkd_matches_the_boot_nic_by_mac() {
        let files = network_files(NetStack::Networkd, mac(), None);
        assert_eq!(files.len(), 1);
        assert_eq!(
            files[0].path,
            "etc/systemd/network/10-metalcast-boot.network"
        );
        assert!(
            files[0]
                .content
                .ends_with("[Match]\nMACAddress=52:54:00:12:34:56\n\n[Network]\nDHCP=yes\n")
        );
        assert!(network_files(NetStack::Unknown, mac(), None).is_empty());
    }

    #[test]
    fn ifupdown_names_the_nic_by_mac_and_sources_interfaces_d() {
        let debian = "source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n";
        let files = network_files(NetStack::Ifupdown, mac(), Some(debian));
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "etc/systemd/network/10-metalcast-boot.link",
                "etc/network/interfaces.d/metalcast-boot"
            ]
        );
        assert!(
            files[0]
                .content
                .contains("[Match]\nMACAddress=52:54:00:12:34:56\n\n[Link]\nName=boot0\n")
        );
        assert!(
            files[1]
                .content
                .ends_with("allow-hotplug boot0\niface boot0 inet dhcp\n")
        );

        // An interfaces file that does not read interfaces.d gets the line appended.
        let files = network_files(
            NetStack::Ifupdown,
            mac(),
            Some("auto lo\niface lo inet loopback"),
        );
        assert_eq!(files[2].path, "etc/network/interfaces");
        assert_eq!(
            files[2].content,
            "auto lo\niface lo inet loopback\nsource /etc/network/interfaces.d/*\n"
        );
        let files = network_files(NetStack::Ifupdown, mac(), None);
        assert_eq!(
            files[2].content,
            "auto lo\niface lo inet loopback\nsource /etc/network/interfaces.d/*\n"
        );
    }

    const HASH: &str = "$y$j9T$Qq3s1Yd3cJxHhWmrnTXqY.$0bh5u3yUCn2.QA8ZB6mSb1WmX6WQeYwZIyQpc5FV.qD";
    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHbN5Lf0Sw8dBmz3ajM5J1rJ2Ka7iKx3CqQy9m5F6PZq ops@bastion";
    const SHADOW: &str = "root:*:19700:0:99999:7:::\ndaemon:*:19700:0:99999:7:::\n";

    #[test]
    fn root_hash_replaces_only_roots_password_field() {
        assert_eq!(
            shadow_with_root_hash(SHADOW, HASH).unwrap(),
            format!("root:{HASH}:19700:0:99999:7:::\ndaemon:*:19700:0:99999:7:::\n")
        );
        assert!(matches!(
            shadow_with_root_hash("daemon:*:1::::::\n", HASH),
            Err(ConfigError::NoRootAccount)
        ));
        assert!(matches!(
            shadow_with_root_hash(SHADOW, "plain"),
            Err(ConfigError::Credentials(_))
        ));
    }

    #[test]
    fn credential_files_are_private_and_absent_when_unset() {
        assert_eq!(
            credential_files(&Credentials::default(), Some(SHADOW)).unwrap(),
            []
        );
        let creds = Credentials {
            root_password_hash: Some(HASH.into()),
            ssh_authorized_keys: vec![KEY.into()],
        };
        let files = credential_files(&creds, Some(SHADOW)).unwrap();
        let shape: Vec<_> = files
            .iter()
            .map(|f| (f.path.as_str(), f.mode, f.private_dir))
            .collect();
        assert_eq!(
            shape,
            [
                ("etc/shadow", 0o640, false),
                ("root/.ssh/authorized_keys", 0o600, true)
            ]
        );
        assert!(files[1].content.ends_with(&format!("\n{KEY}\n")));
        // A hash without the image's shadow to put it in is an error, not a new file.
        assert!(credential_files(&creds, None).is_err());
    }

    #[test]
    fn resolv_conf_from_dhcp_unless_resolved_owns_it() {
        let dhcp = "search lab.example\nnameserver 10.77.0.1\n";
        let file = resolv_conf(Some(dhcp), false).unwrap();
        assert_eq!(file.path, "etc/resolv.conf");
        assert!(file.content.ends_with(dhcp));
        assert_eq!(resolv_conf(Some(dhcp), true), None);
        assert_eq!(resolv_conf(Some("search lab.example\n"), false), None);
        assert_eq!(resolv_conf(None, false), None);
    }

    #[test]
    fn private_files_and_their_directory_are_owner_only() {
        let dir = std::env::temp_dir().join(format!("metalcast-keys-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let creds = Credentials {
            root_password_hash: None,
            ssh_authorized_keys: vec![KEY.into()],
        };
        for file in credential_files(&creds, None).unwrap() {
            write(&dir, &file).unwrap();
        }
        let mode = |rel: &str| fs::metadata(dir.join(rel)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("root/.ssh"), 0o700);
        assert_eq!(mode("root/.ssh/authorized_keys"), 0o600);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writes_replace_symlinks_instead_of_following_them() {
        let dir = std::env::temp_dir().join(format!("metalcast-nodeconf-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("etc")).unwrap();
        let outside = dir.join("outside");
        fs::write(&outside, "keep").unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("etc/machine-id")).unwrap();
        write(&dir, &File::new("etc/machine-id", String::new())).unwrap();
        write(&dir, &File::new("etc/network/interfaces.d/x", "y\n".into())).unwrap();
        assert_eq!(fs::read_to_string(&outside).unwrap(), "keep");
        assert_eq!(read(&dir, "etc/machine-id").as_deref(), Some(""));
        assert_eq!(
            read(&dir, "etc/network/interfaces.d/x").as_deref(),
            Some("y\n")
        );
        assert_eq!(read(&dir, "etc"), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn binds_mount_in_order_and_unmount_in_reverse() {
        assert!(!chroot_binds(false).contains(&"/sys/firmware/efi/efivars"));
        let binds = chroot_binds(true);
        assert_eq!(binds.last(), Some(&"/sys/firmware/efi/efivars"));
        let cmds = bind_commands("/target", &binds);
        assert_eq!(
            cmds[0],
            Action::Run(Command::new("mount", ["-o", "bind", "/dev", "/target/dev"]))
        );
    }

    fn plan(toml: &str, firmware: metalcast_proto::Firmware) -> Plan {
        let disk = |path: &str| metalcast_proto::Disk {
            path: path.into(),
            size_bytes: 20 * metalcast_layout::GIB,
            model: None,
            serial: None,
            rotational: false,
            by_path: None,
        };
        let layout = metalcast_layout::Layout::from_toml(toml).unwrap();
        metalcast_layout::plan(
            &layout,
            &[disk("/dev/vda"), disk("/dev/vdb")],
            firmware,
            "52:54:00:12:34:56",
        )
        .unwrap()
    }

    fn raid_uefi() -> Plan {
        plan(
            include_str!("../../../layouts/raid1-lvm-uefi.toml"),
            metalcast_proto::Firmware::Uefi,
        )
    }

    fn programs(steps: &[(StepKind, Action)]) -> Vec<(StepKind, String)> {
        steps
            .iter()
            .map(|(k, a)| match a {
                Action::Run(c) => (*k, format!("{} {}", c.program, c.args.join(" "))),
                Action::WaitForDevice(p) => (*k, p.clone()),
            })
            .collect()
    }

    #[test]
    fn boot_order_keeps_the_booted_network_entry_first_then_the_installed_disks() {
        let listing = "BootCurrent: 0004\nTimeout: 0 seconds\nBootOrder: 0004,0003,0007,0000,0001\n\
                       Boot0000* UiApp\nBoot0001* UEFI QEMU NVMe Ctrl 1\n\
                       Boot0003* UEFI PXEv6 (MAC:525400000001)\n\
                       Boot0004* UEFI PXEv4 (MAC:525400000001)\n\
                       Boot0007* UEFI HTTPv4 (MAC:525400000001)\n\
                       Boot0005  metalcast nvme0n1\nBoot0006  metalcast nvme1n1\n";
        assert_eq!(
            boot_order(listing, "metalcast ").as_deref(),
            Some("0004,0005,0006,0003,0007,0000,0001")
        );
        let done = listing.replace(
            "BootOrder: 0004,0003,0007,0000,0001",
            "BootOrder: 0004,0005,0006,0003,0007,0000,0001",
        );
        assert_eq!(boot_order(&done, "metalcast "), None);
        // Booted from something else (a disk): the first network entry leads.
        let from_disk = listing.replace("BootCurrent: 0004", "BootCurrent: 0001");
        assert_eq!(
            boot_order(&from_disk, "metalcast ").as_deref(),
            Some("0004,0005,0006,0003,0007,0000,0001")
        );
        assert_eq!(
            boot_order("BootOrder: 0001\nBoot0001* disk\n", "metalcast "),
            None
        );
    }

    #[test]
    fn config_files_carry_the_plan() {
        let p = raid_uefi();
        let files = config_files(
            "web1",
            network_files(NetStack::Networkd, mac(), None),
            &p,
            &["tty0".to_string(), "ttyS0,115200".to_string()],
        );
        let get = |path: &str| {
            files
                .iter()
                .find(|f| f.path == path)
                .map(|f| f.content.as_str())
        };
        assert_eq!(get("etc/hostname"), Some("web1\n"));
        let grub = get("etc/default/grub.d/50-metalcast-console.cfg").unwrap();
        assert!(
            grub.contains("console=tty0 console=ttyS0,115200\""),
            "{grub}"
        );
        assert!(grub.contains("serial --unit=0 --speed=115200"), "{grub}");
        assert_eq!(grub_console_defaults(&[]), None);
        assert_eq!(get("etc/machine-id"), Some(""));
        assert_eq!(get("etc/fstab").unwrap(), fstab(&p));
        assert!(get("etc/fstab").unwrap().contains(" / "));
        assert!(
            get("etc/mdadm/mdadm.conf")
                .unwrap()
                .contains("ARRAY /dev/md/")
        );
        assert!(get("etc/systemd/network/10-metalcast-boot.network").is_some());

        let single = plan(
            include_str!("../../../layouts/single-bios.toml"),
            metalcast_proto::Firmware::Bios,
        );
        let files = config_files("web1", Vec::new(), &single, &[]);
        assert!(!files.iter().any(|f| f.path == "etc/mdadm/mdadm.conf"));
    }

    #[test]
    fn chroot_rebuilds_the_initramfs_for_arrays_then_installs_and_configures_grub() {
        let steps = programs(&chroot_steps(&raid_uefi(), "/target"));
        assert_eq!(
            steps[0],
            (
                StepKind::Config,
                "chroot /target update-initramfs -u -k all".to_string()
            )
        );
        assert_eq!(
            steps.last().unwrap(),
            &(
                StepKind::Bootloader,
                "chroot /target grub-mkconfig -o /boot/grub/grub.cfg".to_string()
            )
        );
        // Two ESPs: two grub-install runs each, and one boot entry each.
        let installs = steps
            .iter()
            .filter(|(_, c)| c.contains("grub-install"))
            .count();
        let entries = steps
            .iter()
            .filter(|(_, c)| c.starts_with("efibootmgr"))
            .count();
        assert_eq!((installs, entries), (4, 2), "{steps:?}");

        let single = plan(
            include_str!("../../../layouts/single-bios.toml"),
            metalcast_proto::Firmware::Bios,
        );
        let steps = programs(&chroot_steps(&single, "/target"));
        assert!(
            steps.iter().any(|(k, c)| *k == StepKind::Bootloader
                && c == "chroot /target grub-install --target=i386-pc /dev/vda"),
            "{steps:?}"
        );
        // No arrays, no volumes: the image's initramfs is kept.
        assert!(
            !steps.iter().any(|(_, c)| c.contains("update-initramfs")),
            "{steps:?}"
        );
    }

    #[test]
    fn unmounts_binds_then_filesystems_innermost_first() {
        let p = raid_uefi();
        let binds = chroot_binds(true);
        let order = unmount_order(&p, "/target", &binds);
        assert_eq!(order[0], "/target/sys/firmware/efi/efivars");
        assert_eq!(order[binds.len() - 1], "/target/dev");
        assert_eq!(order.last().map(String::as_str), Some("/target"));
        let esp = order.iter().position(|m| m == "/target/boot/efi").unwrap();
        let root = order.len() - 1;
        assert!(esp < root, "{order:?}");
    }
}
