//! Text rendering of API answers (pure, so it is unit-tested without a server).

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use metalcast_proto::image::{ImageSummary, SignedManifest};
use metalcast_proto::layout::BlockDevice;
use metalcast_proto::{
    Event, GcSummary, ImageVersions, McastSessionStatus, McastState, MemberState, Node, NodeDetail,
    Phase,
};

use crate::image::UploadStats;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `1.5G`, `512M`: binary units, one decimal below 10.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value >= 10.0 {
        format!("{value:.0}{}", UNITS[unit])
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

fn ago(now_ms: i64, at_ms: i64) -> String {
    let secs = (now_ms - at_ms).max(0) / 1000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

/// Columns padded to the widest cell.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub fn node_table(nodes: &[Node], now_ms: i64) -> String {
    let mut rows = vec![
        ["MAC", "STATE", "FIRMWARE", "DISKS", "IP", "LAST SEEN"]
            .map(String::from)
            .to_vec(),
    ];
    for node in nodes {
        let (firmware, disks) = match &node.hardware {
            Some(hw) => (
                hw.firmware.to_string(),
                hw.disks
                    .iter()
                    .map(|d| {
                        format!(
                            "{} {}",
                            d.path.trim_start_matches("/dev/"),
                            human_bytes(d.size_bytes)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            None => ("-".into(), "-".into()),
        };
        rows.push(vec![
            node.mac.to_string(),
            node.state.to_string(),
            firmware,
            if disks.is_empty() {
                "none".into()
            } else {
                disks
            },
            node.ip.clone().unwrap_or_else(|| "-".into()),
            ago(now_ms, node.last_seen_ms),
        ]);
    }
    table(&rows)
}

/// Events of the latest boot: from the DHCP exchange that led to the newest iPXE script.
fn latest_boot(events: &[Event]) -> &[Event] {
    let Some(script) = events.iter().rposition(|e| e.phase == Phase::IpxeScript) else {
        return events;
    };
    let mut start = script;
    while start > 0 && matches!(events[start - 1].phase, Phase::Dhcp | Phase::Tftp) {
        start -= 1;
    }
    &events[start..]
}

/// When each phase was first reached in the latest boot, in seconds from its start.
pub fn phase_timings(events: &[Event]) -> Vec<(Phase, f64)> {
    let boot = latest_boot(events);
    let Some(first) = boot.first() else {
        return Vec::new();
    };
    let mut seen: Vec<(Phase, f64)> = Vec::new();
    for e in boot {
        if !seen.iter().any(|(p, _)| *p == e.phase) {
            seen.push((e.phase, (e.at_ms - first.at_ms) as f64 / 1000.0));
        }
    }
    seen
}

/// What `nodes set` changed, as the appliance now has it.
pub fn node_settings(node: &Node) -> String {
    format!(
        "{} state={} hostname={} layout={} image={}\n",
        node.mac,
        node.state,
        node.hostname.as_deref().unwrap_or("-"),
        node.layout.as_deref().unwrap_or("-"),
        node.image.as_deref().unwrap_or("-")
    )
}

/// Civil UTC date and time of seconds since the epoch: (year, month, day, hour, minute,
/// second). Days to date after Howard Hinnant's `civil_from_days`.
pub fn utc_fields(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month as u32,
        day as u32,
        (rem / 3600) as u32,
        (rem / 60 % 60) as u32,
        (rem % 60) as u32,
    )
}

/// `YYYY-MM-DD HH:MM` UTC.
fn date_time(ms: i64) -> String {
    let (y, mo, d, h, mi, _) = utc_fields(ms.div_euclid(1000));
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}")
}

/// The first 12 hex digits of an id: enough to tell versions apart on screen.
fn short_id(id: &impl std::fmt::Display) -> String {
    id.to_string().chars().take(12).collect()
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

fn mbit(bits_per_sec: f64) -> String {
    format!("{:.1} Mbit/s", bits_per_sec / 1e6)
}

/// A session: what it sends, how fast, and one row per member.
pub fn session(s: &McastSessionStatus) -> String {
    let state = match s.state {
        McastState::Sending => "sending",
        McastState::Done => "done",
        McastState::Stopped => "stopped",
    };
    let mut out = format!(
        "session {}  {}  {state}  group {}\n  rate {} of {}, pass {}, {} blocks ({}), opened {} UTC\n",
        s.session.id,
        s.image,
        s.session.group,
        mbit(s.rate_bps as f64),
        mbit(s.ceiling_bps as f64),
        s.passes,
        s.members.first().map_or(0, |m| m.blocks_total),
        mib(s.session.length),
        date_time(s.started_ms),
    );
    let mut rows = vec![
        ["MAC", "STATE", "BLOCKS", "DONE", "LOSS", "RATE", "NOTE"]
            .map(String::from)
            .to_vec(),
    ];
    for m in &s.members {
        let state = match m.state {
            MemberState::Waiting => "waiting",
            MemberState::Receiving => "receiving",
            MemberState::Done => "done",
            MemberState::Unicast => "unicast",
        };
        let done = if m.blocks_total == 0 {
            100.0
        } else {
            f64::from(m.blocks_done) * 100.0 / f64::from(m.blocks_total)
        };
        rows.push(vec![
            m.mac.to_string(),
            state.to_string(),
            format!("{}/{}", m.blocks_done, m.blocks_total),
            format!("{done:.0}%"),
            format!("{:.1}%", f64::from(m.loss_ppm) / 1e4),
            mbit(f64::from(m.rate_kbps) * 1e3),
            m.reason.clone().unwrap_or_default(),
        ]);
    }
    for line in table(&rows).lines() {
        let _ = writeln!(out, "  {line}");
    }
    out
}

pub fn image_table(images: &[ImageSummary]) -> String {
    let mut rows = vec![
        [
            "NAME", "VERSION", "CREATED", "OS", "SIZE", "STORED", "CHUNKS", "ID",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for i in images {
        rows.push(vec![
            i.name.clone(),
            i.version.clone(),
            date_time(i.created_ms),
            os_family(i),
            human_bytes(i.size),
            human_bytes(i.stored_size),
            i.chunks.to_string(),
            short_id(&i.id),
        ]);
    }
    table(&rows)
}

fn os_family(i: &ImageSummary) -> String {
    serde_json::to_value(i.os_family)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "-".into())
}

/// An image's versions, oldest first, `latest` marked with `*`.
pub fn image_versions(v: &ImageVersions) -> String {
    let mut out = format!(
        "image   {}\nlatest  {}\n\n",
        v.name,
        v.latest.as_deref().unwrap_or("-")
    );
    let mut rows = vec![
        [
            "", "VERSION", "CREATED", "SIZE", "STORED", "CHUNKS", "ID", "PARENT",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for i in &v.versions {
        let latest = v.latest.as_deref() == Some(i.version.as_str());
        rows.push(vec![
            if latest { "*" } else { "" }.into(),
            i.version.clone(),
            date_time(i.created_ms),
            human_bytes(i.size),
            human_bytes(i.stored_size),
            i.chunks.to_string(),
            short_id(&i.id),
            i.parent
                .as_ref()
                .map(short_id)
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    out.push_str(&table(&rows));
    out
}

pub fn gc_summary(gc: &GcSummary) -> String {
    format!(
        "gc: removed {} unreferenced chunk(s), freed {}",
        gc.chunks_removed,
        human_bytes(gc.bytes_freed)
    )
}

/// The closing lines of `image import`.
pub fn import_summary(signed: &SignedManifest, stats: &UploadStats) -> String {
    let m = &signed.manifest;
    let total = m.chunks.len();
    format!(
        "imported {}@{}: {total} chunks ({} new, {} deduplicated), {} stream, {} new \
         ({} sent)\nmanifest {}\n",
        m.name,
        m.version,
        stats.chunks_new,
        total.saturating_sub(stats.chunks_new),
        mib(m.size),
        mib(stats.bytes_new),
        mib(stats.bytes_sent),
        signed.id
    )
}

/// Indented `NAME TYPE SIZE FSTYPE LABEL MOUNTPOINT` lines, children under parents.
fn block_lines(out: &mut String, devices: &[BlockDevice], depth: usize) {
    for d in devices {
        let _ = writeln!(
            out,
            "  {:indent$}{} {} {} {} {} {}",
            "",
            d.name,
            d.kind,
            human_bytes(d.size_bytes),
            d.fstype.as_deref().unwrap_or("-"),
            d.label.as_deref().unwrap_or("-"),
            d.mountpoint.as_deref().unwrap_or("-"),
            indent = depth * 2
        );
        block_lines(out, &d.children, depth + 1);
    }
}

/// An authorized_keys line without its base64 blob: type and comment are what people read.
fn key_summary(line: &str) -> String {
    let fields: Vec<&str> = line.split_whitespace().collect();
    match fields
        .iter()
        .position(|f| f.starts_with("ssh-") || f.starts_with("ecdsa-") || f.starts_with("sk-"))
    {
        Some(at) => {
            let mut words = vec![fields[at]];
            words.extend(fields.iter().skip(at + 2));
            words.join(" ")
        }
        None => line.to_string(),
    }
}

pub fn node_detail(detail: &NodeDetail) -> String {
    let node = &detail.node;
    let mut out = String::new();
    let _ = writeln!(out, "node      {}", node.mac);
    let _ = writeln!(out, "state     {}", node.state);
    let _ = writeln!(out, "hostname  {}", node.hostname.as_deref().unwrap_or("-"));
    let _ = writeln!(out, "ip        {}", node.ip.as_deref().unwrap_or("-"));
    let _ = writeln!(out, "layout    {}", node.layout.as_deref().unwrap_or("-"));
    let _ = writeln!(out, "image     {}", node.image.as_deref().unwrap_or("-"));
    let _ = writeln!(
        out,
        "access    root password {}, {} SSH key(s)",
        if node.root_password_set {
            "set"
        } else {
            "not set"
        },
        node.ssh_authorized_keys.len()
    );
    for key in &node.ssh_authorized_keys {
        let _ = writeln!(out, "  {}", key_summary(key));
    }
    if let Some(hw) = &node.hardware {
        let _ = writeln!(out, "firmware  {}", hw.firmware);
        let _ = writeln!(
            out,
            "cpu       {} x {}",
            hw.cpu.count,
            hw.cpu.model.as_deref().unwrap_or("unknown model")
        );
        let _ = writeln!(out, "memory    {}", human_bytes(hw.memory_bytes));
        let system = [&hw.dmi.vendor, &hw.dmi.product]
            .into_iter()
            .flatten()
            .cloned()
            .collect::<Vec<_>>()
            .join(" ");
        if !system.is_empty() {
            let _ = writeln!(out, "system    {system}");
        }
        for d in &hw.disks {
            let _ = writeln!(
                out,
                "disk      {} {} {}{}{}",
                d.path,
                human_bytes(d.size_bytes),
                if d.rotational { "hdd" } else { "ssd" },
                d.model
                    .as_deref()
                    .map(|m| format!(" model={m}"))
                    .unwrap_or_default(),
                d.serial
                    .as_deref()
                    .map(|s| format!(" serial={s}"))
                    .unwrap_or_default(),
            );
        }
        for n in &hw.nics {
            let _ = writeln!(
                out,
                "nic       {} {} {}",
                n.name,
                n.mac,
                n.driver.as_deref().unwrap_or("-")
            );
        }
    }
    if let Some(tree) = &detail.block_tree {
        let _ = writeln!(out, "\nblock devices (as the agent last reported them):");
        block_lines(&mut out, &tree.devices, 0);
    }
    let timings = phase_timings(&detail.events);
    if !timings.is_empty() {
        let _ = writeln!(out, "\nlatest boot (seconds from its first event):");
        for (phase, secs) in timings {
            let _ = writeln!(out, "  {:<18} +{secs:.1}s", phase.as_str());
        }
    }
    if !detail.events.is_empty() {
        let _ = writeln!(out, "\nevents:");
        for e in &detail.events {
            let _ = writeln!(
                out,
                "  {} {:<16} {}",
                format_ms(e.at_ms),
                e.phase.as_str(),
                e.message
            );
        }
    }
    out
}

/// `HH:MM:SS.mmm` UTC: enough to read a boot's timeline.
fn format_ms(at_ms: i64) -> String {
    let ms = at_ms.rem_euclid(86_400_000);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use metalcast_proto::image::{
        ChunkRef, Chunking, Digest, FORMAT_VERSION, Manifest, OsFamily, PublicKey, Signature,
    };
    use metalcast_proto::{Cpu, Disk, Dmi, Firmware, Hardware, Level, MacAddr, NodeState};

    fn mac() -> MacAddr {
        "52:54:00:00:00:01".parse().unwrap()
    }

    fn event(phase: Phase, at_ms: i64) -> Event {
        Event {
            mac: mac(),
            phase,
            level: Level::Info,
            message: String::new(),
            at_ms,
        }
    }

    fn node(hardware: Option<Hardware>) -> Node {
        Node {
            mac: mac(),
            state: NodeState::Discovered,
            hostname: None,
            ip: Some("10.0.0.5".into()),
            hardware,
            layout: None,
            image: None,
            root_password_set: false,
            ssh_authorized_keys: Vec::new(),
            first_seen_ms: 0,
            last_seen_ms: 1_000,
        }
    }

    fn disk(path: &str, size_bytes: u64) -> Disk {
        Disk {
            path: path.into(),
            size_bytes,
            model: None,
            serial: None,
            rotational: false,
            by_path: None,
        }
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(1536), "1.5K");
        assert_eq!(human_bytes(8 << 30), "8.0G");
        assert_eq!(human_bytes(20 << 30), "20G");
    }

    #[test]
    fn table_lists_firmware_and_disks() {
        let hw = Hardware {
            firmware: Firmware::Uefi,
            cpu: Cpu {
                count: 1,
                model: None,
            },
            memory_bytes: 1 << 30,
            disks: vec![disk("/dev/vda", 8 << 30), disk("/dev/vdb", 4 << 30)],
            nics: vec![],
            dmi: Dmi::default(),
        };
        let text = node_table(&[node(Some(hw)), node(None)], 61_000);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("MAC"));
        assert!(
            lines[1].contains("52:54:00:00:00:01  discovered  uefi"),
            "{}",
            lines[1]
        );
        assert!(lines[1].contains("vda 8.0G, vdb 4.0G"));
        assert!(lines[1].ends_with("1m ago"));
        assert!(lines[2].contains("discovered  -"));
    }

    #[test]
    fn timings_cover_only_the_latest_boot() {
        let events = vec![
            event(Phase::Dhcp, 0),
            event(Phase::IpxeScript, 1_000),
            event(Phase::Dhcp, 50_000),
            event(Phase::Tftp, 52_000),
            event(Phase::Dhcp, 53_000),
            event(Phase::IpxeScript, 54_500),
            event(Phase::Kernel, 56_000),
            event(Phase::AgentRegistered, 70_000),
        ];
        let t = phase_timings(&events);
        assert_eq!(
            t,
            vec![
                (Phase::Dhcp, 0.0),
                (Phase::Tftp, 2.0),
                (Phase::IpxeScript, 4.5),
                (Phase::Kernel, 6.0),
                (Phase::AgentRegistered, 20.0)
            ]
        );
    }

    fn summary(version: &str, created_ms: i64, parent: Option<Digest>) -> ImageSummary {
        ImageSummary {
            name: "deb".into(),
            version: version.into(),
            id: Digest([version.len() as u8 * 17; 32]),
            parent,
            created_ms,
            os_family: OsFamily::Debian,
            size: 600 << 20,
            stored_size: 250 << 20,
            chunks: 9600,
        }
    }

    #[test]
    fn image_table_has_one_row_per_version() {
        let text = image_table(&[summary("1", 0, None), summary("22", 86_400_000, None)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].starts_with("NAME  VERSION  CREATED"),
            "{}",
            lines[0]
        );
        assert_eq!(
            lines[2],
            "deb   22       1970-01-02 00:00  debian  600M  250M    9600    222222222222"
        );
    }

    #[test]
    fn versions_mark_latest_and_show_parents() {
        let first = summary("1", 0, None);
        let v = ImageVersions {
            name: "deb".into(),
            latest: Some("1".into()),
            versions: vec![first.clone(), summary("22", 1000, Some(first.id))],
        };
        let text = image_versions(&v);
        assert!(text.starts_with("image   deb\nlatest  1\n"), "{text}");
        let rows: Vec<&str> = text.lines().skip(3).collect();
        assert!(rows[1].starts_with("*  1 "), "{}", rows[1]);
        assert!(rows[1].ends_with("111111111111  -"), "{}", rows[1]);
        assert!(rows[2].starts_with("   22"), "{}", rows[2]);
        assert!(
            rows[2].ends_with("222222222222  111111111111"),
            "{}",
            rows[2]
        );
    }

    #[test]
    fn import_summary_counts_new_and_deduplicated() {
        let chunk = |i: u8| ChunkRef {
            hash: Digest([i; 32]),
            offset: u64::from(i) << 20,
            len: 1 << 20,
            stored_len: 1000,
            entry_start: 0,
        };
        let signed = SignedManifest {
            id: Digest([0xab; 32]),
            key: PublicKey([1; 32]),
            signature: Signature([2; 64]),
            manifest: Manifest {
                format: FORMAT_VERSION,
                name: "deb".into(),
                version: "20261121-014030".into(),
                parent: None,
                created_ms: 0,
                os_family: OsFamily::Debian,
                kernel: None,
                initrd: None,
                size: 4 << 20,
                chunking: Chunking {
                    min_size: 16 << 10,
                    avg_size: 64 << 10,
                    max_size: 256 << 10,
                },
                chunks: (0..4).map(chunk).collect(),
            },
        };
        let stats = UploadStats {
            chunks_new: 1,
            bytes_new: 1 << 20,
            bytes_sent: 1000,
        };
        assert_eq!(
            import_summary(&signed, &stats),
            format!(
                "imported deb@20261121-014030: 4 chunks (1 new, 3 deduplicated), 4.0 MiB \
                 stream, 1.0 MiB new (0.0 MiB sent)\nmanifest {}\n",
                "ab".repeat(32)
            )
        );
    }

    #[test]
    fn gc_and_settings_lines() {
        let gc = GcSummary {
            chunks_removed: 3,
            bytes_freed: 3 << 20,
        };
        assert_eq!(
            gc_summary(&gc),
            "gc: removed 3 unreferenced chunk(s), freed 3.0M"
        );
        let mut n = node(None);
        n.image = Some("deb@1".into());
        assert_eq!(
            node_settings(&n),
            "52:54:00:00:00:01 state=discovered hostname=- layout=- image=deb@1\n"
        );
    }

    #[test]
    fn access_shows_whether_a_password_is_set_and_each_key_without_its_blob() {
        let mut n = node(None);
        n.root_password_set = true;
        n.ssh_authorized_keys = vec![
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHbN5Lf0 ops@bastion".into(),
            "no-pty ssh-rsa AAAAB3NzaC1yc2EAAAADAQAB".into(),
        ];
        let text = node_detail(&NodeDetail {
            node: n,
            block_tree: None,
            events: vec![],
        });
        assert!(
            text.contains(
                "access    root password set, 2 SSH key(s)\n  ssh-ed25519 ops@bastion\n  ssh-rsa\n"
            ),
            "{text}"
        );
        assert!(!text.contains("AAAA"), "{text}");
    }

    #[test]
    fn sessions_show_each_members_progress() {
        use metalcast_proto::McastMember;
        use metalcast_proto::mcast::{ManifestHash, McastSession, SessionId};
        let member = |mac: &str, state, done, reason: Option<&str>| McastMember {
            mac: mac.parse().unwrap(),
            state,
            blocks_done: done,
            blocks_total: 700,
            loss_ppm: 49_000,
            rate_kbps: 180_200,
            reason: reason.map(String::from),
        };
        let status = McastSessionStatus {
            session: McastSession {
                id: SessionId(0xab),
                group: "239.77.0.1:5000".parse().unwrap(),
                manifest_hash: ManifestHash([0; 32]),
                length: 700 << 20,
                block_size: 1 << 20,
                block_list: String::new(),
            },
            image: "debian@1".into(),
            state: McastState::Sending,
            started_ms: 0,
            rate_bps: 412_300_000,
            ceiling_bps: 500_000_000,
            passes: 2,
            members: vec![
                member("52:54:00:00:00:01", MemberState::Receiving, 412, None),
                member(
                    "52:54:00:00:00:02",
                    MemberState::Unicast,
                    100,
                    Some("too slow"),
                ),
            ],
        };
        assert_eq!(
            session(&status),
            "session 00000000000000ab  debian@1  sending  group 239.77.0.1:5000\n  \
             rate 412.3 Mbit/s of 500.0 Mbit/s, pass 2, 700 blocks (700.0 MiB), opened 1970-01-01 00:00 UTC\n  \
             MAC                STATE      BLOCKS   DONE  LOSS  RATE          NOTE\n  \
             52:54:00:00:00:01  receiving  412/700  59%   4.9%  180.2 Mbit/s\n  \
             52:54:00:00:00:02  unicast    100/700  14%   4.9%  180.2 Mbit/s  too slow\n"
        );
    }

    #[test]
    fn utc_fields_match_the_calendar() {
        assert_eq!(utc_fields(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(utc_fields(1_795_225_230), (2026, 11, 21, 1, 40, 30));
        assert_eq!(utc_fields(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(utc_fields(-1), (1969, 12, 31, 23, 59, 59));
        assert_eq!(date_time(4_102_444_800_000), "2100-01-01 00:00");
    }

    #[test]
    fn times_print_as_clock() {
        assert_eq!(format_ms(3_723_004), "01:02:03.004");
    }
}
