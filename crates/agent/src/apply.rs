//! Applying the node's layout: which assignment to act on, whether the disks may be wiped,
//! what the events say (pure, tested here), and the run that follows those decisions.

use std::time::{Duration, Instant};

use metalcast_layout::exec::{self, Progress};
use metalcast_layout::{
    Action, Command, Layout, Plan, commands, teardown_commands, teardown_needed, verify,
};
use metalcast_proto::layout::{BlockDevice, BlockTree};
use metalcast_proto::{AgentPlan, Disk, Firmware, Level, NamedLayout, Phase};
use tracing::{error, info};

use crate::appliance::{Appliance, chain, with_retry};
use crate::backoff::Backoff;
use crate::discover;
use crate::events::EventQueue;

/// Where the new filesystems are mounted; the image goes in there next.
pub const TARGET: &str = "/target";
/// Most items a refusal lists of what the disks hold.
const MAX_LISTED: usize = 8;

/// What the agent did with a layout in this boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// On the disks and verified: not applied again in this boot.
    Applied(NamedLayout),
    /// Invalid, refused or failed: tried again only once the assigned layout or the
    /// permission to wipe changes (or the node boots again).
    Stopped { layout: NamedLayout, may_wipe: bool },
}

/// The layout to apply now: the assigned one, unless this boot already acted on the same
/// assignment. `None` also when no layout is assigned.
pub fn to_apply<'a>(plan: &'a AgentPlan, last: Option<&Outcome>) -> Option<&'a NamedLayout> {
    let layout = plan.layout.as_ref()?;
    let handled = match last {
        None => false,
        Some(Outcome::Applied(done)) => done == layout,
        Some(Outcome::Stopped {
            layout: tried,
            may_wipe,
        }) => tried == layout && *may_wipe == plan.may_wipe,
    };
    (!handled).then_some(layout)
}

/// Parses and plans `named` against the node's disks; the error is the whole message for
/// the console and the event.
pub fn plan_for(
    named: &NamedLayout,
    disks: &[Disk],
    firmware: Firmware,
    seed: &str,
) -> Result<Plan, String> {
    let layout = Layout::from_toml(&named.toml)
        .map_err(|e| format!("layout {} is not valid: {e}", named.name))?;
    metalcast_layout::plan(&layout, disks, firmware, seed)
        .map_err(|e| format!("layout {} does not fit this node: {e}", named.name))
}

/// Whether the plan may go on, given what its disks hold now.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead, running `teardown` first (empty when the disks hold nothing).
    Apply { teardown: Vec<Action> },
    /// The disks hold data and the node may not be wiped: the whole message.
    Refuse(String),
}

pub fn decide(tree: &BlockTree, plan: &Plan, may_wipe: bool) -> Decision {
    if !teardown_needed(tree, plan) {
        return Decision::Apply {
            teardown: Vec::new(),
        };
    }
    if !may_wipe {
        return Decision::Refuse(format!(
            "refusing to wipe: node is not marked for provisioning and its disks hold data ({})",
            holdings(tree, plan)
        ));
    }
    Decision::Apply {
        teardown: teardown_commands(tree, plan),
    }
}

