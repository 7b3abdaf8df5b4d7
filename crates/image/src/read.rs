//! A pull-based tar member reader.
//!
//! The tar crate's reader splits pax records at newlines, so a binary xattr value that holds a
//! 0x0a byte (file capabilities and ACLs often do) breaks the record list, and the size or
//! path that follows can be lost. Records are length-prefixed; this reader parses them by
//! length. It folds extension headers (pax `x`, GNU `L`/`K`) into the member they describe,
//! and presents old-GNU (`S`) and pax 1.0 sparse members as a list of data regions followed
//! by the regions' bytes.

use std::io::{self, Read};

use crate::pax::{self, XATTR_PREFIX, field};

/// Bound on an extension header's data (pax records, long names).
const MAX_EXTENSION: u64 = 4 << 20;
/// Bound on a pax 1.0 sparse map (about a million regions).
const MAX_SPARSE_MAP: usize = 32 << 20;
const LINKNAME: std::ops::Range<usize> = 157..257;
const MODE: std::ops::Range<usize> = 100..108;
const UID: std::ops::Range<usize> = 108..116;
const GID: std::ops::Range<usize> = 116..124;
const MTIME: std::ops::Range<usize> = 136..148;
const DEVMAJOR: std::ops::Range<usize> = 329..337;
const DEVMINOR: std::ops::Range<usize> = 337..345;
/// Old-GNU sparse header: four (offset, numbytes) pairs of 12-byte numbers, then the real size.
const GNU_SPARSE: usize = 386;
const GNU_REALSIZE: std::ops::Range<usize> = 483..495;

