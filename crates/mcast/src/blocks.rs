//! How a payload is cut: block geometry, symbol coding, and the trusted block list whose
//! BLAKE3 is the session's manifest hash.

use std::fmt::Write as _;
use std::io::{self, Read};

use reed_solomon_simd::ReedSolomonEncoder;

/// A BLAKE3 hash.
pub type Hash = [u8; 32];

/// First bytes of the canonical block-list encoding.
const LIST_MAGIC: &[u8; 8] = b"MCBLIST1";
/// First line of the block-list text file.
const TEXT_HEADER: &str = "metalcast-mcast block-list 1";

/// Default block size: 1 MiB, the unit of verification.
pub const DEFAULT_BLOCK_SIZE: u32 = 1 << 20;
/// Default symbol size: a data packet of exactly 1472 bytes, all a 1500-byte MTU leaves for
/// UDP over IPv4.
pub const DEFAULT_SYMBOL_SIZE: u16 = 1404;

/// Why a layout or block list is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("block size must be at least one symbol")]
    BlockSize,
    #[error("symbol size {0} must be even and at least 2")]
    SymbolSize(u16),
    #[error("{0} blocks are more than a block index can name")]
    TooManyBlocks(u64),
    #[error(
        "{source_symbols} source + {repair} repair symbols per block are not supported by the coder"
    )]
    Coding {
        source_symbols: usize,
        repair: usize,
    },
}

/// Why a block-list file does not parse.
#[derive(Debug, thiserror::Error)]
pub enum BlockListError {
    #[error("line {line}: {what}")]
    Syntax { line: usize, what: &'static str },
    #[error("{found} block hashes for a payload of {expected} blocks")]
    Count { expected: u64, found: usize },
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("reading the payload")]
    Io(#[from] io::Error),
}

/// Payload length and block size: where every block starts and ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    length: u64,
    block_size: u32,
    block_count: u32,
}

impl Geometry {
    pub fn new(length: u64, block_size: u32) -> Result<Geometry, LayoutError> {
        if block_size == 0 {
            return Err(LayoutError::BlockSize);
        }
        let count = length.div_ceil(u64::from(block_size));
        let block_count = u32::try_from(count).map_err(|_| LayoutError::TooManyBlocks(count))?;
        Ok(Geometry {
            length,
            block_size,
            block_count,
        })
    }

    pub fn length(&self) -> u64 {
        self.length
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    pub fn block_count(&self) -> u32 {
        self.block_count
    }

    /// Byte offset of block `index` in the payload.
    pub fn block_offset(&self, index: u32) -> u64 {
        u64::from(index) * u64::from(self.block_size)
    }

    /// Length of block `index` (the last one may be short); 0 past the end.
    pub fn block_len(&self, index: u32) -> usize {
        let start = self.block_offset(index);
        let len = self
            .length
            .saturating_sub(start)
            .min(u64::from(self.block_size));
        // At most `block_size`, which is a u32.
        len as usize
    }
}

/// The geometry plus how each block is coded into symbols.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    geometry: Geometry,
    symbol_size: u16,
    repair_count: u16,
}

impl Layout {
    /// Checks that every block, the short last one included, can be coded with
    /// `repair_count` repair symbols of `symbol_size` bytes.
    pub fn new(
        geometry: Geometry,
        symbol_size: u16,
        repair_count: u16,
    ) -> Result<Layout, LayoutError> {
        if symbol_size < 2 || !symbol_size.is_multiple_of(2) {
            return Err(LayoutError::SymbolSize(symbol_size));
        }
        if geometry.block_size < u32::from(symbol_size) {
            return Err(LayoutError::BlockSize);
        }
        let layout = Layout {
            geometry,
            symbol_size,
            repair_count,
        };
        let full = layout.symbols_for(geometry.block_size as usize);
        let last = match geometry.block_count {
            0 => full,
            n => layout.source_symbols(n - 1),
        };
        for k in [full, last] {
            let supported = k + usize::from(repair_count) <= usize::from(u16::MAX)
                && ReedSolomonEncoder::supports(k, usize::from(repair_count));
            if !supported {
                return Err(LayoutError::Coding {
                    source_symbols: k,
                    repair: usize::from(repair_count),
                });
            }
        }
        Ok(layout)
    }

