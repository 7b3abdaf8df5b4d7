//! Disk layout schema (TOML in `layouts/`): disk selection rules, partitions, RAID, LVM, filesystems, bootloader.
