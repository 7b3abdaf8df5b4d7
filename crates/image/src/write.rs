//! Writing a root file tree as a deterministic POSIX/PAX tar stream.
//!
//! Order: depth first, siblings sorted by the bytes of their names, every directory *after* its
//! contents (so extraction can set a directory's times, mode and default ACL last, and a
//! resumed extraction never needs a directory entry it skipped). Names are `./`-relative; the
//! root itself is the final entry `./`. The same tree always gives the same bytes.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::unistd::{Whence, lseek};
use tar::{Builder, EntryType, Header};

use crate::pax::{self, XATTR_PREFIX};

/// Largest value of a 7-digit octal ustar field (uid, gid, device numbers).
const MAX_OCTAL7: u64 = 0o7_777_777;
/// Largest value of an 11-digit octal ustar field (size, mtime).
const MAX_OCTAL11: u64 = 0o77_777_777_777;
const NAME_LEN: usize = 100;
const PREFIX_LEN: usize = 155;
const LINKNAME: std::ops::Range<usize> = 157..257;

#[derive(Debug, Clone)]
pub struct TreeOptions {
    /// Do not descend into directories on another filesystem than the root (like
    /// `tar --one-file-system`); such mount points are stored as empty directories.
    pub one_file_system: bool,
}

impl Default for TreeOptions {
    fn default() -> Self {
        TreeOptions {
            one_file_system: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} changed size while it was being read")]
    Changed(PathBuf),
    #[error("{path}: extended attribute {name:?} has '=' in its name, which pax cannot carry")]
    XattrName { path: PathBuf, name: OsString },
    #[error("writing the tar stream")]
    Write(#[source] io::Error),
}

/// Writes the tree under `root` to `out` as a tar stream and returns `out`.
pub fn write_tree<W: Write>(root: &Path, out: W, opts: &TreeOptions) -> Result<W, TreeError> {
    let meta = fs::symlink_metadata(root).map_err(read_err(root))?;
    if !meta.is_dir() {
        return Err(TreeError::NotADirectory(root.to_path_buf()));
    }
    let mut w = TreeWriter {
        builder: Builder::new(out),
        links: HashMap::new(),
        root_dev: meta.dev(),
        one_file_system: opts.one_file_system,
    };
    w.dir(root, b".".to_vec(), &meta)?;
    w.builder.into_inner().map_err(TreeError::Write)
}

fn read_err(path: &Path) -> impl FnOnce(io::Error) -> TreeError + '_ {
    move |source| TreeError::Read {
        path: path.to_path_buf(),
        source,
    }
}

struct TreeWriter<W: Write> {
    builder: Builder<W>,
    /// First member name of every multiply-linked inode seen, by (dev, ino).
    links: HashMap<(u64, u64), Vec<u8>>,
    root_dev: u64,
    one_file_system: bool,
}

/// What goes into one member besides its data.
struct Member<'a> {
    name: &'a [u8],
    kind: EntryType,
    meta: &'a Metadata,
    size: u64,
    link: Option<&'a [u8]>,
    xattrs: Vec<(OsString, Vec<u8>)>,
    /// Records that replace the name (pax 1.0 sparse files); `name` is then the stand-in.
    sparse: Option<(u64, Vec<u8>)>,
}

impl<W: Write> TreeWriter<W> {
    fn dir(&mut self, abs: &Path, name: Vec<u8>, meta: &Metadata) -> Result<(), TreeError> {
        if !(self.one_file_system && meta.dev() != self.root_dev) {
            let mut children: Vec<OsString> = fs::read_dir(abs)
                .and_then(|rd| {
                    rd.map(|e| e.map(|e| e.file_name()))
                        .collect::<Result<_, _>>()
                })
                .map_err(read_err(abs))?;
            sort_names(&mut children);
            for child in children {
                let cabs = abs.join(&child);
                let mut cname = name.clone();
                cname.push(b'/');
                cname.extend_from_slice(child.as_bytes());
                let cmeta = fs::symlink_metadata(&cabs).map_err(read_err(&cabs))?;
                if cmeta.is_dir() {
                    self.dir(&cabs, cname, &cmeta)?;
                } else {
                    self.non_dir(&cabs, &cname, &cmeta)?;
                }
            }
        }
        let mut dname = name;
        dname.push(b'/');
        let m = Member {
            name: &dname,
            kind: EntryType::Directory,
            meta,
            size: 0,
            link: None,
            xattrs: xattrs(abs)?,
            sparse: None,
        };
        self.append(m, abs, &mut io::empty())
    }

