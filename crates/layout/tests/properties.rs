//! Property tests: the example layouts against random disk sets. Whatever the planner
//! accepts fits its disks; whatever it refuses, it refuses naming a field.

use metalcast_layout::{
    ALIGN, Action, GIB, Layout, MEMBER_TOLERANCE_PERCENT, MIB, PE_START, Plan, TAIL, commands,
    fstab, plan,
};
use metalcast_proto::layout::FsType;
use metalcast_proto::{Disk, Firmware};
use proptest::prelude::*;
use proptest::strategy::ValueTree;

const EXAMPLES: [&str; 5] = [
    include_str!("../../../layouts/single-bios.toml"),
    include_str!("../../../layouts/single-uefi.toml"),
    include_str!("../../../layouts/raid1-lvm-uefi.toml"),
    include_str!("../../../layouts/raid10-xfs.toml"),
    include_str!("../../../layouts/raid5-data.toml"),
];

/// Fields a planner error may name: the layout's top-level keys.
const ROOTS: [&str; 5] = ["disk", "raid", "vg", "filesystem", "bootloader"];

fn disks() -> impl Strategy<Value = Vec<Disk>> {
    // Sizes from a short list so that sizes repeat; sometimes a few MiB more, as disks of one
    // nominal size from different vendors are.
    let size = || {
        (
            prop::sample::select(vec![1u64, 4, 8, 10, 16, 20, 64, 500, 2048]),
            prop_oneof![3 => Just(0u64), 1 => 0u64..64 * MIB],
        )
            .prop_map(|(gib, extra)| gib * GIB + extra)
    };
    // A group of equal disks (what RAID rules ask for) among others, in random order.
    (
        size(),
        0usize..=4,
        prop::collection::vec(size(), 0..=3),
        any::<bool>(),
    )
        .prop_filter("at least one disk", |(_, n, others, _)| {
            n + others.len() > 0
        })
        .prop_flat_map(|(group, n, others, rotational)| {
            let mut sizes = vec![group; n];
            sizes.extend(others);
            (Just(sizes).prop_shuffle(), Just(rotational))
        })
        .prop_map(|(sizes, rotational)| {
            sizes
                .into_iter()
                .enumerate()
                .map(|(i, size_bytes)| Disk {
                    path: format!("/dev/vd{}", char::from(b'a' + i as u8)),
                    size_bytes,
                    model: Some("QEMU HARDDISK".into()),
                    serial: Some(format!("SN{i}")),
                    // The raid1 example asks for non-rotational disks.
                    rotational: rotational && i % 2 == 0,
                    by_path: None,
                })
                .collect()
        })
}

fn firmware() -> impl Strategy<Value = Firmware> {
    prop_oneof![Just(Firmware::Bios), Just(Firmware::Uefi)]
}

fn check_fits(p: &Plan, disks: &[Disk]) -> Result<(), TestCaseError> {
    let mut used = std::collections::BTreeSet::new();
    for d in &p.disks {
        let real = disks.iter().find(|x| x.path == d.path);
        prop_assert!(
            real.is_some_and(|r| r.size_bytes == d.size_bytes),
            "{} unknown",
            d.path
        );
        prop_assert!(used.insert(d.path.clone()), "{} used twice", d.path);
        let usable_end = d.size_bytes / ALIGN * ALIGN - TAIL;
        let mut previous_end = ALIGN;
        for part in &d.partitions {
            prop_assert!(part.size > 0);
            prop_assert_eq!(part.start % ALIGN, 0, "{} start", part.path);
            prop_assert_eq!(part.size % ALIGN, 0, "{} size", part.path);
            prop_assert!(part.start >= previous_end, "{} overlaps", part.path);
            prop_assert!(
                part.end() <= usable_end,
                "{} runs past the usable end",
                part.path
            );
            previous_end = part.end();
        }
    }
    let device_size = |path: &str| -> Option<u64> {
        p.disks
            .iter()
            .find(|d| d.path == path)
            .map(|d| d.size_bytes)
            .or_else(|| {
                p.disks
                    .iter()
                    .flat_map(|d| &d.partitions)
                    .find(|x| x.path == path)
                    .map(|x| x.size)
            })
            .or_else(|| {
                p.raids
                    .iter()
                    .find(|r| r.path == path)
                    .map(|r| r.size_bytes)
            })
    };
    for r in &p.raids {
        let sizes: Vec<u64> = r
            .members
            .iter()
            .map(|m| device_size(m).unwrap_or(0))
            .collect();
        let (min, max) = (
            *sizes.iter().min().unwrap_or(&0),
            *sizes.iter().max().unwrap_or(&0),
        );
        prop_assert!(min > 0);
        prop_assert!(
            (max - min) * 100 <= min * MEMBER_TOLERANCE_PERCENT,
            "{sizes:?}"
        );
        prop_assert_eq!(r.member_size, min);
        prop_assert!(r.size_bytes > 0);
        // No level yields more than all members together.
        prop_assert!(r.size_bytes <= min * r.members.len() as u64);
    }
    for vg in &p.vgs {
        let mut total = 0;
        for pv in &vg.pvs {
            prop_assert_eq!(Some(pv.size_bytes), device_size(&pv.path));
            prop_assert_eq!(pv.extents, (pv.size_bytes - PE_START) / vg.extent_size);
            total += pv.extents;
        }
        prop_assert_eq!(total, vg.extents);
        let lvs: u64 = vg.lvs.iter().map(|l| l.extents).sum();
        prop_assert!(lvs <= vg.extents, "{lvs} extents of LVs in {}", vg.extents);
        prop_assert!(vg.lvs.iter().all(|l| l.extents > 0));
    }
    for fs in &p.filesystems {
        if fs.kind == FsType::Xfs {
            prop_assert!(fs.size_bytes >= 300 * MIB);
        }
    }
    Ok(())
}

