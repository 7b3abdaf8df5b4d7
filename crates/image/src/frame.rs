//! A tar stream framer: follows member boundaries byte by byte without extracting anything.
//!
//! Import runs every stream byte through it, for three reasons: each chunk records where the
//! member holding its first byte starts (the resume point, see `docs/image-format.md`); a
//! tarball given to `import_tar` is checked to be a complete, uncompressed tar stream the
//! extractor can take; and the kernel/initrd paths named in the metadata are checked to exist.
//!
//! A *member* here is everything one file contributes: its extension headers (pax `x`, GNU
//! `L`/`K`), its header (plus old-GNU sparse extension blocks) and its data padded to 512
//! bytes. The end-of-archive zero block starts a final member that runs to the end.

use std::collections::VecDeque;

use crate::pax::{self, BLOCK, field};

/// Largest pax or GNU long-name extension accepted; real ones are a few KiB at most.
const MAX_EXTENSION: u64 = 4 << 20;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("the stream is {0}-compressed; give the plain tar stream")]
    Compressed(&'static str),
    #[error("bad tar header checksum at stream offset {0}: not a tar stream, or corrupt")]
    Checksum(u64),
    #[error("bad size field in the tar header at stream offset {0}")]
    Size(u64),
    #[error("unsupported tar member type {typeflag:?} at stream offset {offset}")]
    Unsupported { typeflag: char, offset: u64 },
    #[error("pax global header at stream offset {0} sets {1}: only comment records are supported")]
    GlobalHeader(u64, String),
    #[error("extension header at stream offset {0} is too large or malformed")]
    Extension(u64),
    #[error("extension headers at stream offset {0} are not followed by a file member")]
    DanglingExtension(u64),
    #[error("the tar stream ends inside a member (at offset {0}) without an end-of-archive block")]
    Truncated(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a 512-byte header block.
    Header,
    /// Old-GNU sparse extension blocks follow the header.
    SparseExt,
    /// Collecting the data of an extension header, then its padding.
    Extension { kind: u8, remaining: u64, pad: u64 },
    /// Skipping a member's data and padding.
    Data { remaining: u64 },
    /// After the end-of-archive block: the rest is not parsed.
    Trailer,
}

pub(crate) struct Framer {
    pos: u64,
    state: State,
    block: [u8; 512],
    filled: usize,
    member_start: u64,
    /// Member starts not yet asked about, in order (the last one asked about stays at front).
    starts: VecDeque<u64>,
    ext: Vec<u8>,
    ext_pending: bool,
    pax_size: Option<u64>,
    pax_path: Option<Vec<u8>>,
    long_name: Option<Vec<u8>>,
    /// Data length of the current member, skipped after its header (and sparse blocks).
    data_len: u64,
    /// Extension kinds seen for the current member; each may appear once.
    ext_seen: Vec<u8>,
    watch: Vec<(Vec<u8>, bool)>,
}

impl Framer {
    /// `watch`: member paths (relative, without `./`) whose presence as non-directories the
    /// caller wants to know about; see [`Framer::found`].
    pub(crate) fn new(watch: &[&str]) -> Self {
        Framer {
            pos: 0,
            state: State::Header,
            block: [0; 512],
            filled: 0,
            member_start: 0,
            starts: VecDeque::from([0]),
            ext: Vec::new(),
            ext_pending: false,
            pax_size: None,
            pax_path: None,
            long_name: None,
            data_len: 0,
            ext_seen: Vec::new(),
            watch: watch
                .iter()
                .map(|p| (normalize(p.as_bytes()), false))
                .collect(),
        }
    }

    pub(crate) fn feed(&mut self, mut data: &[u8]) -> Result<(), FrameError> {
        while !data.is_empty() {
            match self.state {
                State::Trailer => {
                    self.pos += data.len() as u64;
                    return Ok(());
                }
                State::Header | State::SparseExt => {
                    let take = (512 - self.filled).min(data.len());
                    self.block[self.filled..self.filled + take].copy_from_slice(&data[..take]);
                    self.filled += take;
                    self.pos += take as u64;
                    data = &data[take..];
                    if self.filled == 512 {
                        self.filled = 0;
                        if self.state == State::Header {
                            self.on_header()?;
                        } else {
                            self.on_sparse_ext();
                        }
                    }
                }
                State::Extension {
                    kind,
                    remaining,
                    pad,
                } => {
                    if remaining > 0 {
                        let take = (remaining as usize).min(data.len());
                        self.ext.extend_from_slice(&data[..take]);
                        self.pos += take as u64;
                        data = &data[take..];
                        self.state = State::Extension {
                            kind,
                            remaining: remaining - take as u64,
                            pad,
                        };
                    } else {
                        let take = (pad as usize).min(data.len());
                        self.pos += take as u64;
                        data = &data[take..];
                        self.state = State::Extension {
                            kind,
                            remaining,
                            pad: pad - take as u64,
                        };
                    }
                    if let State::Extension {
                        kind,
                        remaining: 0,
                        pad: 0,
                    } = self.state
                    {
                        self.on_extension_data(kind)?;
                    }
                }
                State::Data { remaining } => {
                    let take = remaining.min(data.len() as u64);
                    self.pos += take;
                    data = &data[take as usize..];
                    self.state = State::Data {
                        remaining: remaining - take,
                    };
                    if remaining == take {
                        self.end_member();
                    }
                }
            }
        }
        Ok(())
    }

    /// Start of the member that holds stream byte `offset`. Offsets asked about must not
    /// decrease and must not lie beyond what was fed.
    pub(crate) fn member_start_at(&mut self, offset: u64) -> u64 {
        while self.starts.len() > 1 && self.starts[1] <= offset {
            self.starts.pop_front();
        }
        self.starts.front().copied().unwrap_or(0)
    }

    /// Checks that the stream ended cleanly; then whether each watched path was seen.
    pub(crate) fn finish(&self) -> Result<Vec<bool>, FrameError> {
        if self.state != State::Trailer {
            return Err(FrameError::Truncated(self.pos));
        }
        Ok(self.watch.iter().map(|(_, seen)| *seen).collect())
    }

    fn end_member(&mut self) {
        self.state = State::Header;
        self.member_start = self.pos;
        self.starts.push_back(self.pos);
    }

    fn on_header(&mut self) -> Result<(), FrameError> {
        let at = self.pos - BLOCK;
        if self.block.iter().all(|&b| b == 0) {
            if self.ext_pending {
                return Err(FrameError::DanglingExtension(self.member_start));
            }
            self.state = State::Trailer;
            return Ok(());
        }
        if let Some(kind) = compression(&self.block).filter(|_| at == 0) {
            return Err(FrameError::Compressed(kind));
        }
        if !pax::checksum_ok(&self.block) {
            return Err(FrameError::Checksum(at));
        }
        let header_size =
            pax::parse_numeric(&self.block[field::SIZE]).ok_or(FrameError::Size(at))?;
        let typeflag = self.block[field::TYPEFLAG];
        match typeflag {
            b'x' | b'g' | b'L' | b'K' => {
                let repeated = self.ext_seen.contains(&typeflag);
                if header_size > MAX_EXTENSION || repeated || (typeflag == b'g' && self.ext_pending)
                {
                    return Err(FrameError::Extension(at));
                }
                if typeflag != b'g' {
                    self.ext_seen.push(typeflag);
                }
                self.ext.clear();
                self.state = State::Extension {
                    kind: typeflag,
                    remaining: header_size,
                    pad: pax::align_up(header_size) - header_size,
                };
                if header_size == 0 {
                    self.on_extension_data(typeflag)?;
                }
                Ok(())
            }
            b'0' | 0 | b'1' | b'2' | b'3' | b'4' | b'5' | b'6' | b'7' | b'S' => {
                let size = self.pax_size.take().unwrap_or(header_size);
                let name = self
                    .pax_path
                    .take()
                    .or_else(|| self.long_name.take())
                    .unwrap_or_else(|| pax::header_name(&self.block));
                if typeflag != b'5' {
                    let name = normalize(&name);
                    for (path, seen) in &mut self.watch {
                        *seen |= *path == name;
                    }
                }
                self.ext_pending = false;
                self.data_len = pax::align_up(size);
                self.ext_seen.clear();
                if typeflag == b'S' && self.block[field::GNU_IS_EXTENDED] != 0 {
                    self.state = State::SparseExt;
                } else {
                    self.start_data();
                }
                Ok(())
            }
            other => Err(FrameError::Unsupported {
                typeflag: char::from(other),
                offset: at,
            }),
        }
    }

    fn on_sparse_ext(&mut self) {
        if self.block[field::GNU_EXT_IS_EXTENDED] == 0 {
            self.start_data();
        }
    }

    fn start_data(&mut self) {
        let remaining = self.data_len;
        if remaining == 0 {
            self.end_member();
        } else {
            self.state = State::Data { remaining };
        }
    }

    fn on_extension_data(&mut self, kind: u8) -> Result<(), FrameError> {
        let at = self.member_start;
        let ext = std::mem::take(&mut self.ext);
        match kind {
            b'x' => {
                let records = pax::parse_records(&ext).map_err(|_| FrameError::Extension(at))?;
                let mut sparse_name = None;
                for (k, v) in records {
                    match k {
                        b"size" => {
                            let s = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok());
                            self.pax_size = Some(s.ok_or(FrameError::Size(at))?);
                        }
                        b"path" => self.pax_path = Some(v.to_vec()),
                        b"GNU.sparse.name" => sparse_name = Some(v.to_vec()),
                        _ => {}
                    }
                }
                // The real name of a pax 1.0 sparse file; its header holds a stand-in.
                if let Some(n) = sparse_name {
                    self.pax_path = Some(n);
                }
                self.ext_pending = true;
                self.state = State::Header;
            }
            b'g' => {
                let records = pax::parse_records(&ext).map_err(|_| FrameError::Extension(at))?;
                if let Some((k, _)) = records.iter().find(|(k, _)| *k != b"comment") {
                    return Err(FrameError::GlobalHeader(
                        at,
                        String::from_utf8_lossy(k).into_owned(),
                    ));
                }
                // Its own member: extraction resumed after it has nothing to miss.
                self.end_member();
            }
            _ => {
                if kind == b'L' {
                    let end = ext.iter().position(|&b| b == 0).unwrap_or(ext.len());
                    self.long_name = Some(ext[..end].to_vec());
                }
                self.ext_pending = true;
                self.state = State::Header;
            }
        }
        Ok(())
    }
}

