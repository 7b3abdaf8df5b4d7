//! Helpers shared by the integration tests: building sample trees and comparing trees.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, UtimensatFlags, makedev, mknod, utimensat};
use nix::sys::time::TimeSpec;

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Deterministic pseudo-random bytes (xorshift).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Whether `dir`'s filesystem takes `user.*` extended attributes.
pub fn user_xattrs_supported(dir: &Path) -> bool {
    let probe = dir.join(".xattr-probe");
    let ok = fs::write(&probe, b"").is_ok() && xattr::set(&probe, "user.probe", b"1").is_ok();
    let _ = fs::remove_file(&probe);
    ok
}

/// The binary form of a POSIX ACL xattr (`system.posix_acl_access`/`_default`):
/// version 2, then (tag u16, perm u16, id u32) entries sorted by tag and id.
pub fn acl_bytes(user_id: u32) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 6u16, u32::MAX), // USER_OBJ rw
        (0x02, 4, user_id),        // USER r
        (0x04, 4, u32::MAX),       // GROUP_OBJ r
        (0x10, 4, u32::MAX),       // MASK r
        (0x20, 0, u32::MAX),       // OTHER
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// `security.capability` v2: cap_net_raw (13) permitted and effective.
pub fn cap_net_raw() -> Vec<u8> {
    let mut v = (0x0200_0000u32 | 1).to_le_bytes().to_vec();
    for w in [1u32 << 13, 0, 0, 0] {
        v.extend_from_slice(&w.to_le_bytes());
    }
    v
}

pub fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &TimeSpec::UTIME_OMIT,
        &TimeSpec::new(sec, nsec),
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

/// What the sample tree exercised, for the test log.
pub struct Features {
    pub xattrs: bool,
    pub acls: bool,
    pub root: bool,
}