    /// The default coding for a geometry: 1404-byte symbols and R = the largest power of two
    /// up to K/2 (256 for 1 MiB blocks). A power of two keeps the decoder's transform small:
    /// decoding a 1 MiB block measured ~1 ms at R = 256 against ~2 ms at R = K.
    pub fn with_defaults(geometry: Geometry) -> Result<Layout, LayoutError> {
        let symbol = DEFAULT_SYMBOL_SIZE.min(even_floor(geometry.block_size));
        let k = (geometry.block_size as usize).div_ceil(usize::from(symbol.max(2)));
        Layout::new(geometry, symbol, default_repair(k))
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    pub fn symbol_size(&self) -> u16 {
        self.symbol_size
    }

    pub fn repair_count(&self) -> u16 {
        self.repair_count
    }

    fn symbols_for(&self, bytes: usize) -> usize {
        bytes.div_ceil(usize::from(self.symbol_size))
    }

    /// K: the source symbols of block `index`.
    pub fn source_symbols(&self, index: u32) -> usize {
        self.symbols_for(self.geometry.block_len(index))
    }

    /// K + R: every symbol index block `index` has.
    pub fn total_symbols(&self, index: u32) -> usize {
        self.source_symbols(index) + usize::from(self.repair_count)
    }
}

/// R for K source symbols: the largest power of two up to K/2, at least 2.
pub fn default_repair(k: usize) -> u16 {
    let half = (k / 2).max(2);
    let pow2 = 1usize << (usize::BITS - 1 - half.leading_zeros());
    u16::try_from(pow2).unwrap_or(1 << 15)
}

/// Largest even number ≤ `n`, capped to u16.
fn even_floor(n: u32) -> u16 {
    let n = u16::try_from(n).unwrap_or(u16::MAX);
    n & !1
}

/// The trusted description of a payload: its geometry and the BLAKE3 of every block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockList {
    geometry: Geometry,
    hashes: Vec<Hash>,
    manifest: Hash,
}

impl BlockList {
    pub fn new(geometry: Geometry, hashes: Vec<Hash>) -> Result<BlockList, BlockListError> {
        if hashes.len() as u64 != u64::from(geometry.block_count) {
            return Err(BlockListError::Count {
                expected: u64::from(geometry.block_count),
                found: hashes.len(),
            });
        }
        let manifest = *blake3::hash(&canonical(&geometry, &hashes)).as_bytes();
        Ok(BlockList {
            geometry,
            hashes,
            manifest,
        })
    }

    /// Hashes an in-memory payload.
    pub fn from_bytes(payload: &[u8], block_size: u32) -> Result<BlockList, BlockListError> {
        let geometry = Geometry::new(payload.len() as u64, block_size)?;
        let hashes = payload
            .chunks(block_size as usize)
            .map(|b| *blake3::hash(b).as_bytes())
            .collect();
        BlockList::new(geometry, hashes)
    }

    /// Hashes a payload read to its end (e.g. a file).
    pub fn from_reader(
        mut reader: impl Read,
        block_size: u32,
    ) -> Result<BlockList, BlockListError> {
        Geometry::new(0, block_size)?;
        let mut buf = vec![0u8; block_size as usize];
        let mut hashes = Vec::new();
        let mut length = 0u64;
        loop {
            let n = read_full(&mut reader, &mut buf)?;
            if n == 0 {
                break;
            }
            hashes.push(*blake3::hash(&buf[..n]).as_bytes());
            length += n as u64;
            if n < buf.len() {
                break;
            }
        }
        BlockList::new(Geometry::new(length, block_size)?, hashes)
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    pub fn hashes(&self) -> &[Hash] {
        &self.hashes
    }

    /// BLAKE3 of the canonical encoding: what every packet of the session carries.
    pub fn manifest_hash(&self) -> &Hash {
        &self.manifest
    }

    /// The canonical encoding (see docs/multicast.md).
    pub fn canonical(&self) -> Vec<u8> {
        canonical(&self.geometry, &self.hashes)
    }

    /// True if `data` is exactly block `index`.
    pub fn verify(&self, index: u32, data: &[u8]) -> bool {
        self.hashes
            .get(index as usize)
            .is_some_and(|h| blake3::hash(data) == blake3::Hash::from_bytes(*h))
    }

    /// The text form: a header line, length, block size, one hex hash per line.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "{TEXT_HEADER}\nlength {}\nblock-size {}\n",
            self.geometry.length, self.geometry.block_size
        );
        for h in &self.hashes {
            for b in h {
                let _ = write!(out, "{b:02x}");
            }
            out.push('\n');
        }
        out
    }

    pub fn parse_text(text: &str) -> Result<BlockList, BlockListError> {
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim()));
        let syntax = |line, what| BlockListError::Syntax { line, what };
        match lines.next() {
            Some((_, TEXT_HEADER)) => {}
            Some((line, _)) => return Err(syntax(line, "not a metalcast-mcast block list")),
            None => return Err(syntax(1, "empty file")),
        }
        let end = text.lines().count() + 1;
        let mut field = |name: &str, what| -> Result<u64, BlockListError> {
            let (line, text) = lines.next().ok_or(syntax(end, what))?;
            text.strip_prefix(name)
                .and_then(|v| v.strip_prefix(' '))
                .and_then(|v| v.parse().ok())
                .ok_or(syntax(line, what))
        };
        let length = field("length", "expected `length BYTES`")?;
        let block_size = field("block-size", "expected `block-size BYTES`")?;
        let block_size =
            u32::try_from(block_size).map_err(|_| syntax(3, "block size is too large"))?;
        let geometry = Geometry::new(length, block_size)?;
        let mut hashes = Vec::with_capacity(geometry.block_count as usize);
        for (line, text) in lines {
            if text.is_empty() {
                continue;
            }
            hashes.push(parse_hex(text).ok_or(syntax(line, "expected 64 hex digits"))?);
        }
        BlockList::new(geometry, hashes)
    }
}