    fn non_dir(&mut self, abs: &Path, name: &[u8], meta: &Metadata) -> Result<(), TreeError> {
        let ft = meta.file_type();
        if ft.is_socket() {
            tracing::warn!(path = %abs.display(), "sockets cannot be archived; skipped");
            return Ok(());
        }
        if meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.links.get(&key).cloned() {
                let m = Member {
                    name,
                    kind: EntryType::Link,
                    meta,
                    size: 0,
                    link: Some(&first),
                    xattrs: Vec::new(),
                    sparse: None,
                };
                return self.append(m, abs, &mut io::empty());
            }
            self.links.insert(key, name.to_vec());
        }
        let mut m = Member {
            name,
            kind: EntryType::Regular,
            meta,
            size: 0,
            link: None,
            xattrs: xattrs(abs)?,
            sparse: None,
        };
        if ft.is_file() {
            return self.file(abs, m);
        }
        let target;
        if ft.is_symlink() {
            target = fs::read_link(abs).map_err(read_err(abs))?;
            m.kind = EntryType::Symlink;
            m.link = Some(target.as_os_str().as_bytes());
        } else if ft.is_char_device() {
            m.kind = EntryType::Char;
        } else if ft.is_block_device() {
            m.kind = EntryType::Block;
        } else {
            m.kind = EntryType::Fifo;
        }
        self.append(m, abs, &mut io::empty())
    }

    fn file(&mut self, abs: &Path, mut m: Member<'_>) -> Result<(), TreeError> {
        let file = File::open(abs).map_err(read_err(abs))?;
        let size = m.meta.len();
        // Only files with fewer blocks than bytes can have holes; skip the lseek calls otherwise.
        let regions = if m.meta.blocks() * 512 < size {
            data_regions(&file, size).map_err(read_err(abs))?
        } else {
            None
        };
        match regions {
            Some(regions) => {
                let map = sparse_map(&regions, size);
                let stored: u64 = regions.iter().map(|r| r.1).sum::<u64>() + map.len() as u64;
                let base = m.name.rsplit(|&b| b == b'/').next().unwrap_or(m.name);
                let mut stand_in = b"./GNUSparseFile.0/".to_vec();
                stand_in.extend_from_slice(&base[base.len().saturating_sub(80)..]);
                let sparse = Member {
                    name: &stand_in,
                    size: stored,
                    sparse: Some((size, m.name.to_vec())),
                    ..m
                };
                let mut data = SparseData {
                    map,
                    map_pos: 0,
                    regions,
                    next: 0,
                    left: 0,
                    file,
                    short: false,
                };
                let r = self.append(sparse, abs, &mut data);
                if data.short {
                    return Err(TreeError::Changed(abs.to_path_buf()));
                }
                r
            }
            None => {
                m.size = size;
                let mut data = Exact {
                    inner: file,
                    left: size,
                    short: false,
                };
                let r = self.append(m, abs, &mut data);
                if data.short {
                    return Err(TreeError::Changed(abs.to_path_buf()));
                }
                r
            }
        }
    }

    fn append(&mut self, m: Member<'_>, abs: &Path, data: &mut dyn Read) -> Result<(), TreeError> {
        let mut h = Header::new_ustar();
        h.set_entry_type(m.kind);
        h.set_mode(m.meta.mode() & 0o7777);
        let mut records = Vec::new();
        if let Some((real_size, real_name)) = &m.sparse {
            pax::push_record(&mut records, b"GNU.sparse.major", b"1");
            pax::push_record(&mut records, b"GNU.sparse.minor", b"0");
            pax::push_record(&mut records, b"GNU.sparse.name", real_name);
            pax::push_record(
                &mut records,
                b"GNU.sparse.realsize",
                real_size.to_string().as_bytes(),
            );
        }
        if !set_ustar_name(&mut h, m.name) {
            pax::push_record(&mut records, b"path", m.name);
            set_ustar_name(&mut h, &m.name[..NAME_LEN]);
        }
        if let Some(link) = m.link {
            let n = link.len().min(NAME_LEN);
            h.as_mut_bytes()[LINKNAME][..n].copy_from_slice(&link[..n]);
            if link.len() > NAME_LEN {
                pax::push_record(&mut records, b"linkpath", link);
            }
        }
        // Values too large for the octal header fields go to pax records; the field holds 0.
        let mut numeric = |key: &[u8], value: u64, max: u64| {
            if value <= max {
                value
            } else {
                pax::push_record(&mut records, key, value.to_string().as_bytes());
                0
            }
        };
        h.set_uid(numeric(b"uid", u64::from(m.meta.uid()), MAX_OCTAL7));
        h.set_gid(numeric(b"gid", u64::from(m.meta.gid()), MAX_OCTAL7));
        h.set_size(numeric(b"size", m.size, MAX_OCTAL11));
        let (sec, nsec) = (m.meta.mtime(), m.meta.mtime_nsec() as u32);
        let header_time = u64::try_from(sec).ok().filter(|&s| s <= MAX_OCTAL11);
        h.set_mtime(header_time.unwrap_or(0));
        if nsec != 0 || header_time.is_none() {
            pax::push_record(
                &mut records,
                b"mtime",
                pax::format_time(sec, nsec).as_bytes(),
            );
        }
        if matches!(m.kind, EntryType::Char | EntryType::Block) {
            let rdev = m.meta.rdev();
            let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
            // Linux device numbers (12-bit major, 20-bit minor) always fit the octal fields.
            h.set_device_major(major as u32).map_err(TreeError::Write)?;
            h.set_device_minor(minor as u32).map_err(TreeError::Write)?;
        }
        for (name, value) in &m.xattrs {
            let name = name.as_bytes();
            if name.contains(&b'=') {
                return Err(TreeError::XattrName {
                    path: abs.to_path_buf(),
                    name: OsString::from(std::ffi::OsStr::from_bytes(name)),
                });
            }
            let mut key = XATTR_PREFIX.to_vec();
            key.extend_from_slice(name);
            pax::push_record(&mut records, &key, value);
        }
        h.set_cksum();
        if !records.is_empty() {
            let mut x = Header::new_ustar();
            x.set_entry_type(EntryType::XHeader);
            set_ustar_name(&mut x, b"././@PaxHeader");
            x.set_mode(0o644);
            x.set_size(records.len() as u64);
            x.set_cksum();
            self.builder
                .append(&x, &records[..])
                .map_err(TreeError::Write)?;
        }
        self.builder.append(&h, data).map_err(TreeError::Write)
    }
}

