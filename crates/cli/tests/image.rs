//! `metalcast image …` and `node set --image` / `node reimage` against a real `metalcastd`
//! listening on loopback: import a tree, re-import it with one file changed (only the changed
//! chunks travel), import a tarball, list, show, rollback, gc.
// A failed unwrap in a test is a failed test.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use metalcast_proto::image::ImageSummary;
use metalcast_proto::{ImageVersions, NodeDetail, NodeState};

/// `metalcastd`, built beside this test's own binary (same profile and target dir).
fn metalcastd() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "-p",
            "metalcast-server",
            "--bin",
            "metalcastd",
        ])
        .status()
        .unwrap();
    assert!(status.success(), "building metalcastd failed");
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> → target/<profile>/metalcastd
    exe.parent()
        .and_then(Path::parent)
        .unwrap()
        .join("metalcastd")
}

struct Appliance {
    _dir: tempfile::TempDir,
    url: String,
    token: String,
    daemon: Child,
}

impl Drop for Appliance {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

fn start() -> Appliance {
    let bin = metalcastd();
    let dir = tempfile::tempdir().unwrap();
    let boot = dir.path().join("boot");
    fs::create_dir_all(&boot).unwrap();
    fs::write(boot.join("vmlinuz"), b"stand-in kernel").unwrap();
    fs::write(boot.join("initramfs"), b"stand-in initramfs").unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("metalcastd.toml");
    fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[http]\nlisten = \"127.0.0.1:{port}\"\n[boot]\nkernel = {:?}\n\
             initramfs = {:?}\n[tftp]\nbind = \"127.0.0.1:0\"\n",
            dir.path().join("data"),
            boot.join("vmlinuz"),
            boot.join("initramfs")
        ),
    )
    .unwrap();
    let out = Command::new(&bin)
        .args(["token", "create", "--name", "test", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap()
        .trim()
        .to_owned();
    let daemon = Command::new(&bin)
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.path().join("metalcastd.log")).unwrap())
        .spawn()
        .unwrap();
    let appliance = Appliance {
        _dir: dir,
        url: format!("http://127.0.0.1:{port}"),
        token,
        daemon,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "metalcastd did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    appliance
}

impl Appliance {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_metalcast"))
            .args(["--url", &self.url])
            .env("METALCAST_TOKEN", &self.token)
            .args(args)
            .output()
            .unwrap()
    }

    /// Stdout of a command that must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "metalcast {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// Deterministic incompressible bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn tree(root: &Path) {
    fs::create_dir_all(root.join("boot")).unwrap();
    fs::write(root.join("boot/vmlinuz"), noise(1, 3 << 20)).unwrap();
    for i in 0..40u64 {
        let dir = root.join(format!("usr/d{}", i % 4));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join(format!("f{i}")),
            noise(i + 10, 20_000 + 7_000 * i as usize),
        )
        .unwrap();
    }
}

/// `(total, new, deduplicated)` from the `imported …` line.
fn counts(stdout: &str) -> (usize, usize, usize) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("imported "))
        .unwrap_or_else(|| panic!("no summary in {stdout:?}"));
    // imported t@vN: TOTAL chunks (NEW new, DEDUP deduplicated), …
    let (_, rest) = line.split_once(": ").unwrap();
    let after: Vec<usize> = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (after[0], after[1], after[2])
}

#[test]
fn import_dedups_lists_rolls_back_and_assigns() {
    let app = start();
    let src = tempfile::tempdir().unwrap();
    tree(src.path());
    let dir = src.path().to_str().unwrap();

    let first = app.ok(&[
        "image",
        "import",
        "t",
        "--version",
        "v1",
        "--from-dir",
        dir,
        "--kernel",
        "boot/vmlinuz",
    ]);
    let (total, new, dedup) = counts(&first);
    assert!(total > 20 && new > 20 && new + dedup == total, "{first}");
    assert!(first.contains("\nmanifest "), "{first}");

    // One file changed: only the chunks around it are new.
    let changed = src.path().join("usr/d1/f5");
    let mut bytes = fs::read(&changed).unwrap();
    bytes[100] ^= 0xff;
    fs::write(&changed, bytes).unwrap();
    let second = app.ok(&["image", "import", "t", "--version", "v2", "--from-dir", dir]);
    let (total2, new2, _) = counts(&second);
    assert!(total2 >= total - 2, "{second}");
    assert!((1..=3).contains(&new2), "{second}");

    // The same stream as a tarball: nothing new to send.
    let tarball = src.path().join("../t.tar");
    let mut stream = Vec::new();
    metalcast_image::write_tree(src.path(), &mut stream, &Default::default()).unwrap();
    fs::write(&tarball, &stream).unwrap();
    let third = app.ok(&[
        "image",
        "import",
        "t",
        "--version",
        "v3",
        "--from-tar",
        tarball.to_str().unwrap(),
    ]);
    assert_eq!(counts(&third).1, 0, "{third}");
    fs::remove_file(&tarball).unwrap();

    let again = app.run(&["image", "import", "t", "--version", "v1", "--from-dir", dir]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));

    let list: Vec<ImageSummary> =
        serde_json::from_str(&app.ok(&["image", "list", "--json"])).unwrap();
    assert_eq!(list.len(), 3);
    let show: ImageVersions =
        serde_json::from_str(&app.ok(&["image", "show", "t", "--json"])).unwrap();
    assert_eq!(show.latest.as_deref(), Some("v3"));
    let ids: Vec<_> = show.versions.iter().map(|v| v.id).collect();
    assert_eq!(show.versions[1].parent, Some(ids[0]), "v2 derives from v1");
    assert!(app.ok(&["image", "show", "t"]).contains("*  v3"));

    let rolled = app.ok(&["image", "rollback", "t", "v1"]);
    assert_eq!(rolled.trim(), "t: latest is now v1 (was v3)");
    let show: ImageVersions =
        serde_json::from_str(&app.ok(&["image", "show", "t", "--json"])).unwrap();
    assert_eq!(show.latest.as_deref(), Some("v1"));

    let mac = "52:54:00:00:00:42";
    let set = app.ok(&["node", "set", mac, "--image", "t@v2"]);
    assert!(set.contains("image=t@v2"), "{set}");
    assert!(app.ok(&["node", "reimage", mac]).contains("provisioning"));
    let node: NodeDetail = serde_json::from_str(&app.ok(&["node", "show", mac, "--json"])).unwrap();
    assert_eq!(node.node.image.as_deref(), Some("t@v2"));
    assert_eq!(node.node.state, NodeState::Provisioning);

    // Every chunk is referenced (and young): gc removes nothing.
    assert!(app.ok(&["image", "gc"]).starts_with("gc: removed 0 "));
}