#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("reading the tar stream")]
    Io(#[from] io::Error),
    #[error("bad tar header checksum at stream offset {0}")]
    Checksum(u64),
    #[error("malformed {what} in the tar member at stream offset {offset}")]
    Malformed { offset: u64, what: &'static str },
    #[error("unsupported tar member type {typeflag:?} at stream offset {offset}")]
    Unsupported { typeflag: char, offset: u64 },
    #[error("pax global header sets {0}: only comment records are supported")]
    GlobalHeader(String),
    #[error("the tar stream ends inside a member")]
    Truncated,
}

/// Member kinds, by ustar typeflag (`'7'` and `'S'` are read as regular files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    HardLink,
    Symlink,
    Char,
    Block,
    Dir,
    Fifo,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    pub kind: Kind,
    pub name: Vec<u8>,
    pub link: Vec<u8>,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: (i64, u32),
    pub dev: (u32, u32),
    /// For sparse files: the file size and its data regions, whose bytes are the member data.
    pub sparse: Option<(u64, Vec<(u64, u64)>)>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

pub(crate) struct TarReader<R> {
    inner: R,
    pos: u64,
    /// Data bytes of the current member not yet read.
    left: u64,
    /// Where the current member ends (its data padded to a block).
    member_end: u64,
}

/// A byte source that can move forward without producing the bytes in between (the
/// extraction pipeline skips chunks a resumed extraction already wrote).
pub(crate) trait Forward: Read {
    /// Moves `n` bytes ahead; false (nothing moved) if this source cannot.
    fn forward(&mut self, n: u64) -> io::Result<bool>;
}

impl<F: Forward + ?Sized> Forward for &mut F {
    fn forward(&mut self, n: u64) -> io::Result<bool> {
        (**self).forward(n)
    }
}

/// Any reader, without the ability to skip.
pub(crate) struct NoForward<R>(pub R);

impl<R: Read> Read for NoForward<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read> Forward for NoForward<R> {
    fn forward(&mut self, _n: u64) -> io::Result<bool> {
        Ok(false)
    }
}

impl<R: Forward> TarReader<R> {
    /// Skips `n` bytes of the current member's data without reading them, if the source can.
    pub(crate) fn forward_data(&mut self, n: u64) -> Result<bool, TarError> {
        if n > self.left || !self.inner.forward(n)? {
            return Ok(false);
        }
        self.left -= n;
        self.pos += n;
        Ok(true)
    }
}

impl<R: Read> TarReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        TarReader {
            inner,
            pos: 0,
            left: 0,
            member_end: 0,
        }
    }

    /// Stream position (from where this reader started) just past the current member.
    pub(crate) fn member_end(&self) -> u64 {
        self.member_end
    }

    /// Stream position of the next data byte of the current member.
    pub(crate) fn position(&self) -> u64 {
        self.pos
    }

    /// Data bytes of the current member not read yet.
    pub(crate) fn data_left(&self) -> u64 {
        self.left
    }

    /// Reads the current member's data (region bytes only, for sparse members).
    pub(crate) fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        let want = self.left.min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(TarError::Truncated);
        }
        self.left -= n as u64;
        self.pos += n as u64;
        Ok(n)
    }

    pub(crate) fn read_data_exact(&mut self, buf: &mut [u8]) -> Result<(), TarError> {
        let mut done = 0;
        while done < buf.len() {
            let n = self.read_data(&mut buf[done..])?;
            if n == 0 {
                return Err(TarError::Truncated);
            }
            done += n;
        }
        Ok(())
    }

    /// The next member, after skipping what is left of the current one; `None` at the
    /// end-of-archive block (or a clean end of input at a header boundary).
    pub(crate) fn next_member(&mut self) -> Result<Option<Member>, TarError> {
        let skip = self.member_end - self.pos;
        self.skip(skip)?;
        self.left = 0;
        let mut pax_records: Option<Vec<u8>> = None;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut group_start = self.pos;
        loop {
            let at = self.pos;
            let mut block = [0u8; 512];
            if !self.read_block(&mut block)? {
                return if pax_records.is_some() || long_name.is_some() || long_link.is_some() {
                    Err(TarError::Truncated)
                } else {
                    Ok(None)
                };
            }
            if block.iter().all(|&b| b == 0) {
                if pax_records.is_some() || long_name.is_some() || long_link.is_some() {
                    return Err(malformed(group_start, "extension header without a member"));
                }
                self.member_end = self.pos;
                return Ok(None);
            }
            if !pax::checksum_ok(&block) {
                return Err(TarError::Checksum(at));
            }
            let header_size =
                pax::parse_numeric(&block[field::SIZE]).ok_or_else(|| malformed(at, "size"))?;
            let typeflag = block[field::TYPEFLAG];
            match typeflag {
                b'x' | b'g' | b'L' | b'K' => {
                    if header_size > MAX_EXTENSION {
                        return Err(malformed(at, "extension header size"));
                    }
                    let data = self.read_padded(header_size)?;
                    let slot = match typeflag {
                        b'x' => &mut pax_records,
                        b'L' => &mut long_name,
                        b'K' => &mut long_link,
                        _ => {
                            let recs = pax::parse_records(&data)
                                .map_err(|_| malformed(at, "pax global header"))?;
                            if let Some((k, _)) = recs.iter().find(|(k, _)| *k != b"comment") {
                                return Err(TarError::GlobalHeader(
                                    String::from_utf8_lossy(k).into_owned(),
                                ));
                            }
                            group_start = self.pos;
                            continue;
                        }
                    };
                    if slot.replace(data).is_some() {
                        return Err(malformed(at, "repeated extension header"));
                    }
                }
                _ => {
                    let m =
                        self.member(at, &block, header_size, pax_records, long_name, long_link)?;
                    return Ok(Some(m));
                }
            }
        }
    }

    fn member(
        &mut self,
        at: u64,
        block: &[u8; 512],
        header_size: u64,
        pax_records: Option<Vec<u8>>,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
    ) -> Result<Member, TarError> {
        let typeflag = block[field::TYPEFLAG];
        let kind = match typeflag {
            b'0' | 0 | b'7' | b'S' => Kind::File,
            b'1' => Kind::HardLink,
            b'2' => Kind::Symlink,
            b'3' => Kind::Char,
            b'4' => Kind::Block,
            b'5' => Kind::Dir,
            b'6' => Kind::Fifo,
            other => {
                return Err(TarError::Unsupported {
                    typeflag: char::from(other),
                    offset: at,
                });
            }
        };
        let num = |r: std::ops::Range<usize>, what| {
            pax::parse_numeric(&block[r]).ok_or_else(|| malformed(at, what))
        };
        let cstr = |f: &[u8]| f[..f.iter().position(|&b| b == 0).unwrap_or(f.len())].to_vec();
        let strip_nul = |mut v: Vec<u8>| {
            while v.last() == Some(&0) {
                v.pop();
            }
            v
        };
        let mut m = Member {
            kind,
            name: long_name
                .map(strip_nul)
                .unwrap_or_else(|| pax::header_name(block)),
            link: long_link
                .map(strip_nul)
                .unwrap_or_else(|| cstr(&block[LINKNAME])),
            mode: (num(MODE, "mode")? & 0o7777) as u32,
            uid: num(UID, "uid")?,
            gid: num(GID, "gid")?,
            mtime: (
                i64::try_from(num(MTIME, "mtime")?).map_err(|_| malformed(at, "mtime"))?,
                0,
            ),
            dev: (0, 0),
            sparse: None,
            xattrs: Vec::new(),
        };
        if matches!(kind, Kind::Char | Kind::Block) {
            let major = u32::try_from(num(DEVMAJOR, "device major")?);
            let minor = u32::try_from(num(DEVMINOR, "device minor")?);
            m.dev = (
                major.map_err(|_| malformed(at, "device major"))?,
                minor.map_err(|_| malformed(at, "device minor"))?,
            );
        }
        let mut size = header_size;
        let mut sparse_1_0 = (None, None, None, None);
        if let Some(data) = &pax_records {
            let recs = pax::parse_records(data).map_err(|_| malformed(at, "pax records"))?;
            let number = |v: &[u8], what| {
                std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| malformed(at, what))
            };
            for (k, v) in recs {
                match k {
                    b"path" => m.name = v.to_vec(),
                    b"linkpath" => m.link = v.to_vec(),
                    b"size" => size = number(v, "pax size")?,
                    b"uid" => m.uid = number(v, "pax uid")?,
                    b"gid" => m.gid = number(v, "pax gid")?,
                    b"mtime" => {
                        m.mtime = pax::parse_time(v).ok_or_else(|| malformed(at, "pax mtime"))?
                    }
                    b"GNU.sparse.major" => sparse_1_0.0 = Some(v.to_vec()),
                    b"GNU.sparse.minor" => sparse_1_0.1 = Some(v.to_vec()),
                    b"GNU.sparse.name" => sparse_1_0.2 = Some(v.to_vec()),
                    b"GNU.sparse.realsize" => sparse_1_0.3 = Some(number(v, "sparse size")?),
                    _ => {
                        if let Some(name) = k.strip_prefix(XATTR_PREFIX) {
                            m.xattrs.push((name.to_vec(), v.to_vec()));
                        }
                    }
                }
            }
        }
        // Old-GNU sparse extension blocks come before the data.
        let mut gnu_regions = Vec::new();
        if typeflag == b'S' {
            read_gnu_pairs(
                &block[GNU_SPARSE..GNU_SPARSE + 4 * 24],
                &mut gnu_regions,
                at,
            )?;
            let mut extended = block[field::GNU_IS_EXTENDED] != 0;
            while extended {
                let mut ext = [0u8; 512];
                if !self.read_block(&mut ext)? {
                    return Err(TarError::Truncated);
                }
                read_gnu_pairs(&ext[..21 * 24], &mut gnu_regions, at)?;
                extended = ext[field::GNU_EXT_IS_EXTENDED] != 0;
            }
        }
        self.left = size;
        self.member_end = self.pos + pax::align_up(size);
        if typeflag == b'S' {
            let realsize = pax::parse_numeric(&block[GNU_REALSIZE])
                .ok_or_else(|| malformed(at, "sparse size"))?;
            check_regions(&gnu_regions, realsize, size, at)?;
            m.sparse = Some((realsize, gnu_regions));
        } else if sparse_1_0.0.is_some() || sparse_1_0.1.is_some() {
            if sparse_1_0.0.as_deref() != Some(b"1") || sparse_1_0.1.as_deref() != Some(b"0") {
                return Err(malformed(at, "sparse format (only pax 1.0 is supported)"));
            }
            let realsize = sparse_1_0.3.ok_or_else(|| malformed(at, "sparse size"))?;
            if let Some(name) = sparse_1_0.2 {
                m.name = name;
            }
            let mut text = Vec::new();
            let regions = loop {
                let mut b = [0u8; 512];
                self.read_data_exact(&mut b)?;
                text.extend_from_slice(&b);
                if let Some(r) =
                    parse_sparse_map(&text).map_err(|()| malformed(at, "sparse map"))?
                {
                    break r;
                }
                if text.len() >= MAX_SPARSE_MAP {
                    return Err(malformed(at, "sparse map"));
                }
            };
            check_regions(&regions, realsize, self.left, at)?;
            m.sparse = Some((realsize, regions));
        }
        Ok(m)
    }

    /// Reads one block; false at a clean end of input.
    fn read_block(&mut self, block: &mut [u8; 512]) -> Result<bool, TarError> {
        let mut done = 0;
        while done < block.len() {
            let n = self.inner.read(&mut block[done..])?;
            if n == 0 {
                return if done == 0 {
                    Ok(false)
                } else {
                    Err(TarError::Truncated)
                };
            }
            done += n;
            self.pos += n as u64;
        }
        Ok(true)
    }

    fn read_padded(&mut self, len: u64) -> Result<Vec<u8>, TarError> {
        let mut data = vec![0u8; len as usize];
        let mut done = 0;
        while done < data.len() {
            let n = self.inner.read(&mut data[done..])?;
            if n == 0 {
                return Err(TarError::Truncated);
            }
            done += n;
        }
        self.pos += len;
        self.skip(pax::align_up(len) - len)?;
        Ok(data)
    }

    fn skip(&mut self, mut n: u64) -> Result<(), TarError> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let want = n.min(buf.len() as u64) as usize;
            let got = self.inner.read(&mut buf[..want])?;
            if got == 0 {
                return Err(TarError::Truncated);
            }
            n -= got as u64;
            self.pos += got as u64;
        }
        Ok(())
    }
}

