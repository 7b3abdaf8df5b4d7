//! Declarative disk layouts: parse and validate a layout, plan it against a node's disks
//! (pure), turn the plan into tool invocations (pure), and run them ([`exec`], the only
//! module that does I/O).
//!
//! Call order for an install:
//! 1. [`Layout::from_toml`] — schema and every check that needs no disks.
//! 2. [`plan()`] — against the node's disks and firmware; every size resolved and aligned.
//! 3. [`exec::block_tree`], then [`teardown_needed`] — the caller decides whether the node
//!    may be wiped — and [`teardown_commands`].
//! 4. [`commands`] — create everything and mount it under the target root; [`exec::run`].
//! 5. [`exec::block_tree`] again and [`verify`]: the result matches the plan.
//! 6. After the image: [`fstab`], [`mdadm_conf`], [`bootloader_commands`].

pub mod commands;
mod diff;
mod error;
pub mod exec;
mod model;
mod plan;
mod planner;
pub mod report;
mod select;
mod units;
mod verify;

pub use commands::{
    Action, Command, bootloader_commands, commands, fstab, mdadm_conf, sfdisk_script,
    teardown_commands, teardown_needed,
};
pub use diff::dry_run;
pub use error::{FieldError, LayoutError};
pub use model::{
    Bootloader, DiskFilter, DiskRule, Filesystem, Layout, Lv, MdMetadata, Partition, Raid,
    RaidLevel, Ref, Vg,
};
pub use plan::{
    Plan, PlannedBoot, PlannedDisk, PlannedEsp, PlannedFs, PlannedLv, PlannedPartition, PlannedPv,
    PlannedRaid, PlannedVg, Step,
};
pub use planner::{
    ALIGN, MEMBER_TOLERANCE_PERCENT, PE_START, TAIL, array_size, md_data_size, partition_path, plan,
};
pub use units::{GIB, MIB, TIB};
pub use verify::verify;

/// Layouts shared by the unit tests of several modules.
#[cfg(test)]
mod fixtures {
    /// A valid one-disk UEFI layout: ESP and an ext4 `/`.
    pub const ONE_DISK_UEFI: &str = r#"
[[disk]]
name = "os"

[[disk.partition]]
name = "esp"
size = "512MiB"
type = "esp"

[[disk.partition]]
name = "root"
size = "rest"
type = "linux"

[[filesystem]]
device = "os.esp"
type = "vfat"
mount = "/boot/efi"

[[filesystem]]
device = "os.root"
type = "ext4"
mount = "/"

[bootloader]
firmware = ["uefi"]
"#;
}
