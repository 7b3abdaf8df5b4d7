//! `metalcast layout check` as an operator runs it: no appliance, a layout file and a disks
//! file.

use std::path::PathBuf;
use std::process::{Command, Output};

fn layout(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../layouts")
        .join(name)
}

/// A node as `metalcast nodes show --json` prints it, with `disks` GiB-sized disks.
fn node_file(name: &str, disks: &[u64]) -> PathBuf {
    let disks: Vec<String> = disks
        .iter()
        .enumerate()
        .map(|(i, gib)| {
            format!(
                r#"{{"path":"/dev/vd{}","size_bytes":{},"model":"QEMU HARDDISK","serial":null,"rotational":false,"by_path":null}}"#,
                char::from(b'a' + i as u8),
                gib << 30
            )
        })
        .collect();
    let json = format!(
        r#"{{"mac":"52:54:00:12:34:56","state":"discovered","hostname":null,"ip":null,
"first_seen_ms":0,"last_seen_ms":0,"events":[],
"hardware":{{"firmware":"uefi","cpu":{{"count":1,"model":null}},"memory_bytes":1073741824,
"nics":[],"dmi":{{}},"disks":[{}]}}}}"#,
        disks.join(",")
    );
    let path =
        std::env::temp_dir().join(format!("metalcast-cli-{}-{name}.json", std::process::id()));
    std::fs::write(&path, json).expect("writing the disks file");
    path
}

fn metalcast(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_metalcast"))
        .args(args)
        .env_remove("METALCAST_TOKEN")
        .output()
        .expect("running metalcast")
}

#[test]
fn check_without_disks_validates_the_schema_only() {
    let file = layout("raid1-lvm-uefi.toml");
    let out = metalcast(&["layout".as_ref(), "check".as_ref(), file.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("valid (schema and references only"),
        "{stdout}"
    );
}

#[test]
fn check_with_disks_prints_the_plan_or_the_errors() {
    let file = layout("raid1-lvm-uefi.toml");
    let two = node_file("two", &[20, 20]);
    let out = metalcast(&[
        "layout".as_ref(),
        "check".as_ref(),
        file.as_os_str(),
        "--disks".as_ref(),
        two.as_os_str(),
        "--commands".as_ref(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("/dev/md0 \"system\" raid1 metadata 1.2 over /dev/vda2 /dev/vdb2"),
        "{stdout}"
    );
    assert!(
        stdout.contains("mdadm --create /dev/md0 --run --level=1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ARRAY /dev/md/system metadata=1.2 UUID="),
        "{stdout}"
    );

    let one = node_file("one", &[20]);
    let out = metalcast(&[
        "layout".as_ref(),
        "check".as_ref(),
        file.as_os_str(),
        "--disks".as_ref(),
        one.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is refused:\n  disk[0]: rule sys (rotational = false, count = 2): needs exactly 2 disks"), "{stderr}");

    let out = metalcast(&[
        "layout".as_ref(),
        "check".as_ref(),
        layout("single-bios.toml").as_os_str(),
        "--disks".as_ref(),
        one.as_os_str(),
        "--firmware".as_ref(),
        "bios".as_ref(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [two, one] {
        std::fs::remove_file(f).expect("removing the disks file");
    }
}
