//! Text rendering of API answers (pure, so it is unit-tested without a server).

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use metalcast_proto::layout::BlockDevice;
use metalcast_proto::{Event, Node, NodeDetail, Phase};

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
        "{} state={} hostname={} layout={}\n",
        node.mac,
        node.state,
        node.hostname.as_deref().unwrap_or("-"),
        node.layout.as_deref().unwrap_or("-")
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

pub fn node_detail(detail: &NodeDetail) -> String {
    let node = &detail.node;
    let mut out = String::new();
    let _ = writeln!(out, "node      {}", node.mac);
    let _ = writeln!(out, "state     {}", node.state);
    let _ = writeln!(out, "hostname  {}", node.hostname.as_deref().unwrap_or("-"));
    let _ = writeln!(out, "ip        {}", node.ip.as_deref().unwrap_or("-"));
    let _ = writeln!(out, "layout    {}", node.layout.as_deref().unwrap_or("-"));
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

    #[test]
    fn times_print_as_clock() {
        assert_eq!(format_ms(3_723_004), "01:02:03.004");
    }
}