fn canonical(geometry: &Geometry, hashes: &[Hash]) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + 32 * hashes.len());
    out.extend_from_slice(LIST_MAGIC);
    out.extend_from_slice(&geometry.length.to_be_bytes());
    out.extend_from_slice(&geometry.block_size.to_be_bytes());
    out.extend_from_slice(&geometry.block_count.to_be_bytes());
    for h in hashes {
        out.extend_from_slice(h);
    }
    out
}

fn parse_hex(text: &str) -> Option<Hash> {
    let bytes = text.as_bytes();
    // `from_str_radix` would take a leading '+'.
    if bytes.len() != 64 || !bytes.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let digits = std::str::from_utf8(pair).ok()?;
        *o = u8::from_str_radix(digits, 16).ok()?;
    }
    Some(out)
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_cuts_a_short_last_block() {
        let g = Geometry::new(2500, 1000).unwrap();
        assert_eq!(g.block_count(), 3);
        assert_eq!(
            (g.block_len(0), g.block_len(2), g.block_len(3)),
            (1000, 500, 0)
        );
        assert_eq!(g.block_offset(2), 2000);
        assert_eq!(Geometry::new(0, 1000).unwrap().block_count(), 0);
        assert_eq!(Geometry::new(1, 0), Err(LayoutError::BlockSize));
    }

    #[test]
    fn default_layout_is_747_plus_256_for_a_mebibyte() {
        let g = Geometry::new(3 << 20, DEFAULT_BLOCK_SIZE).unwrap();
        let l = Layout::with_defaults(g).unwrap();
        assert_eq!((l.symbol_size(), l.source_symbols(0)), (1404, 747));
        assert_eq!(l.total_symbols(2), 1003);
        assert_eq!(
            (default_repair(3), default_repair(511), default_repair(512)),
            (2, 128, 256)
        );
    }

    #[test]
    fn layout_refuses_odd_symbols_and_unsupported_counts() {
        let g = Geometry::new(10_000, 1000).unwrap();
        assert_eq!(Layout::new(g, 101, 4), Err(LayoutError::SymbolSize(101)));
        assert_eq!(Layout::new(g, 2000, 4), Err(LayoutError::BlockSize));
        let big = Geometry::new(1 << 30, 1 << 30).unwrap();
        assert!(matches!(
            Layout::new(big, 2, 10),
            Err(LayoutError::Coding { .. })
        ));
        assert!(Layout::new(g, 100, 10).is_ok());
    }

    #[test]
    fn text_form_round_trips_and_binds_the_geometry() {
        let payload: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let list = BlockList::from_bytes(&payload, 1024).unwrap();
        let again = BlockList::parse_text(&list.to_text()).unwrap();
        assert_eq!(list, again);
        assert!(list.verify(4, &payload[4096..]));
        assert!(!list.verify(4, &payload[4095..]));
        assert!(!list.verify(5, &[]));
        let streamed = BlockList::from_reader(&payload[..], 1024).unwrap();
        assert_eq!(streamed, list);
        // Same hashes, different claimed length: a different manifest.
        let other = BlockList::new(Geometry::new(4999, 1024).unwrap(), list.hashes().to_vec());
        assert_ne!(other.unwrap().manifest_hash(), list.manifest_hash());
    }

    #[test]
    fn text_form_errors_name_the_line() {
        let err = |t: &str| BlockList::parse_text(t).unwrap_err().to_string();
        assert_eq!(err(""), "line 1: empty file");
        assert_eq!(err("hello\n"), "line 1: not a metalcast-mcast block list");
        assert_eq!(
            err("metalcast-mcast block-list 1\nlength x\n"),
            "line 2: expected `length BYTES`"
        );
        let text = format!(
            "metalcast-mcast block-list 1\nlength 10\nblock-size 8\n{}\nzz\n",
            "00".repeat(32)
        );
        assert_eq!(err(&text), "line 5: expected 64 hex digits");
        let text = format!(
            "metalcast-mcast block-list 1\nlength 10\nblock-size 8\n{}\n",
            "+a".repeat(32)
        );
        assert_eq!(err(&text), "line 4: expected 64 hex digits");
        let text = format!(
            "metalcast-mcast block-list 1\nlength 10\nblock-size 8\n{}\n",
            "00".repeat(32)
        );
        assert_eq!(err(&text), "1 block hashes for a payload of 2 blocks");
    }
}
