//! Every key of the layout schema is documented in docs/layouts.md: a layout with every
//! field set is serialized, and each key path must appear there as `path`. A field added to
//! the schema fails to compile here until it is set, and this test until it is documented.

use metalcast_proto::Firmware;
use metalcast_proto::layout::{
    BootloaderSpec, ByteSize, DiskSpec, FilesystemSpec, FsType, LayoutFile, Loader, LvSpec,
    PartitionSpec, PartitionTable, PartitionType, Pick, RaidSpec, Size, VgSpec,
};

fn everything() -> LayoutFile {
    LayoutFile {
        description: Some("d".into()),
        stateful: true,
        disks: vec![DiskSpec {
            name: "os".into(),
            path: Some("/dev/vda".into()),
            by_path: Some("pci-0000:00:04.0".into()),
            serial: Some("s".into()),
            model: Some("m*".into()),
            min_size: Some(ByteSize(1)),
            max_size: Some(ByteSize(2)),
            rotational: Some(false),
            pick: Some(Pick::Smallest),
            count: Some(1),
            table: Some(PartitionTable::Gpt),
            partitions: vec![PartitionSpec {
                name: "p".into(),
                label: Some("l".into()),
                size: Size::Rest,
                kind: PartitionType::Raid,
            }],
        }],
        raid: vec![RaidSpec {
            name: "md".into(),
            level: 1,
            members: vec!["os.p".into()],
            metadata: Some("1.2".into()),
            chunk: Some(ByteSize(4096)),
        }],
        vg: vec![VgSpec {
            name: "vg0".into(),
            pvs: vec!["md".into()],
            extent_size: Some(ByteSize(4 << 20)),
            lvs: vec![LvSpec {
                name: "root".into(),
                size: Size::Percent(50),
            }],
        }],
        filesystems: vec![FilesystemSpec {
            device: "vg0/root".into(),
            kind: FsType::Ext4,
            mount: Some("/".into()),
            label: Some("root".into()),
            uuid: Some("0b6f2b8e-1f3c-4e9a-8d2b-6a7c1e0f9a11".into()),
            options: vec!["noatime".into()],
            mkfs_options: vec!["-m".into()],
        }],
        bootloader: Some(BootloaderSpec {
            loader: Loader::Grub,
            firmware: vec![Firmware::Uefi],
            disks: Some(vec!["os".into()]),
            efi_id: Some("x".into()),
        }),
    }
}

fn keys(prefix: &str, value: &toml::Value, out: &mut Vec<String>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.push(path.clone());
                keys(&path, v, out);
            }
        }
        // Arrays of tables ([[disk]]) document their keys under the array's name.
        toml::Value::Array(items) => {
            for item in items {
                if item.is_table() {
                    keys(prefix, item, out);
                }
            }
        }
        _ => {}
    }
}

#[test]
fn every_layout_key_is_documented() {
    let value = toml::Value::try_from(everything()).expect("serializing the schema");
    let mut paths = Vec::new();
    keys("", &value, &mut paths);
    let docs = std::fs::read_to_string(format!(
        "{}/../../docs/layouts.md",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("reading docs/layouts.md");
    let missing: Vec<&String> = paths
        .iter()
        .filter(|p| {
            // A key in a table row, or a section heading.
            ![
                format!("| `{p}` |"),
                format!("`[[{p}]]`"),
                format!("`[{p}]`"),
            ]
            .iter()
            .any(|form| docs.contains(form))
        })
        .collect();
    assert!(paths.len() > 30, "{paths:?}");
    assert!(missing.is_empty(), "undocumented layout keys: {missing:?}");
    // The documented layout also round-trips through the schema.
    let text = toml::to_string(&everything()).expect("TOML");
    assert_eq!(
        toml::from_str::<LayoutFile>(&text).expect("parsing it back"),
        everything()
    );
}