/// What the plan's disks hold, for people: `vda gpt, vda1 ext4 "data", md127 raid1`.
/// Partitions without a signature go unnamed: their disk's table is listed.
pub fn holdings(tree: &BlockTree, plan: &Plan) -> String {
    let on_plan = |d: &&BlockDevice| plan.disks.iter().any(|p| p.path == d.path);
    let mut seen: Vec<&str> = Vec::new();
    let mut items: Vec<String> = Vec::new();
    // An array appears under each of its members; it is listed once.
    for d in tree
        .devices
        .iter()
        .filter(on_plan)
        .flat_map(BlockDevice::walk)
    {
        if seen.contains(&d.path.as_str()) {
            continue;
        }
        seen.push(&d.path);
        let mut words = vec![d.name.clone()];
        match d.kind.as_str() {
            "disk" => words.extend(d.pttype.clone()),
            "part" => {}
            stacked => words.push(stacked.to_owned()),
        }
        words.extend(d.fstype.clone());
        words.extend(d.label.as_ref().map(|l| format!("{l:?}")));
        words.extend(d.mountpoint.as_ref().map(|m| format!("mounted on {m}")));
        if words.len() > 1 {
            items.push(words.join(" "));
        }
    }
    if items.is_empty() {
        // teardown_needed saw something lsblk does not name (a volume group, an array).
        return format!(
            "volumes or arrays on {}",
            plan.disks
                .iter()
                .map(|d| d.path.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let more = items.len().saturating_sub(MAX_LISTED);
    items.truncate(MAX_LISTED);
    let mut text = items.join(", ");
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    text
}

/// The event after a step: `step 3/17 sfdisk --wipe always … /dev/vda (0.4 s)`. An sfdisk
/// script is left out; the plan shows it.
pub fn step_message(p: &Progress<'_>) -> String {
    let what = match p.action {
        Action::Run(c) => Command {
            stdin: None,
            ..c.clone()
        }
        .to_string(),
        Action::WaitForDevice(path) => format!("wait for {path}"),
    };
    format!(
        "step {}/{} {what} ({})",
        p.index + 1,
        p.total,
        seconds(p.duration)
    )
}

fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Layout events: on the console and, in order, to the appliance.
struct Report<'a>(&'a EventQueue);

impl Report<'_> {
    fn info(&self, message: String) {
        info!("{message}");
        self.0.record(Phase::Layout, Level::Info, message);
    }

    fn error(&self, message: String) {
        error!("{message}");
        self.0.record(Phase::Layout, Level::Error, message);
    }
}

/// Plans `named` on this node's disks and applies it, or says why not. Nothing touches a
/// disk before the plan is made and the wipe is allowed. The plan comes back with an
/// applied layout: the image's configuration is written from it.
pub fn apply(
    api: &Appliance,
    events: &EventQueue,
    backoff: &mut Backoff,
    named: &NamedLayout,
    may_wipe: bool,
) -> (Outcome, Option<Plan>) {
    let mut applied = None;
    let outcome = apply_inner(api, events, backoff, named, may_wipe, &mut applied);
    (outcome, applied)
}

fn apply_inner(
    api: &Appliance,
    events: &EventQueue,
    backoff: &mut Backoff,
    named: &NamedLayout,
    may_wipe: bool,
    applied: &mut Option<Plan>,
) -> Outcome {
    let report = Report(events);
    let name = &named.name;
    let stopped = Outcome::Stopped {
        layout: named.clone(),
        may_wipe,
    };
    // Disks are read again: one may have appeared or gone since registration.
    let hardware = discover::hardware();
    let plan = match plan_for(
        named,
        &hardware.disks,
        hardware.firmware,
        &api.mac().to_string(),
    ) {
        Ok(plan) => plan,
        Err(message) => {
            report.error(message);
            return stopped;
        }
    };
    let tree = match exec::block_tree() {
        Ok(tree) => tree,
        Err(e) => {
            report.error(format!(
                "reading the disks before applying layout {name}: {}",
                chain(&e)
            ));
            return stopped;
        }
    };
    let teardown = match decide(&tree, &plan, may_wipe) {
        Decision::Refuse(reason) => {
            report.error(reason);
            return stopped;
        }
        Decision::Apply { teardown } => teardown,
    };

    let started = Instant::now();
    if !teardown.is_empty() {
        report.info(format!(
            "wiping what the disks hold: {}",
            holdings(&tree, &plan)
        ));
    }
    let mut actions = teardown;
    actions.extend(commands(&plan, TARGET));
    let total = actions.len();
    report.info(format!("applying layout {name}: {total} steps"));
    let mut done = 0;
    let ran = exec::run(&actions, |p| {
        done = p.index + 1;
        report.info(step_message(p));
    });
    if let Err(e) = ran {
        report.error(format!(
            "applying layout {name} stopped at step {}/{total}: {}",
            done + 1,
            chain(&e)
        ));
        return stopped;
    }

    let tree = match exec::block_tree() {
        Ok(tree) => tree,
        Err(e) => {
            report.error(format!(
                "reading the disks after applying layout {name}: {}",
                chain(&e)
            ));
            return stopped;
        }
    };
    let problems = verify(&plan, &tree, TARGET);
    // The tree goes to the appliance either way: it is what the disks hold now.
    if let Err(e) = with_retry(
        "sending the block tree",
        backoff,
        &mut std::thread::sleep,
        || api.send_block_tree(&tree),
    ) {
        report.error(format!(
            "the appliance did not record the block tree: {}",
            chain(&e)
        ));
    }
    if !problems.is_empty() {
        report.error(format!(
            "layout {name} was applied but the disks do not match the plan: {}",
            problems.join("; ")
        ));
        return stopped;
    }
    report.info(format!(
        "layout {name} applied and verified in {}",
        seconds(started.elapsed())
    ));
    eprintln!("metalcast-agent: layout {name} applied");
    *applied = Some(plan);
    Outcome::Applied(named.clone())
}

#[cfg(test)]
mod tests {
    use metalcast_layout::GIB;
    use metalcast_proto::NodeState;

    use super::*;

    const SINGLE: &str = r#"
[[disk]]
name = "sys"
path = "/dev/vda"

[[disk.partition]]
name = "bios"
size = "1MiB"
type = "bios_boot"

[[disk.partition]]
name = "root"
size = "rest"
type = "linux"

[[filesystem]]
device = "sys.root"
type = "ext4"
mount = "/"
label = "root"

[bootloader]
firmware = ["bios"]
"#;

    fn named(toml: &str) -> NamedLayout {
        NamedLayout {
            name: "single".into(),
            toml: toml.into(),
        }
    }

    fn disk(path: &str, gib: u64) -> Disk {
        Disk {
            path: path.into(),
            size_bytes: gib * GIB,
            model: None,
            serial: None,
            rotational: true,
            by_path: None,
        }
    }

    fn single_plan() -> Plan {
        plan_for(
            &named(SINGLE),
            &[disk("/dev/vda", 20), disk("/dev/vdb", 20)],
            Firmware::Bios,
            "52:54:00:12:34:56",
        )
        .unwrap()
    }

    fn dev(name: &str, kind: &str, children: Vec<BlockDevice>) -> BlockDevice {
        BlockDevice {
            name: name.into(),
            path: format!("/dev/{name}"),
            size_bytes: GIB,
            kind: kind.into(),
            fstype: None,
            pttype: None,
            label: None,
            uuid: None,
            partlabel: None,
            mountpoint: None,
            children,
        }
    }

    fn with(mut d: BlockDevice, f: impl FnOnce(&mut BlockDevice)) -> BlockDevice {
        f(&mut d);
        d
    }

    /// vda: GPT, vda1 ext4 "data", vda2 in md127 (RAID 1 with vdb1); vdb is not in the plan.
    fn used_tree() -> BlockTree {
        let md = with(dev("md127", "raid1", vec![]), |d| {
            d.fstype = Some("LVM2_member".into())
        });
        let vda = with(
            dev(
                "vda",
                "disk",
                vec![
                    with(dev("vda1", "part", vec![]), |d| {
                        d.fstype = Some("ext4".into());
                        d.label = Some("data".into());
                        d.pttype = Some("gpt".into());
                    }),
                    with(dev("vda2", "part", vec![md.clone()]), |d| {
                        d.fstype = Some("linux_raid_member".into())
                    }),
                    dev("vda3", "part", vec![]),
                ],
            ),
            |d| d.pttype = Some("gpt".into()),
        );
        let vdb = dev(
            "vdb",
            "disk",
            vec![with(dev("vdb1", "part", vec![md]), |d| {
                d.fstype = Some("linux_raid_member".into())
            })],
        );
        BlockTree {
            devices: vec![vda, vdb],
            ..BlockTree::default()
        }
    }

    fn blank_tree() -> BlockTree {
        BlockTree {
            devices: vec![dev("vda", "disk", vec![]), dev("vdb", "disk", vec![])],
            ..BlockTree::default()
        }
    }

    fn agent_plan(layout: Option<NamedLayout>, may_wipe: bool) -> AgentPlan {
        AgentPlan {
            state: if may_wipe {
                NodeState::Provisioning
            } else {
                NodeState::Discovered
            },
            hostname: None,
            layout,
            may_wipe,
            image: None,
            credentials: Default::default(),
        }
    }

    #[test]
    fn blank_disks_are_used_whatever_the_state() {
        let plan = single_plan();
        for may_wipe in [false, true] {
            assert_eq!(
                decide(&blank_tree(), &plan, may_wipe),
                Decision::Apply {
                    teardown: Vec::new()
                }
            );
        }
    }

    #[test]
    fn disks_with_data_are_wiped_only_when_allowed() {
        let plan = single_plan();
        let tree = used_tree();
        match decide(&tree, &plan, false) {
            Decision::Refuse(reason) => assert_eq!(
                reason,
                "refusing to wipe: node is not marked for provisioning and its disks hold data \
                 (vda gpt, vda1 ext4 \"data\", vda2 linux_raid_member, md127 raid1 LVM2_member)"
            ),
            other => panic!("{other:?}"),
        }
        match decide(&tree, &plan, true) {
            Decision::Apply { teardown } => {
                let text: Vec<String> = teardown.iter().map(ToString::to_string).collect();
                assert!(
                    text.contains(&"wipefs --all --force /dev/vda1".to_owned()),
                    "{text:?}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_bare_partition_table_is_data_too() {
        let plan = single_plan();
        let tree = BlockTree {
            devices: vec![with(dev("vda", "disk", vec![]), |d| {
                d.pttype = Some("dos".into())
            })],
            ..BlockTree::default()
        };
        assert_eq!(
            decide(&tree, &plan, false),
            Decision::Refuse(
                "refusing to wipe: node is not marked for provisioning and its disks hold data \
                 (vda dos)"
                    .into()
            )
        );
    }

    #[test]
    fn data_on_other_disks_does_not_matter() {
        let plan = single_plan();
        let mut tree = used_tree();
        tree.devices[0] = dev("vda", "disk", vec![]);
        assert_eq!(
            decide(&tree, &plan, false),
            Decision::Apply {
                teardown: Vec::new()
            }
        );
    }

    #[test]
    fn long_holdings_are_cut() {
        let plan = single_plan();
        let parts = (1..=12)
            .map(|n| {
                with(dev(&format!("vda{n}"), "part", vec![]), |d| {
                    d.fstype = Some("xfs".into());
                    d.mountpoint = (n == 1).then(|| "/target".into());
                })
            })
            .collect();
        let tree = BlockTree {
            devices: vec![dev("vda", "disk", parts)],
            ..BlockTree::default()
        };
        let text = holdings(&tree, &plan);
        assert!(
            text.starts_with("vda1 xfs mounted on /target, vda2 xfs,"),
            "{text}"
        );
        assert!(text.ends_with("vda8 xfs and 4 more"), "{text}");
    }

    #[test]
    fn layout_errors_name_the_layout_and_the_field() {
        let bad_toml = plan_for(&named("[[disk]\n"), &[], Firmware::Bios, "s").unwrap_err();
        assert!(
            bad_toml.starts_with("layout single is not valid: "),
            "{bad_toml}"
        );

        let unknown_key = SINGLE.replace("label = \"root\"", "lable = \"root\"");
        let err = plan_for(
            &named(&unknown_key),
            &[disk("/dev/vda", 20)],
            Firmware::Bios,
            "s",
        )
        .unwrap_err();
        assert!(err.contains("lable"), "{err}");

        let no_disk =
            plan_for(&named(SINGLE), &[disk("/dev/sda", 20)], Firmware::Bios, "s").unwrap_err();
        assert!(
            no_disk.starts_with("layout single does not fit this node: disk[0]"),
            "{no_disk}"
        );
        assert!(
            no_disk.contains("/dev/sda"),
            "the disks seen are named: {no_disk}"
        );

        let wrong_firmware =
            plan_for(&named(SINGLE), &[disk("/dev/vda", 20)], Firmware::Uefi, "s").unwrap_err();
        assert!(
            wrong_firmware.contains("bootloader.firmware"),
            "{wrong_firmware}"
        );
    }

    #[test]
    fn the_seed_fixes_the_generated_uuids() {
        let a = single_plan();
        let b = single_plan();
        assert_eq!(a.filesystems[0].uuid, b.filesystems[0].uuid);
        let other = plan_for(
            &named(SINGLE),
            &[disk("/dev/vda", 20)],
            Firmware::Bios,
            "52:54:00:12:34:57",
        )
        .unwrap();
        assert_ne!(a.filesystems[0].uuid, other.filesystems[0].uuid);
    }

    #[test]
    fn each_assignment_is_acted_on_once_per_boot() {
        let one = named(SINGLE);
        let two = NamedLayout {
            name: "other".into(),
            toml: SINGLE.replace("\"root\"", "\"sys\""),
        };
        let wipe = agent_plan(Some(one.clone()), true);
        let keep = agent_plan(Some(one.clone()), false);

        assert_eq!(to_apply(&agent_plan(None, true), None), None);
        assert_eq!(to_apply(&wipe, None), Some(&one));

        let applied = Outcome::Applied(one.clone());
        assert_eq!(to_apply(&wipe, Some(&applied)), None);
        // Marking the node provisioned afterwards changes nothing on its disks.
        assert_eq!(to_apply(&keep, Some(&applied)), None);
        let changed = agent_plan(Some(two.clone()), true);
        assert_eq!(to_apply(&changed, Some(&applied)), Some(&two));
        let edited = NamedLayout {
            toml: format!("{SINGLE}\n# edited\n"),
            ..one.clone()
        };
        assert_eq!(
            to_apply(&agent_plan(Some(edited.clone()), true), Some(&applied)),
            Some(&edited)
        );

        let refused = Outcome::Stopped {
            layout: one.clone(),
            may_wipe: false,
        };
        assert_eq!(to_apply(&keep, Some(&refused)), None);
        // The admin marks the node for provisioning: try again.
        assert_eq!(to_apply(&wipe, Some(&refused)), Some(&one));
        assert_eq!(to_apply(&changed, Some(&refused)), Some(&two));
        assert_eq!(to_apply(&agent_plan(None, false), Some(&refused)), None);
    }

    #[test]
    fn step_events_say_which_step_what_and_how_long() {
        let sfdisk = Action::Run(Command {
            program: "sfdisk".into(),
            args: vec!["--wipe".into(), "always".into(), "/dev/vda".into()],
            stdin: Some("label: gpt\n".into()),
        });
        let p = Progress {
            index: 2,
            total: 17,
            action: &sfdisk,
            duration: Duration::from_millis(412),
        };
        assert_eq!(
            step_message(&p),
            "step 3/17 sfdisk --wipe always /dev/vda (0.4 s)"
        );
        let label = Action::Run(Command::new("mkfs.vfat", ["-n", "EFI SYSTEM", "/dev/vda1"]));
        let wait = Action::WaitForDevice("/dev/md/system".into());
        let p = |action, ms| Progress {
            index: 16,
            total: 17,
            action,
            duration: Duration::from_millis(ms),
        };
        assert_eq!(
            step_message(&p(&label, 2_960)),
            "step 17/17 mkfs.vfat -n 'EFI SYSTEM' /dev/vda1 (3.0 s)"
        );
        assert_eq!(
            step_message(&p(&wait, 20)),
            "step 17/17 wait for /dev/md/system (0.0 s)"
        );
    }
}