/// Plan one case and check it; `Ok(true)` when the planner accepted it.
fn check_case(example: usize, disks: &[Disk], firmware: Firmware) -> Result<bool, TestCaseError> {
    let layout =
        Layout::from_toml(EXAMPLES[example]).map_err(|e| TestCaseError::fail(e.to_string()))?;
    match plan(&layout, disks, firmware, "52:54:00:12:34:56") {
        Ok(p) => {
            check_fits(&p, disks)?;
            // Planning is a function: the same input, the same plan.
            prop_assert_eq!(
                &plan(&layout, disks, firmware, "52:54:00:12:34:56").ok(),
                &Some(p.clone())
            );
            let actions = commands(&p, "/target");
            let waits = actions
                .iter()
                .filter(|a| matches!(a, Action::WaitForDevice(_)))
                .count();
            let partitions: usize = p.disks.iter().map(|d| d.partitions.len()).sum();
            prop_assert!(waits >= partitions + p.raids.len());
            prop_assert!(fstab(&p).lines().count() > 2);
            Ok(true)
        }
        Err(e) => {
            prop_assert!(!e.fields().is_empty(), "{e}");
            for f in e.fields() {
                let root = f.field.split(['[', '.']).next().unwrap_or("");
                prop_assert!(ROOTS.contains(&root), "unnamed field in {f}");
                prop_assert!(!f.message.is_empty());
            }
            Ok(false)
        }
    }
}

fn case() -> impl Strategy<Value = (usize, Vec<Disk>, Firmware)> {
    (0..EXAMPLES.len(), disks(), firmware())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn plans_fit_and_refusals_name_a_field((example, disks, firmware) in case()) {
        check_case(example, &disks, firmware)?;
    }
}

/// The random disk sets are not all refused (nor all accepted): each example both plans and
/// fails on some of them, so the property above checks real plans.
#[test]
fn random_disk_sets_reach_both_outcomes_for_every_example() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut outcomes = [(0u32, 0u32); EXAMPLES.len()];
    for _ in 0..2000 {
        let (example, disks, firmware) = case().new_tree(&mut runner).unwrap().current();
        match check_case(example, &disks, firmware) {
            Ok(true) => outcomes[example].0 += 1,
            Ok(false) => outcomes[example].1 += 1,
            Err(e) => panic!("{e}"),
        }
    }
    for (i, (planned, refused)) in outcomes.iter().enumerate() {
        assert!(
            *planned > 0 && *refused > 0,
            "example {i}: {planned} planned, {refused} refused"
        );
    }
}

#[test]
fn a_raid5_layout_on_two_disks_fails_before_anything_is_touched() {
    let layout = Layout::from_toml(EXAMPLES[4]).unwrap();
    let disks = [GIB * 20, GIB * 100]
        .iter()
        .enumerate()
        .map(|(i, &size_bytes)| Disk {
            path: format!("/dev/vd{}", char::from(b'a' + i as u8)),
            size_bytes,
            model: None,
            serial: None,
            rotational: true,
            by_path: None,
        })
        .collect::<Vec<_>>();
    let e = plan(&layout, &disks, Firmware::Bios, "s").unwrap_err();
    assert_eq!(e.fields()[0].field, "disk[1]", "{e}");
    assert!(
        e.to_string()
            .contains("needs exactly 3 disks of equal size"),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("/dev/vda 20 GiB rotational (taken by disk[0])"),
        "{e}"
    );
}
