//! Disk selection: which of the node's disks each `[[disk]]` rule stands for.

use std::collections::BTreeMap;

use metalcast_proto::Disk;
use metalcast_proto::layout::Pick;

use crate::error::FieldError;
use crate::model::{DiskFilter, DiskRule, Layout};
use crate::units::human;

/// For each rule, in order, the disks it selected (one, or `count` of equal size). Rules are
/// applied in order and a disk taken by one rule is not seen by later ones.
pub fn select<'a>(
    layout: &Layout,
    disks: &'a [Disk],
) -> Result<Vec<Vec<&'a Disk>>, Vec<FieldError>> {
    let mut sorted: Vec<&Disk> = disks.iter().filter(|d| d.size_bytes > 0).collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut taken: BTreeMap<&str, usize> = BTreeMap::new();
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, rule) in layout.disks.iter().enumerate() {
        let candidates: Vec<&Disk> = sorted
            .iter()
            .copied()
            .filter(|d| !taken.contains_key(d.path.as_str()) && matches(&rule.filter, d))
            .collect();
        match choose(rule, &candidates) {
            Ok(chosen) => {
                for d in &chosen {
                    taken.insert(d.path.as_str(), i);
                }
                out.push(chosen);
            }
            Err(why) => {
                errors.push(FieldError::new(
                    format!("disk[{i}]"),
                    format!(
                        "rule {} ({}): {why}; disks seen: {}",
                        rule.name,
                        describe_rule(rule),
                        seen(&sorted, &taken)
                    ),
                ));
                out.push(Vec::new());
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn matches(f: &DiskFilter, d: &Disk) -> bool {
    f.path.as_ref().is_none_or(|p| *p == d.path)
        && f.by_path.as_ref().is_none_or(|p| {
            d.by_path.as_deref() == Some(p.trim_start_matches("/dev/disk/by-path/"))
        })
        && f.serial
            .as_ref()
            .is_none_or(|s| d.serial.as_deref().map(str::trim) == Some(s.trim()))
        && f.model.as_ref().is_none_or(|m| {
            d.model
                .as_deref()
                .is_some_and(|dm| glob(m.trim(), dm.trim()))
        })
        && f.min_size.is_none_or(|min| d.size_bytes >= min)
        && f.max_size.is_none_or(|max| d.size_bytes <= max)
        && f.rotational.is_none_or(|r| d.rotational == r)
}

fn choose<'a>(rule: &DiskRule, candidates: &[&'a Disk]) -> Result<Vec<&'a Disk>, String> {
    if candidates.is_empty() {
        return Err("no disk matches".into());
    }
    let Some(n) = rule.count else {
        return match (rule.pick, candidates) {
            (_, [one]) => Ok(vec![*one]),
            // Ties go to the first path, so the choice is stable.
            (Some(Pick::Smallest), _) => Ok(candidates
                .iter()
                .min_by_key(|d| d.size_bytes)
                .into_iter()
                .copied()
                .collect()),
            (Some(Pick::Largest), _) => Ok(candidates
                .iter()
                .rev()
                .max_by_key(|d| d.size_bytes)
                .into_iter()
                .copied()
                .collect()),
            (None, _) => Err(format!(
                "{} disks match ({}), which is ambiguous: narrow the rule or add \
                 pick = \"smallest\" or \"largest\"",
                candidates.len(),
                paths(candidates)
            )),
        };
    };
    let n = n as usize;
    let mut by_size: BTreeMap<u64, Vec<&Disk>> = BTreeMap::new();
    for d in candidates {
        by_size.entry(d.size_bytes).or_default().push(d);
    }
    let groups: Vec<&Vec<&Disk>> = by_size.values().filter(|g| g.len() == n).collect();
    match (rule.pick, groups.as_slice()) {
        (_, []) => Err(format!(
            "needs exactly {n} disks of equal size; the matching disks come in sizes {}",
            by_size
                .iter()
                .map(|(size, g)| format!("{} ×{}", human(*size), g.len()))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        (_, [one]) => Ok((*one).clone()),
        (Some(Pick::Smallest), [first, ..]) => Ok((*first).clone()),
        (Some(Pick::Largest), [.., last]) => Ok((*last).clone()),
        (None, _) => Err(format!(
            "{} groups of {n} equal disks match, which is ambiguous: narrow the rule or add \
             pick = \"smallest\" or \"largest\"",
            groups.len()
        )),
    }
}

fn paths(disks: &[&Disk]) -> String {
    disks
        .iter()
        .map(|d| d.path.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe_rule(rule: &DiskRule) -> String {
    let f = &rule.filter;
    let mut parts = Vec::new();
    if let Some(p) = &f.path {
        parts.push(format!("path = {p:?}"));
    }
    if let Some(p) = &f.by_path {
        parts.push(format!("by_path = {p:?}"));
    }
    if let Some(s) = &f.serial {
        parts.push(format!("serial = {s:?}"));
    }
    if let Some(m) = &f.model {
        parts.push(format!("model = {m:?}"));
    }
    if let Some(s) = f.min_size {
        parts.push(format!("min_size = {}", human(s)));
    }
    if let Some(s) = f.max_size {
        parts.push(format!("max_size = {}", human(s)));
    }
    if let Some(r) = f.rotational {
        parts.push(format!("rotational = {r}"));
    }
    if let Some(n) = rule.count {
        parts.push(format!("count = {n}"));
    }
    if let Some(p) = rule.pick {
        parts.push(format!(
            "pick = {}",
            match p {
                Pick::Smallest => "smallest",
                Pick::Largest => "largest",
            }
        ));
    }
    if parts.is_empty() {
        "any disk".into()
    } else {
        parts.join(", ")
    }
}

/// One line per disk: path, size, model, serial, kind; and which rule took it.
fn seen(disks: &[&Disk], taken: &BTreeMap<&str, usize>) -> String {
    if disks.is_empty() {
        return "none".into();
    }
    disks
        .iter()
        .map(|d| {
            let mut s = format!("{} {}", d.path, human(d.size_bytes));
            if let Some(m) = &d.model {
                s.push_str(&format!(" {:?}", m.trim()));
            }
            if let Some(serial) = &d.serial {
                s.push_str(&format!(" serial {serial}"));
            }
            s.push_str(if d.rotational {
                " rotational"
            } else {
                " non-rotational"
            });
            if let Some(i) = taken.get(d.path.as_str()) {
                s.push_str(&format!(" (taken by disk[{i}])"));
            }
            s
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Case-insensitive glob with `*` (any run) and `?` (one character).
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    // Iterative matching with one backtrack point: linear in practice, no recursion.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_like_a_shell_ignoring_case() {
        assert!(glob("Samsung*", "SAMSUNG MZ7LH960"));
        assert!(glob("*960*", "SAMSUNG MZ7LH960HAJR"));
        assert!(glob("QEMU HARDDIS?", "QEMU HARDDISK"));
        assert!(glob("*", ""));
        assert!(!glob("QEMU", "QEMU HARDDISK"));
        assert!(!glob("?", ""));
        assert!(glob("a*b*c", "aXbYbZc"));
        assert!(!glob("a*b*c", "aXbYbZ"));
    }
}
