//! Extracting a tar stream into a target directory, keeping owners, modes, times, xattrs
//! (hence ACLs and file capabilities), hard links, symlinks, devices, fifos and holes.
//!
//! Per member the order is: create, chown, chmod, set xattrs, set times. chown clears set-id
//! bits and `security.capability`, so it goes first; times go last since everything before
//! changes them. Members overwrite what is at their path (a resumed extraction repeats some).
//! No member is written through a symlink: every parent directory of a member is checked to be
//! a real directory inside the target (and created when missing).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use xattr::FileExt as _;

use crate::read::{Forward, Kind, Member, NoForward, TarError, TarReader};

const COPY_BUF: usize = 256 * 1024;

#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Set the numeric owner and group of every member (needs root). When false, members
    /// belong to the extracting user.
    pub preserve_owners: bool,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            preserve_owners: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error(transparent)]
    Tar(#[from] TarError),
    #[error("member {0:?}: path leaves the target (.. component) or names the target itself")]
    UnsafePath(String),
    #[error("member {path:?}: {parent} is not a directory")]
    ParentNotDir { path: String, parent: PathBuf },
    #[error("member {path:?}: {what} out of range")]
    Range { path: String, what: &'static str },
    #[error("{path}: {action}")]
    Write {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    pub members: u64,
    /// Bytes of regular file contents written (holes not counted).
    pub file_bytes: u64,
}

/// Extracts the tar stream `reader` into the existing directory `target`.
pub fn unpack<R: Read>(
    reader: R,
    target: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, UnpackError> {
    unpack_with(NoForward(reader), target, opts, None, &mut |_| {})
}

/// Like [`unpack`]; `after_member(end)` runs once each member is completely applied, with
/// the reader position just past that member.
///
/// `resume_at`: the reader position from which a previous, interrupted extraction of the
/// same stream had not written anything. If the first member is a regular file whose data
/// holds that position and the file on disk is at least that long, its data up to there is
/// skipped rather than read and written again.
pub(crate) fn unpack_with<R: Forward>(
    reader: R,
    target: &Path,
    opts: &UnpackOptions,
    resume_at: Option<u64>,
    after_member: &mut dyn FnMut(u64),
) -> Result<UnpackStats, UnpackError> {
    let mut u = Unpacker {
        target: target.to_path_buf(),
        preserve_owners: opts.preserve_owners,
        dirs: HashSet::new(),
        dir_times: HashMap::new(),
        touched: HashSet::new(),
        resume_at,
        buf: vec![0; COPY_BUF],
        stats: UnpackStats::default(),
    };
    let mut reader = TarReader::new(reader);
    while let Some(m) = reader.next_member()? {
        let name = m.name.clone();
        u.member(&mut reader, m)?;
        u.note_parent(&name);
        u.stats.members += 1;
        after_member(reader.member_end());
    }
    u.restore_dir_times()?;
    Ok(u.stats)
}

/// Owner, mode, time and xattrs to apply to a member once it exists.
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: TimeSpec,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

struct Unpacker {
    target: PathBuf,
    preserve_owners: bool,
    /// Target-relative directories known to be real directories (not symlinks).
    dirs: HashSet<PathBuf>,
    /// Times of the directories applied so far. Streams that list a directory before its
    /// contents (GNU tar's order, unlike ours) change them afterwards; `touched` collects
    /// those, whose times are set again at the end.
    dir_times: HashMap<PathBuf, TimeSpec>,
    touched: HashSet<PathBuf>,
    resume_at: Option<u64>,
    buf: Vec<u8>,
    stats: UnpackStats,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The target-relative path of a member name: `.` and empty components dropped, a leading
/// `/` ignored (as tar does), `..` refused. The root directory is the empty path.
fn relative(name: &[u8]) -> Result<PathBuf, UnpackError> {
    let mut out = PathBuf::new();
    for c in name.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(UnpackError::UnsafePath(lossy(name))),
            c => out.push(OsStr::from_bytes(c)),
        }
    }
    Ok(out)
}

impl Unpacker {
    fn member<R: Forward>(&mut self, r: &mut TarReader<R>, m: Member) -> Result<(), UnpackError> {
        let resume_at = self.resume_at.take();
        let shown = lossy(&m.name);
        let rel = relative(&m.name)?;
        let range = |what| UnpackError::Range {
            path: shown.clone(),
            what,
        };
        let meta = Meta {
            uid: u32::try_from(m.uid).map_err(|_| range("uid"))?,
            gid: u32::try_from(m.gid).map_err(|_| range("gid"))?,
            mode: m.mode,
            mtime: TimeSpec::new(m.mtime.0, i64::from(m.mtime.1)),
            xattrs: m.xattrs,
        };
        if rel.as_os_str().is_empty() && m.kind != Kind::Dir {
            return Err(UnpackError::UnsafePath(shown));
        }
        match m.kind {
            Kind::File => {
                let abs = self.parent_checked(&rel, &shown)?;
                let continued = match m.sparse {
                    None => self.continue_file(r, &abs, resume_at)?,
                    Some(_) => None,
                };
                if let Some(file) = continued {
                    return self.file_meta(&file, &abs, &meta);
                }
                let file = self.create_file(&abs, &rel)?;
                match &m.sparse {
                    Some((size, regions)) => self.regions(r, &file, &abs, *size, regions)?,
                    None => self.contents(r, &file, &abs, 0)?,
                }
                self.file_meta(&file, &abs, &meta)
            }
            Kind::Dir => self.directory(&rel, &meta, &shown),
            Kind::Symlink => {
                let abs = self.parent_checked(&rel, &shown)?;
                let target = OsStr::from_bytes(&m.link);
                self.create(&abs, &rel, "creating the symlink", |p| {
                    std::os::unix::fs::symlink(target, p)
                })?;
                self.path_meta(&abs, &meta, false)
            }
            Kind::HardLink => {
                let src_rel = relative(&m.link)?;
                if src_rel == rel {
                    return Ok(());
                }
                let src = self.parent_checked(&src_rel, &shown)?;
                let abs = self.parent_checked(&rel, &shown)?;
                self.create(&abs, &rel, "creating the hard link", |p| {
                    fs::hard_link(&src, p)
                })
            }
            Kind::Char | Kind::Block | Kind::Fifo => {
                let abs = self.parent_checked(&rel, &shown)?;
                let perm = Mode::from_bits_truncate(0o600);
                let dev = nix::sys::stat::makedev(m.dev.0.into(), m.dev.1.into());
                let kind = m.kind;
                self.create(&abs, &rel, "creating the device or fifo", |p| {
                    let made = match kind {
                        Kind::Fifo => nix::unistd::mkfifo(p, perm),
                        Kind::Char => nix::sys::stat::mknod(p, SFlag::S_IFCHR, perm, dev),
                        _ => nix::sys::stat::mknod(p, SFlag::S_IFBLK, perm, dev),
                    };
                    made.map_err(io::Error::from)
                })?;
                self.path_meta(&abs, &meta, true)
            }
        }
    }

    fn note_parent(&mut self, name: &[u8]) {
        let Ok(rel) = relative(name) else { return };
        if let Some(parent) = rel.parent().filter(|p| self.dir_times.contains_key(*p)) {
            self.touched.insert(parent.to_path_buf());
        }
    }

    fn restore_dir_times(&mut self) -> Result<(), UnpackError> {
        for rel in std::mem::take(&mut self.touched) {
            if let Some(t) = self.dir_times.get(&rel) {
                let abs = self.target.join(&rel);
                set_mtime(&abs, t)?;
            }
        }
        Ok(())
    }

    /// Makes sure every parent of `rel` is a real directory in the target; returns the
    /// absolute path of `rel`.
    fn parent_checked(&mut self, rel: &Path, shown: &str) -> Result<PathBuf, UnpackError> {
        let mut cur = PathBuf::new();
        if let Some(parent) = rel.parent() {
            for c in parent.components() {
                let Component::Normal(c) = c else { continue };
                cur.push(c);
                if self.dirs.contains(&cur) {
                    continue;
                }
                let abs = self.target.join(&cur);
                match fs::symlink_metadata(&abs) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        return Err(UnpackError::ParentNotDir {
                            path: shown.to_string(),
                            parent: abs,
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        // Its own member comes later (directories follow their contents).
                        DirBuilder::new()
                            .mode(0o755)
                            .create(&abs)
                            .map_err(write_err(&abs, "creating the directory"))?;
                    }
                    Err(e) => return Err(write_err(&abs, "inspecting the directory")(e)),
                }
                self.dirs.insert(cur.clone());
            }
        }
        Ok(self.target.join(rel))
    }

    /// Removes whatever is at `abs` (a file from an earlier attempt; an empty directory).
    fn clear(&mut self, abs: &Path, rel: &Path) -> Result<(), UnpackError> {
        match fs::symlink_metadata(abs) {
            Ok(m) if m.is_dir() => {
                self.dirs.remove(rel);
                fs::remove_dir(abs).map_err(write_err(abs, "replacing the directory"))
            }
            Ok(_) => fs::remove_file(abs).map_err(write_err(abs, "replacing the file")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(write_err(abs, "inspecting the path")(e)),
        }
    }

    /// Runs `create` for a new object at `abs`; if something is in the way (a resumed
    /// extraction), removes it and tries once more. On a fresh target that costs nothing extra.
    fn create<T>(
        &mut self,
        abs: &Path,
        rel: &Path,
        action: &'static str,
        create: impl Fn(&Path) -> io::Result<T>,
    ) -> Result<T, UnpackError> {
        match create(abs) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.clear(abs, rel)?;
                create(abs).map_err(write_err(abs, action))
            }
            other => other.map_err(write_err(abs, action)),
        }
    }

    fn create_file(&mut self, abs: &Path, rel: &Path) -> Result<File, UnpackError> {
        self.create(abs, rel, "creating the file", |p| {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(p)
        })
    }

    /// Resumes writing a regular file an interrupted extraction wrote up to `resume_at`:
    /// skips the data before it and writes the rest. `None` when that does not apply.
    fn continue_file<R: Forward>(
        &mut self,
        r: &mut TarReader<R>,
        abs: &Path,
        resume_at: Option<u64>,
    ) -> Result<Option<File>, UnpackError> {
        let Some(at) = resume_at else {
            return Ok(None);
        };
        let (start, len) = (r.position(), r.data_left());
        if at <= start || at > start + len {
            return Ok(None);
        }
        let done = at - start;
        let on_disk = fs::symlink_metadata(abs)
            .ok()
            .filter(|m| m.is_file() && m.len() >= done);
        if on_disk.is_none() {
            return Ok(None);
        }
        let file = OpenOptions::new()
            .write(true)
            .open(abs)
            .map_err(write_err(abs, "opening the file"))?;
        if !r.forward_data(done)? {
            return Ok(None);
        }
        tracing::info!(path = %abs.display(), skipped = done, "continuing a partly written file");
        self.contents(r, &file, abs, done)?;
        file.set_len(len)
            .map_err(write_err(abs, "setting the file size"))?;
        Ok(Some(file))
    }

    fn contents<R: Read>(
        &mut self,
        r: &mut TarReader<R>,
        file: &File,
        abs: &Path,
        mut pos: u64,
    ) -> Result<(), UnpackError> {
        let from = pos;
        loop {
            let n = r.read_data(&mut self.buf)?;
            if n == 0 {
                break;
            }
            file.write_all_at(&self.buf[..n], pos)
                .map_err(write_err(abs, "writing the file"))?;
            pos += n as u64;
        }
        self.stats.file_bytes += pos - from;
        Ok(())
    }

    /// Writes each data region at its offset; the rest stays a hole.
    fn regions<R: Read>(
        &mut self,
        r: &mut TarReader<R>,
        file: &File,
        abs: &Path,
        size: u64,
        regions: &[(u64, u64)],
    ) -> Result<(), UnpackError> {
        for &(off, len) in regions {
            let mut done = 0u64;
            while done < len {
                let want = (len - done).min(self.buf.len() as u64) as usize;
                r.read_data_exact(&mut self.buf[..want])?;
                file.write_all_at(&self.buf[..want], off + done)
                    .map_err(write_err(abs, "writing the file"))?;
                done += want as u64;
            }
            self.stats.file_bytes += len;
        }
        file.set_len(size)
            .map_err(write_err(abs, "setting the file size"))
    }

    fn directory(&mut self, rel: &Path, meta: &Meta, shown: &str) -> Result<(), UnpackError> {
        let abs = self.parent_checked(rel, shown)?;
        match fs::symlink_metadata(&abs) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                fs::remove_file(&abs).map_err(write_err(&abs, "replacing the file"))?;
                mkdir(&abs)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => mkdir(&abs)?,
            Err(e) => return Err(write_err(&abs, "inspecting the directory")(e)),
        }
        self.dirs.insert(rel.to_path_buf());
        self.dir_times.insert(rel.to_path_buf(), meta.mtime);
        self.touched.remove(rel);
        self.path_meta(&abs, meta, true)
    }

    fn file_meta(&self, file: &File, abs: &Path, m: &Meta) -> Result<(), UnpackError> {
        if self.preserve_owners {
            std::os::unix::fs::fchown(file, Some(m.uid), Some(m.gid))
                .map_err(write_err(abs, "setting the owner"))?;
        }
        file.set_permissions(Permissions::from_mode(m.mode))
            .map_err(write_err(abs, "setting the mode"))?;
        for (name, value) in &m.xattrs {
            file.set_xattr(OsStr::from_bytes(name), value)
                .map_err(write_err(abs, "setting an extended attribute"))?;
        }
        nix::sys::stat::futimens(file, &TimeSpec::UTIME_OMIT, &m.mtime)
            .map_err(|e| write_err(abs, "setting the modification time")(e.into()))
    }

    /// Metadata of a member that is not a regular file; `chmod` is false for symlinks.
    fn path_meta(&self, abs: &Path, m: &Meta, chmod: bool) -> Result<(), UnpackError> {
        if self.preserve_owners {
            std::os::unix::fs::lchown(abs, Some(m.uid), Some(m.gid))
                .map_err(write_err(abs, "setting the owner"))?;
        }
        if chmod {
            fs::set_permissions(abs, Permissions::from_mode(m.mode))
                .map_err(write_err(abs, "setting the mode"))?;
        }
        for (name, value) in &m.xattrs {
            xattr::set(abs, OsStr::from_bytes(name), value)
                .map_err(write_err(abs, "setting an extended attribute"))?;
        }
        set_mtime(abs, &m.mtime)
    }
}

fn set_mtime(abs: &Path, t: &TimeSpec) -> Result<(), UnpackError> {
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        abs,
        &TimeSpec::UTIME_OMIT,
        t,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| write_err(abs, "setting the modification time")(e.into()))
}

fn mkdir(abs: &Path) -> Result<(), UnpackError> {
    DirBuilder::new()
        .mode(0o700)
        .create(abs)
        .map_err(write_err(abs, "creating the directory"))
}

fn write_err<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(io::Error) -> UnpackError + 'a {
    move |source| UnpackError::Write {
        path: path.to_path_buf(),
        action,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_paths_stay_inside_the_target() {
        assert_eq!(relative(b"./etc/passwd").unwrap(), Path::new("etc/passwd"));
        assert_eq!(relative(b"/etc//x/").unwrap(), Path::new("etc/x"));
        assert_eq!(relative(b"./").unwrap(), Path::new(""));
        assert!(relative(b"./a/../../x").is_err());
        assert!(relative(b"..").is_err());
    }
}
