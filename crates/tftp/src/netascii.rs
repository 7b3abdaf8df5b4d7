//! netascii mode (RFC 1350, RFC 764): a file served as text, LF sent as CR LF and a bare CR as
//! CR NUL. The translated stream is longer than the file, so positions differ; a scan at open time
//! measures the translated size (needed for tsize) and records checkpoints, so any block can be
//! produced by reading from the nearest checkpoint rather than from the start.

use std::io;

use crate::transfer::BlockSource;

/// Translated bytes between checkpoints. Reading a block rereads at most this much extra.
const CHECKPOINT_SPACING: u64 = 4096;
/// Raw bytes read per call while scanning or translating.
const RAW_CHUNK: usize = 16 * 1024;

/// Where the translated stream at a multiple of the spacing begins.
#[derive(Debug, Clone, Copy)]
struct Checkpoint {
    /// Raw offset of the first source byte not yet emitted.
    raw: u64,
    /// Second half of a CR LF / CR NUL pair that straddles the checkpoint, emitted first.
    pending: Option<u8>,
}

/// A [`BlockSource`] that serves `inner` translated to netascii.
pub struct Netascii<S> {
    inner: S,
    len: u64,
    spacing: u64,
    checkpoints: Vec<Checkpoint>,
    raw: Vec<u8>,
}

/// The translation of one source byte: one or two bytes.
fn translate(byte: u8) -> (u8, Option<u8>) {
    match byte {
        b'\n' => (b'\r', Some(b'\n')),
        b'\r' => (b'\r', Some(0)),
        other => (other, None),
    }
}

impl<S: BlockSource> Netascii<S> {
    /// Scans `inner` once (reads the whole source).
    pub fn new(inner: S) -> io::Result<Self> {
        Self::with_spacing(inner, CHECKPOINT_SPACING)
    }

    fn with_spacing(mut inner: S, spacing: u64) -> io::Result<Self> {
        let mut raw = vec![0; RAW_CHUNK];
        let mut checkpoints = Vec::new();
        let mut out = 0u64;
        let mut next_checkpoint = 0u64;
        let mut offset = 0u64;
        loop {
            let n = inner.read_at(offset, &mut raw)?;
            for (i, &byte) in raw[..n].iter().enumerate() {
                let at = offset + i as u64;
                if out == next_checkpoint {
                    checkpoints.push(Checkpoint {
                        raw: at,
                        pending: None,
                    });
                    next_checkpoint += spacing;
                }
                match translate(byte).1 {
                    Some(second) => {
                        if out + 1 == next_checkpoint {
                            checkpoints.push(Checkpoint {
                                raw: at + 1,
                                pending: Some(second),
                            });
                            next_checkpoint += spacing;
                        }
                        out += 2;
                    }
                    None => out += 1,
                }
            }
            offset += n as u64;
            if n < raw.len() {
                break;
            }
        }
        Ok(Self {
            inner,
            len: out,
            spacing,
            checkpoints,
            raw,
        })
    }

    /// Size of the translated stream, which is what tsize reports.
    pub fn translated_len(&self) -> u64 {
        self.len
    }
}

impl<S: BlockSource> BlockSource for Netascii<S> {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let index = usize::try_from(offset / self.spacing).unwrap_or(usize::MAX);
        let Some(&checkpoint) = self.checkpoints.get(index) else {
            // Unreachable while the source is unchanged since the scan; a changed file ends here.
            return Ok(0);
        };
        let mut out = Output {
            skip: offset - index as u64 * self.spacing,
            buf,
            filled: 0,
        };
        if let Some(byte) = checkpoint.pending {
            out.push(byte);
        }
        let mut raw_offset = checkpoint.raw;
        while !out.is_full() {
            let n = self.inner.read_at(raw_offset, &mut self.raw)?;
            for &byte in &self.raw[..n] {
                let (first, second) = translate(byte);
                out.push(first);
                if let Some(second) = second {
                    out.push(second);
                }
                if out.is_full() {
                    break;
                }
            }
            if n < self.raw.len() {
                break;
            }
            raw_offset += n as u64;
        }
        Ok(out.filled)
    }
}

/// Translated bytes going into the caller's buffer after skipping up to the requested offset.
struct Output<'a> {
    skip: u64,
    buf: &'a mut [u8],
    filled: usize,
}

impl Output<'_> {
    fn push(&mut self, byte: u8) {
        if self.skip > 0 {
            self.skip -= 1;
        } else if let Some(slot) = self.buf.get_mut(self.filled) {
            *slot = byte;
            self.filled += 1;
        }
    }

    fn is_full(&self) -> bool {
        self.filled == self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{MemSource, pseudo_random};

    fn naive(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for &b in data {
            let (first, second) = translate(b);
            out.push(first);
            out.extend(second);
        }
        out
    }

    /// Text-like data: lots of CR and LF, some CR LF already.
    fn texty(len: usize, seed: u64) -> Vec<u8> {
        pseudo_random(len, seed)
            .into_iter()
            .map(|b| match b % 8 {
                0 => b'\n',
                1 => b'\r',
                _ => b'a' + b % 26,
            })
            .collect()
    }

    #[test]
    fn translates_line_ends() {
        let mut n = Netascii::new(MemSource::new(b"a\nb\r\nc\rd".to_vec())).expect("scan");
        assert_eq!(n.translated_len(), 12);
        let mut buf = [0; 32];
        let got = n.read_at(0, &mut buf).expect("read");
        assert_eq!(&buf[..got], b"a\r\nb\r\0\r\nc\r\0d");
    }

    #[test]
    fn empty_file() {
        let mut n = Netascii::new(MemSource::new(Vec::new())).expect("scan");
        assert_eq!(n.translated_len(), 0);
        assert_eq!(n.read_at(0, &mut [0; 8]).expect("read"), 0);
    }

    #[test]
    fn every_offset_and_length_matches_the_naive_translation() {
        // Small spacings put checkpoints everywhere, including between the halves of a pair.
        for (spacing, seed) in [(1, 3), (2, 5), (3, 7), (7, 11), (64, 13)] {
            let data = texty(300, seed);
            let expected = naive(&data);
            let mut n =
                Netascii::with_spacing(MemSource::new(data.clone()), spacing).expect("scan");
            assert_eq!(n.translated_len(), expected.len() as u64);
            for offset in 0..=expected.len() {
                for len in [1, 2, 5, 8, 512] {
                    let mut buf = vec![0; len];
                    let got = n.read_at(offset as u64, &mut buf).expect("read");
                    let want = &expected[offset..(offset + len).min(expected.len())];
                    assert_eq!(
                        &buf[..got],
                        want,
                        "spacing {spacing} offset {offset} len {len}"
                    );
                }
            }
        }
    }

    #[test]
    fn large_source_spanning_raw_chunks() {
        let data = texty(3 * RAW_CHUNK + 17, 21);
        let expected = naive(&data);
        let mut n = Netascii::new(MemSource::new(data)).expect("scan");
        assert_eq!(n.translated_len(), expected.len() as u64);
        let mut got = Vec::new();
        let mut buf = vec![0; 1468];
        loop {
            let len = n.read_at(got.len() as u64, &mut buf).expect("read");
            got.extend_from_slice(&buf[..len]);
            if len < buf.len() {
                break;
            }
        }
        assert_eq!(got, expected);
    }

    #[test]
    fn read_errors_propagate() {
        let mut source = MemSource::new(vec![b'x'; 100]);
        source.fail_from = Some(0);
        assert!(Netascii::new(source).is_err());
    }
}
