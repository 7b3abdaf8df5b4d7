//! The dry run: what applying a plan removes (from the current block tree) and creates.

use std::fmt::Write;

use metalcast_proto::layout::BlockTree;

use crate::commands::in_scope;
use crate::plan::Plan;
use crate::units::human;

/// A diff-like listing: `-` lines for what is on the plan's disks now (when the block tree
/// is known), `+` lines for what the plan creates.
pub fn dry_run(plan: &Plan, current: Option<&BlockTree>) -> String {
    let mut out = String::new();
    if let Some(tree) = current {
        let scope = in_scope(tree, plan);
        let mut listed = std::collections::BTreeSet::new();
        for d in &scope {
            // Arrays and LVs stacked on several members appear under each.
            if !listed.insert(d.path.as_str()) {
                continue;
            }
            let is_disk = plan.disks.iter().any(|p| p.path == d.path);
            if is_disk && d.fstype.is_none() && d.pttype.is_none() && d.children.is_empty() {
                let _ = writeln!(out, "  {} {} (blank)", d.path, human(d.size_bytes));
                continue;
            }
            let mut line = format!("- {} {} {}", d.path, d.kind, human(d.size_bytes));
            // lsblk repeats the disk's table type on each partition; say it once.
            let table = if d.kind == "part" { &None } else { &d.pttype };
            for (what, value) in [
                ("table ", table),
                ("", &d.fstype),
                ("LABEL=", &d.label),
                ("PARTLABEL=", &d.partlabel),
            ] {
                if let Some(v) = value {
                    let _ = write!(line, " {what}{v}");
                }
            }
            if let Some(m) = &d.mountpoint {
                let _ = write!(line, " (mounted at {m})");
            }
            let _ = writeln!(out, "{line}");
        }
        for md in &tree.md_arrays {
            if md
                .members
                .iter()
                .any(|m| scope.iter().any(|d| d.path == m.path))
            {
                let _ = writeln!(
                    out,
                    "- array {} {} {}",
                    md.path,
                    md.level.as_deref().unwrap_or("?"),
                    md.name.as_deref().unwrap_or("")
                );
            }
        }
        let mut vgs: Vec<&str> = tree
            .physical_volumes
            .iter()
            .filter(|pv| scope.iter().any(|d| d.path == pv.path))
            .filter_map(|pv| pv.vg.as_deref())
            .collect();
        vgs.sort_unstable();
        vgs.dedup();
        for vg in vgs {
            let lvs: Vec<&str> = tree
                .logical_volumes
                .iter()
                .filter(|lv| lv.vg == vg)
                .map(|lv| lv.name.as_str())
                .collect();
            let _ = if lvs.is_empty() {
                writeln!(out, "- volume group {vg}")
            } else {
                writeln!(out, "- volume group {vg} with LVs {}", lvs.join(" "))
            };
        }
    }
    for d in &plan.disks {
        match d.table {
            Some(t) => {
                let _ = writeln!(out, "+ {} {t} table", d.path);
            }
            None => {
                let _ = writeln!(out, "+ {} wiped, used whole", d.path);
            }
        }
        for p in &d.partitions {
            let _ = writeln!(
                out,
                "+ {} {} {} at {} {:?}",
                p.path,
                p.kind,
                human(p.size),
                human(p.start),
                p.label
            );
        }
    }
    for r in &plan.raids {
        let _ = writeln!(
            out,
            "+ array {} {} \"{}\" from {} ({})",
            r.path,
            r.level.name(),
            r.name,
            r.members.join(" "),
            human(r.size_bytes)
        );
    }
    for vg in &plan.vgs {
        let pvs: Vec<&str> = vg.pvs.iter().map(|p| p.path.as_str()).collect();
        let _ = writeln!(out, "+ volume group {} on {}", vg.name, pvs.join(" "));
        for lv in &vg.lvs {
            let _ = writeln!(
                out,
                "+ {} {}{}",
                lv.path,
                if lv.rest { "at least " } else { "" },
                human(lv.extents * vg.extent_size)
            );
        }
    }
    for fs in &plan.filesystems {
        let mut line = format!("+ {} on {}", fs.kind, fs.device);
        if let Some(m) = &fs.mount {
            let _ = write!(line, " at {m}");
        }
        let _ = write!(line, " UUID={}", fs.uuid);
        if let Some(l) = &fs.label {
            let _ = write!(line, " LABEL={l}");
        }
        let _ = writeln!(out, "{line}");
    }
    out
}
