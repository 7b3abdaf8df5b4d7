//! The generated sfdisk invocations, run by the real sfdisk on sparse image files: what it
//! writes must be exactly the plan's geometry, types and names.

use std::io::Write;
use std::process::{Command as Process, Stdio};

use metalcast_layout::{Action, GIB, Layout, PlannedDisk, commands, plan};
use metalcast_proto::{Disk, Firmware};

fn sfdisk_available() -> bool {
    Process::new("sfdisk")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Run the plan's sfdisk command for `disk` against `image` and read back the table.
fn apply(actions: &[Action], disk: &PlannedDisk, image: &std::path::Path) -> serde_json::Value {
    let cmd = actions
        .iter()
        .find_map(|a| match a {
            Action::Run(c) if c.program == "sfdisk" && c.args.last() == Some(&disk.path) => Some(c),
            _ => None,
        })
        .expect("an sfdisk command for the disk");
    let mut args = cmd.args.clone();
    *args.last_mut().expect("sfdisk gets the device") = image.display().to_string();
    let mut child = Process::new("sfdisk")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting sfdisk");
    let script = cmd.stdin.as_deref().expect("sfdisk reads a script");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes())
        .expect("writing the script");
    let out = child.wait_with_output().expect("waiting for sfdisk");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = Process::new("sfdisk")
        .arg("--json")
        .arg(image)
        .output()
        .expect("sfdisk --json");
    serde_json::from_slice(&json.stdout).expect("sfdisk's JSON")
}

#[test]
fn sfdisk_writes_the_planned_tables() {
    if !sfdisk_available() {
        eprintln!("sfdisk not installed: skipping the real-tool check");
        return;
    }
    let dir = std::env::temp_dir().join(format!("metalcast-sfdisk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let layouts = [
        ("raid10-xfs.toml", false),
        ("single-uefi.toml", false),
        ("single-bios.toml", false),
        // The same single-disk layout on an msdos table.
        ("single-uefi.toml", true),
    ];
    for (name, msdos) in layouts {
        let path = format!("{}/../../layouts/{name}", env!("CARGO_MANIFEST_DIR"));
        let mut text = std::fs::read_to_string(path).unwrap();
        if msdos {
            text = text.replacen("name = \"os\"", "name = \"os\"\ntable = \"msdos\"", 1);
        }
        let layout = Layout::from_toml(&text).unwrap();
        let disks: Vec<Disk> = (0..4)
            .map(|i| Disk {
                path: format!("/dev/vd{}", char::from(b'a' + i)),
                size_bytes: 8 * GIB,
                model: None,
                serial: None,
                rotational: false,
                by_path: None,
            })
            .collect();
        let disks = if name.starts_with("single") {
            &disks[..1]
        } else {
            &disks[..]
        };
        let firmware = if name == "single-bios.toml" {
            Firmware::Bios
        } else {
            Firmware::Uefi
        };
        let p = plan(&layout, disks, firmware, "s").unwrap();
        let actions = commands(&p, "/target");
        for d in &p.disks {
            let image = dir.join(format!("{}.img", d.path.trim_start_matches("/dev/")));
            let file = std::fs::File::create(&image).unwrap();
            file.set_len(d.size_bytes).unwrap();
            let table = apply(&actions, d, &image);
            let table = &table["partitiontable"];
            let sector = table["sectorsize"].as_u64().unwrap();
            assert_eq!(table["label"], if msdos { "dos" } else { "gpt" });
            let parts = table["partitions"].as_array().unwrap();
            assert_eq!(parts.len(), d.partitions.len(), "{name}");
            for (got, want) in parts.iter().zip(&d.partitions) {
                assert_eq!(
                    got["start"].as_u64().unwrap() * sector,
                    want.start,
                    "{name} {}",
                    want.path
                );
                assert_eq!(
                    got["size"].as_u64().unwrap() * sector,
                    want.size,
                    "{name} {}",
                    want.path
                );
                if msdos {
                    assert_eq!(got["type"], want.mbr_type());
                } else {
                    assert_eq!(got["type"], want.type_guid());
                    assert_eq!(got["name"], want.label.as_str());
                }
            }
            std::fs::remove_file(image).unwrap();
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}