fn malformed(offset: u64, what: &'static str) -> TarError {
    TarError::Malformed { offset, what }
}

/// Appends the non-empty (offset, numbytes) pairs of an old-GNU sparse area.
fn read_gnu_pairs(area: &[u8], out: &mut Vec<(u64, u64)>, at: u64) -> Result<(), TarError> {
    for pair in area.chunks_exact(24) {
        if pair.iter().all(|&b| b == 0) {
            continue;
        }
        let off = pax::parse_numeric(&pair[..12]).ok_or_else(|| malformed(at, "sparse map"))?;
        let len = pax::parse_numeric(&pair[12..]).ok_or_else(|| malformed(at, "sparse map"))?;
        out.push((off, len));
    }
    Ok(())
}

/// Regions must be in order, not overlap, stay within the file and add up to the data.
fn check_regions(
    regions: &[(u64, u64)],
    realsize: u64,
    data: u64,
    at: u64,
) -> Result<(), TarError> {
    let mut end = 0u64;
    let mut total = 0u64;
    for &(off, len) in regions {
        let stop = off
            .checked_add(len)
            .ok_or_else(|| malformed(at, "sparse map"))?;
        if off < end || stop > realsize {
            return Err(malformed(at, "sparse map"));
        }
        end = stop;
        total += len;
    }
    if total != data {
        return Err(malformed(at, "sparse map"));
    }
    Ok(())
}

