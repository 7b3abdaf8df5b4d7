//! The tar layer alone: a tree written with `write_tree` and extracted with `unpack` (or with
//! GNU tar) comes back identical, field by field.
// Helpers outside #[test] fns unwrap too: in test code a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use metalcast_image::{TreeOptions, UnpackOptions, unpack, write_tree};

fn opts() -> UnpackOptions {
    UnpackOptions {
        preserve_owners: common::is_root(),
    }
}

#[test]
fn tree_survives_write_and_unpack() {
    let src = tempfile::tempdir().unwrap();
    let f = common::sample_tree(src.path());
    if !f.xattrs {
        println!("note: the temp filesystem takes no user xattrs; xattr checks skipped");
    }
    if !f.acls {
        println!("note: the temp filesystem takes no POSIX ACLs; ACL checks skipped");
    }
    if !f.root {
        println!("note: not root; devices, owners and security.capability not exercised");
    }
    let stream = write_tree(src.path(), Vec::new(), &TreeOptions::default()).unwrap();
    let dst = tempfile::tempdir().unwrap();
    let stats = unpack(&stream[..], dst.path(), &opts()).unwrap();
    assert!(stats.members > 30, "{stats:?}");
    common::assert_same_tree(src.path(), dst.path());
    // What the comparison covers did make it through (not merely absent on both sides).
    let d = dst.path();
    if f.xattrs {
        let v = xattr::get(d.join("etc/hostname"), "user.comment").unwrap();
        assert_eq!(v.as_deref(), Some(&b"binary\0\n=\xff"[..]));
    }
    if f.acls {
        let acl = xattr::get(d.join("etc/ssh"), "system.posix_acl_default").unwrap();
        assert_eq!(acl, Some(common::acl_bytes(1000)));
    }
    if f.root {
        let cap = xattr::get(d.join("usr/bin/big"), "security.capability").unwrap();
        assert_eq!(cap, Some(common::cap_net_raw()));
        use std::os::unix::fs::FileTypeExt;
        let null = std::fs::symlink_metadata(d.join("etc/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(
            std::fs::symlink_metadata(d.join("var/tmp")).unwrap().uid(),
            3_000_000
        );
    }
    assert_eq!(std::fs::metadata(d.join("etc/py")).unwrap().nlink(), 3);
    // The sparse image kept its holes: far fewer blocks than bytes.
    let m = std::fs::metadata(dst.path().join("var/sparse.img")).unwrap();
    assert!(m.blocks() * 512 < 1 << 20, "{} blocks", m.blocks());
    // Holes are not in the stream either.
    assert!(stream.len() < 4 << 20, "{} bytes", stream.len());
}

#[test]
fn same_tree_same_stream() {
    let src = tempfile::tempdir().unwrap();
    common::sample_tree(src.path());
    let a = write_tree(src.path(), Vec::new(), &TreeOptions::default()).unwrap();
    let b = write_tree(src.path(), Vec::new(), &TreeOptions::default()).unwrap();
    assert!(a == b, "two writes of one tree differ");
}

fn gnu_tar() -> bool {
    let ok = Command::new("tar")
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains("GNU tar")
        });
    if !ok {
        println!("note: GNU tar not found; cross-check skipped");
    }
    ok
}

#[test]
fn gnu_tar_extracts_our_stream_identically() {
    if !gnu_tar() {
        return;
    }
    let src = tempfile::tempdir().unwrap();
    common::sample_tree(src.path());
    let stream = write_tree(src.path(), Vec::new(), &TreeOptions::default()).unwrap();
    let dst = tempfile::tempdir().unwrap();
    let mut child = Command::new("tar")
        .args([
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-xpf",
            "-",
            "-C",
        ])
        .arg(dst.path())
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&stream).unwrap();
    assert!(child.wait().unwrap().success());
    if common::is_root() {
        common::assert_same_tree(src.path(), dst.path());
    }
}

#[test]
fn we_extract_gnu_tar_streams_identically() {
    if !gnu_tar() {
        return;
    }
    let src = tempfile::tempdir().unwrap();
    common::sample_tree(src.path());
    let out = Command::new("tar")
        .args([
            "--format=posix",
            "--sparse",
            "--sparse-version=1.0",
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-cf",
            "-",
            "-C",
        ])
        .arg(src.path())
        .arg(".")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dst = tempfile::tempdir().unwrap();
    unpack(&out.stdout[..], dst.path(), &opts()).unwrap();
    common::assert_same_tree(src.path(), dst.path());
}