/// A tree with every kind of member and metadata the format promises to keep.
pub fn sample_tree(root: &Path) -> Features {
    let xattrs = user_xattrs_supported(root);
    let root_user = is_root();
    let w = |p: &str, data: &[u8]| fs::write(root.join(p), data).unwrap();
    fs::create_dir_all(root.join("etc/ssh")).unwrap();
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::create_dir_all(root.join("var/tmp")).unwrap();
    w("etc/hostname", b"node\n");
    w("etc/empty", b"");
    w("etc/ssh/sshd_config", &noise(1, 3000));
    w("usr/bin/big", &noise(2, 1_500_000));
    w("usr/bin/tool", &noise(3, 70_000));
    fs::set_permissions(
        root.join("usr/bin/tool"),
        fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    fs::set_permissions(root.join("var/tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::set_permissions(root.join("etc/ssh"), fs::Permissions::from_mode(0o2750)).unwrap();
    // Hard links: three names, two directories.
    w("usr/bin/python3.11", &noise(4, 5000));
    fs::hard_link(
        root.join("usr/bin/python3.11"),
        root.join("usr/bin/python3"),
    )
    .unwrap();
    fs::hard_link(root.join("usr/bin/python3.11"), root.join("etc/py")).unwrap();
    // Symlinks: relative, absolute, dangling, and one with a target too long for ustar.
    symlink("python3", root.join("usr/bin/python")).unwrap();
    symlink("/usr/bin/big", root.join("etc/abs")).unwrap();
    symlink("does/not/exist", root.join("etc/dangling")).unwrap();
    symlink("t".repeat(180), root.join("etc/longlink")).unwrap();
    // A path longer than ustar's name+prefix, and a name that is not UTF-8.
    let deep: PathBuf = (0..12).map(|i| format!("directory-level-{i:02}")).collect();
    fs::create_dir_all(root.join(&deep)).unwrap();
    fs::write(root.join(&deep).join("leaf-file-with-a-long-name"), b"deep").unwrap();
    fs::write(
        root.join(std::ffi::OsStr::from_bytes(b"etc/latin1-\xe9t\xe9")),
        b"x",
    )
    .unwrap();
    nix::unistd::mkfifo(&root.join("var/fifo"), Mode::from_bits_truncate(0o640)).unwrap();
    // Sparse: data, a hole, data, ending in a hole; and one that is all hole.
    let sparse = fs::File::create(root.join("var/sparse.img")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    sparse.write_all_at(&noise(5, 10_000), 0).unwrap();
    sparse.write_all_at(&noise(6, 70_000), 20 << 20).unwrap();
    let holes = fs::File::create(root.join("var/holes.img")).unwrap();
    holes.set_len(8 << 20).unwrap();
    if xattrs {
        xattr::set(
            root.join("etc/hostname"),
            "user.comment",
            b"binary\0\n=\xff",
        )
        .unwrap();
        xattr::set(root.join("etc/ssh"), "user.dir", b"d").unwrap();
    }
    let mut acls = false;
    if xattrs {
        acls = xattr::set(
            root.join("etc/ssh/sshd_config"),
            "system.posix_acl_access",
            &acl_bytes(1000),
        )
        .is_ok()
            && xattr::set(
                root.join("etc/ssh"),
                "system.posix_acl_default",
                &acl_bytes(1000),
            )
            .is_ok();
    }
    if root_user {
        mknod(
            &root.join("etc/null"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(1, 3),
        )
        .unwrap();
        mknod(
            &root.join("etc/loop0"),
            SFlag::S_IFBLK,
            Mode::from_bits_truncate(0o660),
            makedev(7, 0),
        )
        .unwrap();
        let own = |p: &str, u: u32, g: u32| {
            std::os::unix::fs::lchown(root.join(p), Some(u), Some(g)).unwrap()
        };
        own("etc/hostname", 1234, 5678);
        own("etc/dangling", 42, 43);
        own("var/tmp", 3_000_000, 3_000_001); // too big for ustar: pax uid/gid
        own("usr/bin/tool", 0, 0);
        fs::set_permissions(
            root.join("usr/bin/tool"),
            fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        xattr::set(
            root.join("usr/bin/big"),
            "security.capability",
            &cap_net_raw(),
        )
        .unwrap();
    }
    set_mtime(&root.join("etc/empty"), -100, 250_000_000);
    set_mtime(&root.join("etc/abs"), 1_000_000_000, 5);
    Features {
        xattrs,
        acls,
        root: root_user,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub size: u64,
    pub nlink: u64,
    pub rdev: u64,
    pub link: Option<PathBuf>,
    pub content: Option<blake3::Hash>,
    pub xattrs: BTreeMap<OsString, Vec<u8>>,
    /// Allocated 512-byte blocks, recorded for files with holes only.
    pub sparse_blocks: Option<u64>,
}

/// Every path under `root` (root itself as "") with what the format must keep.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    walk(root, Path::new(""), &mut out);
    out
}

fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Node>) {
    let abs = root.join(rel);
    let m = fs::symlink_metadata(&abs).unwrap();
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_char_device() {
        "char"
    } else if ft.is_block_device() {
        "block"
    } else {
        "fifo"
    };
    let mut xattrs = BTreeMap::new();
    if let Ok(names) = xattr::list(&abs) {
        for n in names {
            if let Ok(Some(v)) = xattr::get(&abs, &n) {
                xattrs.insert(n, v);
            }
        }
    }
    let is_sparse = ft.is_file() && m.blocks() * 512 < m.len();
    out.insert(
        rel.to_path_buf(),
        Node {
            kind,
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            mtime: (m.mtime(), m.mtime_nsec()),
            size: if ft.is_dir() { 0 } else { m.len() },
            nlink: m.nlink(),
            rdev: m.rdev(),
            link: ft.is_symlink().then(|| fs::read_link(&abs).unwrap()),
            content: ft.is_file().then(|| blake3::hash(&fs::read(&abs).unwrap())),
            xattrs,
            sparse_blocks: is_sparse.then_some(m.blocks()),
        },
    );
    if ft.is_dir() {
        for e in fs::read_dir(&abs).unwrap() {
            walk(root, &rel.join(e.unwrap().file_name()), out);
        }
    }
}

/// Paths grouped by inode, for files with more than one link.
pub fn link_groups(root: &Path) -> BTreeSet<BTreeSet<PathBuf>> {
    let mut by_ino: HashMap<u64, BTreeSet<PathBuf>> = HashMap::new();
    for (rel, node) in snapshot(root) {
        if node.kind != "dir" && node.nlink > 1 {
            let ino = fs::symlink_metadata(root.join(&rel)).unwrap().ino();
            by_ino.entry(ino).or_default().insert(rel);
        }
    }
    by_ino.into_values().collect()
}

/// Asserts two trees are the same, path by path, field by field.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let (sa, sb) = (snapshot(a), snapshot(b));
    let ka: Vec<_> = sa.keys().collect();
    let kb: Vec<_> = sb.keys().collect();
    assert_eq!(ka, kb, "different paths");
    for (path, na) in &sa {
        assert_eq!(Some(na), sb.get(path), "{}", path.display());
    }
    assert_eq!(link_groups(a), link_groups(b), "hard link groups");
}