/// Parses a pax 1.0 sparse map from the blocks read so far: `Ok(None)` when more blocks are
/// needed, `Err` when it is not a map. After the last number only NUL padding may follow.
fn parse_sparse_map(text: &[u8]) -> Result<Option<Vec<(u64, u64)>>, ()> {
    let mut numbers: Vec<u64> = Vec::new();
    let mut pos = 0;
    let mut want = 1;
    while numbers.len() < want {
        let rest = &text[pos..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            // A number cut by the block boundary continues in the next block.
            return if rest.iter().all(u8::is_ascii_digit) {
                Ok(None)
            } else {
                Err(())
            };
        };
        let line = &rest[..nl];
        if line.is_empty() || !line.iter().all(u8::is_ascii_digit) {
            return Err(());
        }
        let v: u64 = std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(())?;
        numbers.push(v);
        pos += nl + 1;
        if numbers.len() == 1 {
            if v > (MAX_SPARSE_MAP / 4) as u64 {
                return Err(());
            }
            want = 1 + 2 * v as usize;
        }
    }
    if text[pos..].iter().any(|&b| b != 0) {
        return Err(());
    }
    Ok(Some(
        numbers[1..].chunks_exact(2).map(|p| (p[0], p[1])).collect(),
    ))
}

impl From<TarError> for io::Error {
    fn from(e: TarError) -> io::Error {
        match e {
            TarError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_xattr_values_with_newlines_survive() {
        let mut recs = Vec::new();
        pax::push_record(
            &mut recs,
            b"SCHILY.xattr.security.capability",
            b"\x01\n\x02",
        );
        pax::push_record(&mut recs, b"path", b"./after/binary");
        pax::push_record(&mut recs, b"size", b"3");
        let mut b = tar::Builder::new(Vec::new());
        let mut x = tar::Header::new_ustar();
        x.set_entry_type(tar::EntryType::XHeader);
        x.set_size(recs.len() as u64);
        x.set_cksum();
        b.append(&x, &recs[..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_path("stand-in").unwrap();
        h.set_size(0); // the pax size wins
        h.set_cksum();
        b.append(&h, &b"abc"[..]).unwrap();
        let stream = b.into_inner().unwrap();
        let mut r = TarReader::new(&stream[..]);
        let m = r.next_member().unwrap().unwrap();
        assert_eq!(m.name, b"./after/binary");
        assert_eq!(
            m.xattrs,
            vec![(b"security.capability".to_vec(), b"\x01\n\x02".to_vec())]
        );
        let mut data = [0u8; 3];
        r.read_data_exact(&mut data).unwrap();
        assert_eq!(&data, b"abc");
        assert!(r.next_member().unwrap().is_none());
    }

    #[test]
    fn sparse_maps_parse_across_blocks() {
        let mut map = b"2\n0\n4096\n1048576\n0\n".to_vec();
        map.resize(512, 0);
        assert_eq!(
            parse_sparse_map(&map),
            Ok(Some(vec![(0, 4096), (1_048_576, 0)]))
        );
        assert_eq!(parse_sparse_map(&map[..8]), Ok(None));
        let mut bad = b"1\n0\nx\n".to_vec();
        bad.resize(512, 0);
        assert_eq!(parse_sparse_map(&bad), Err(()));
        let mut trailing = b"1\n0\n5\njunk".to_vec();
        trailing.resize(512, 0);
        assert_eq!(parse_sparse_map(&trailing), Err(()));
    }

    #[test]
    fn regions_must_be_ordered_and_add_up() {
        assert!(check_regions(&[(0, 10), (100, 5)], 200, 15, 0).is_ok());
        assert!(check_regions(&[(100, 5), (0, 10)], 200, 15, 0).is_err());
        assert!(check_regions(&[(0, 10)], 5, 10, 0).is_err());
        assert!(check_regions(&[(0, 10)], 50, 11, 0).is_err());
    }

    #[test]
    fn truncated_streams_are_errors_and_clean_ends_are_not() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_path("f").unwrap();
        h.set_size(600);
        h.set_cksum();
        b.append(&h, &[1u8; 600][..]).unwrap();
        let stream = b.into_inner().unwrap();
        let mut r = TarReader::new(&stream[..1024]);
        r.next_member().unwrap().unwrap();
        assert!(matches!(r.next_member(), Err(TarError::Truncated)));
        let mut r = TarReader::new(&stream[..1536]); // no end-of-archive block
        r.next_member().unwrap().unwrap();
        assert!(r.next_member().unwrap().is_none());
    }
}