fn sort_names(names: &mut [OsString]) {
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
}

/// Extended attributes of `path` itself (not of a symlink's target), sorted by name.
fn xattrs(path: &Path) -> Result<Vec<(OsString, Vec<u8>)>, TreeError> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(Errno::EOPNOTSUPP as i32) => return Ok(Vec::new()),
        Err(e) => return Err(read_err(path)(e)),
    };
    let mut names: Vec<OsString> = names.collect();
    sort_names(&mut names);
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        if let Some(value) = xattr::get(path, &name).map_err(read_err(path))? {
            out.push((name, value));
        }
    }
    Ok(out)
}

/// Data regions `(offset, len)` of a file with holes, or `None` when it has none (or the
/// filesystem cannot tell).
fn data_regions(file: &File, size: u64) -> io::Result<Option<Vec<(u64, u64)>>> {
    let mut regions = Vec::new();
    let mut pos: u64 = 0;
    while pos < size {
        let off = i64::try_from(pos).map_err(io::Error::other)?;
        let data = match lseek(file, off, Whence::SeekData) {
            Ok(d) => d as u64,
            Err(Errno::ENXIO) => break,
            Err(Errno::EINVAL) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if data >= size {
            break;
        }
        let hole = match lseek(file, data as i64, Whence::SeekHole) {
            Ok(h) => (h as u64).min(size),
            Err(Errno::ENXIO) => size,
            Err(e) => return Err(e.into()),
        };
        regions.push((data, hole - data));
        pos = hole;
    }
    let stored: u64 = regions.iter().map(|r| r.1).sum();
    Ok((stored < size).then_some(regions))
}

/// The pax 1.0 sparse map: region count, then offset and length of each, one decimal number
/// per line, NUL-padded to a 512-byte block. A file that ends in a hole gets a final empty
/// region at its size, as GNU tar writes it.
fn sparse_map(regions: &[(u64, u64)], size: u64) -> Vec<u8> {
    let mut all = regions.to_vec();
    if all.last().is_none_or(|&(o, l)| o + l < size) {
        all.push((size, 0));
    }
    let mut map = format!("{}\n", all.len()).into_bytes();
    for (o, l) in &all {
        map.extend_from_slice(format!("{o}\n{l}\n").as_bytes());
    }
    map.resize(pax::align_up(map.len() as u64) as usize, 0);
    map
}

/// Writes `name` into the ustar name (and prefix) fields; false if it does not fit.
fn set_ustar_name(h: &mut Header, name: &[u8]) -> bool {
    let bytes = h.as_mut_bytes();
    let (name_f, prefix_f) = (0..NAME_LEN, 345..345 + PREFIX_LEN);
    if name.len() <= NAME_LEN {
        bytes[name_f.clone()].fill(0);
        bytes[..name.len()].copy_from_slice(name);
        return true;
    }
    // Split at a '/' so that the prefix takes at most 155 bytes and the name 1..=100.
    let split = name.iter().enumerate().position(|(i, &b)| {
        b == b'/' && i <= PREFIX_LEN && name.len() - i - 1 <= NAME_LEN && i + 1 < name.len()
    });
    match split {
        Some(i) => {
            bytes[name_f].fill(0);
            bytes[..name.len() - i - 1].copy_from_slice(&name[i + 1..]);
            bytes[prefix_f.clone()].fill(0);
            bytes[prefix_f.start..prefix_f.start + i].copy_from_slice(&name[..i]);
            true
        }
        None => false,
    }
}

/// Reads exactly `left` bytes; notes when the file was shorter than its size said.
struct Exact<R> {
    inner: R,
    left: u64,
    short: bool,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = self.left.min(buf.len() as u64) as usize;
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            self.short = true;
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// The data of a pax 1.0 sparse member: the map, then each data region in order.
struct SparseData {
    map: Vec<u8>,
    map_pos: usize,
    regions: Vec<(u64, u64)>,
    next: usize,
    left: u64,
    file: File,
    short: bool,
}

impl Read for SparseData {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.map_pos < self.map.len() {
            let n = (self.map.len() - self.map_pos).min(buf.len());
            buf[..n].copy_from_slice(&self.map[self.map_pos..self.map_pos + n]);
            self.map_pos += n;
            return Ok(n);
        }
        while self.left == 0 {
            let Some(&(off, len)) = self.regions.get(self.next) else {
                return Ok(0);
            };
            self.next += 1;
            self.file.seek(SeekFrom::Start(off))?;
            self.left = len;
        }
        let want = (self.left.min(buf.len() as u64)) as usize;
        let n = self.file.read(&mut buf[..want])?;
        if n == 0 {
            self.short = true;
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_split_or_fall_back_to_pax() {
        let mut h = Header::new_ustar();
        let short = b"./etc/passwd";
        assert!(set_ustar_name(&mut h, short));
        assert_eq!(pax::header_name(h.as_bytes()), short);

        let split = [&b"./"[..], &[b'd'; 120], b"/", &[b'f'; 90]].concat();
        assert!(set_ustar_name(&mut h, &split));
        assert_eq!(pax::header_name(h.as_bytes()), split);

        let no_slash = [&b"./"[..], &[b'f'; 200]].concat();
        assert!(!set_ustar_name(&mut h, &no_slash));
        let dir_with_slash = [&b"./"[..], &[b'd'; 120], b"/"].concat();
        assert!(!set_ustar_name(&mut h, &dir_with_slash));
    }

    #[test]
    fn sparse_maps_end_with_the_size() {
        let map = sparse_map(&[(0, 4096), (65536, 10)], 1 << 20);
        assert_eq!(map.len(), 512);
        let text = String::from_utf8_lossy(&map);
        assert!(
            text.starts_with("3\n0\n4096\n65536\n10\n1048576\n0\n\0"),
            "{text}"
        );
        let full = sparse_map(&[(8192, 100)], 8292);
        assert!(String::from_utf8_lossy(&full).starts_with("1\n8192\n100\n\0"));
    }
}