/// Member paths without leading `/`, `./` or trailing `/`, for comparisons.
pub(crate) fn normalize(p: &[u8]) -> Vec<u8> {
    let parts: Vec<&[u8]> = p
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect();
    parts.join(&b'/')
}

fn compression(block: &[u8; 512]) -> Option<&'static str> {
    if block.starts_with(&[0x1f, 0x8b]) {
        Some("gzip")
    } else if block.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some("zstd")
    } else if block.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Some("xz")
    } else if block.starts_with(b"BZh") {
        Some("bzip2")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_ustar();
        h.set_path(path).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    /// Member starts found by reading the stream with the tar crate, for comparison.
    fn starts_by_tar_crate(stream: &[u8]) -> Vec<u64> {
        let mut ar = tar::Archive::new(stream);
        let mut out = vec![];
        let mut next = 0u64;
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            out.push(next);
            next = pax::align_up(e.raw_file_position() + e.header().entry_size().unwrap());
        }
        out.push(next);
        out
    }

    fn sample_stream() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        entry(&mut b, "a", b"hello");
        b.append_pax_extensions([("path", &b"very/long/name"[..]), ("mtime", b"1.5")])
            .unwrap();
        entry(&mut b, "stand-in", &[7u8; 1500]);
        entry(&mut b, "empty", b"");
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        b.append_data(&mut h, "x/".repeat(80), &[][..]).unwrap(); // GNU long name
        entry(&mut b, "boot/vmlinuz", &[1u8; 513]);
        b.into_inner().unwrap()
    }

    #[test]
    fn finds_member_starts_fed_in_any_pieces() {
        let stream = sample_stream();
        let expected = starts_by_tar_crate(&stream);
        for piece in [1usize, 7, 512, 100_000] {
            let mut f = Framer::new(&["boot/vmlinuz", "very/long/name", "nope"]);
            for p in stream.chunks(piece) {
                f.feed(p).unwrap();
            }
            assert_eq!(f.finish().unwrap(), vec![true, true, false]);
            for (i, w) in expected.windows(2).enumerate() {
                assert_eq!(f.member_start_at(w[0]), w[0], "member {i}");
                assert_eq!(f.member_start_at(w[1] - 1), w[0], "member {i} last byte");
            }
            let trailer = *expected.last().unwrap();
            assert_eq!(f.member_start_at(stream.len() as u64 - 1), trailer);
        }
    }

    #[test]
    fn refuses_truncated_compressed_and_corrupt_streams() {
        let stream = sample_stream();
        let mut f = Framer::new(&[]);
        f.feed(&stream[..1000]).unwrap();
        assert!(matches!(f.finish(), Err(FrameError::Truncated(1000))));

        let mut f = Framer::new(&[]);
        let mut gz = vec![0x1f, 0x8b, 8, 0];
        gz.resize(512, 0);
        assert_eq!(f.feed(&gz), Err(FrameError::Compressed("gzip")));

        let mut bad = stream.clone();
        bad[512 * 2 + 10] ^= 0x40; // a name byte of the pax header, the third block
        let mut f = Framer::new(&[]);
        assert!(matches!(f.feed(&bad), Err(FrameError::Checksum(_))));
    }

    #[test]
    fn global_headers_only_with_comments() {
        let mut data = Vec::new();
        pax::push_record(&mut data, b"comment", b"made by git");
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XGlobalHeader);
        h.set_size(data.len() as u64);
        h.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, &data[..]).unwrap();
        entry(&mut b, "a", b"x");
        let ok = b.into_inner().unwrap();
        let mut f = Framer::new(&[]);
        f.feed(&ok).unwrap();
        f.finish().unwrap();

        let mut data = Vec::new();
        pax::push_record(&mut data, b"uid", b"5");
        h.set_size(data.len() as u64);
        h.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, &data[..]).unwrap();
        let bad = b.into_inner().unwrap();
        let mut f = Framer::new(&[]);
        assert!(matches!(f.feed(&bad), Err(FrameError::GlobalHeader(0, k)) if k == "uid"));
    }

    #[test]
    fn unsupported_types_are_named() {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::new(b'V'));
        h.set_size(0);
        h.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, &[][..]).unwrap();
        let mut f = Framer::new(&[]);
        assert_eq!(
            f.feed(&b.into_inner().unwrap()),
            Err(FrameError::Unsupported {
                typeflag: 'V',
                offset: 0
            })
        );
    }

    #[test]
    fn normalizes_member_paths() {
        assert_eq!(normalize(b"./boot//vmlinuz"), b"boot/vmlinuz");
        assert_eq!(normalize(b"/etc/"), b"etc");
        assert_eq!(normalize(b"./"), b"");
    }
}
