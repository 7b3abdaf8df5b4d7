//! Content-defined chunking of a byte stream (FastCDC 2020, normalization level 1).
//!
//! [`Chunker`] is push-based so a tar writer can feed it directly. It only cuts once it holds
//! `max_size` bytes (or at the end), so the cut points depend on the data alone and never on
//! how the data was split into writes: the same stream always gives the same chunks.

use fastcdc::v2020::{self, FastCDC};
use metalcast_proto::image::Chunking;

/// The chunk sizes of the format's default: ~64 KiB average, 16 KiB minimum, 256 KiB maximum.
///
/// An edited file costs about one chunk, so new bytes per version ≈ files edited × average
/// chunk size. Measured (tests/dedup.rs): with 1% of a tree's files edited, ~1 MiB chunks stored
/// 11–29% of the stream again, ~64 KiB chunks 0.9–3.1%. The price is ~16k chunks per GiB.
pub const DEFAULT_CHUNKING: Chunking = Chunking {
    min_size: 16 * 1024,
    avg_size: 64 * 1024,
    max_size: 256 * 1024,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid chunk sizes min {min} avg {avg} max {max}: need min <= avg <= max with \
     min in 64..=1 MiB, avg in 256..=4 MiB, max in 1 KiB..=16 MiB"
)]
pub struct ChunkingError {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

/// Checks chunk sizes against what FastCDC 2020 accepts (it panics outside these ranges).
pub fn validate_chunking(c: &Chunking) -> Result<(), ChunkingError> {
    let ok = (v2020::MINIMUM_MIN..=v2020::MINIMUM_MAX).contains(&c.min_size)
        && (v2020::AVERAGE_MIN..=v2020::AVERAGE_MAX).contains(&c.avg_size)
        && (v2020::MAXIMUM_MIN..=v2020::MAXIMUM_MAX).contains(&c.max_size)
        && c.min_size <= c.avg_size
        && c.avg_size <= c.max_size;
    if ok {
        Ok(())
    } else {
        Err(ChunkingError {
            min: c.min_size,
            avg: c.avg_size,
            max: c.max_size,
        })
    }
}

/// Cuts a stream pushed in arbitrary pieces into content-defined chunks.
pub(crate) struct Chunker {
    params: Chunking,
    buf: Vec<u8>,
    /// Start of the unemitted data in `buf`; compacted lazily to avoid a memmove per chunk.
    start: usize,
    /// Stream offset of `buf[start]`.
    offset: u64,
}

impl Chunker {
    pub(crate) fn new(params: Chunking) -> Result<Self, ChunkingError> {
        validate_chunking(&params)?;
        Ok(Chunker {
            params,
            buf: Vec::with_capacity(2 * params.max_size as usize),
            start: 0,
            offset: 0,
        })
    }

    /// Appends `data`; calls `emit(offset, chunk)` for every chunk that is now final.
    pub(crate) fn push<E>(
        &mut self,
        mut data: &[u8],
        emit: &mut impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let max = self.params.max_size as usize;
        while !data.is_empty() {
            if self.start >= max {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let room = (2 * max).saturating_sub(self.buf.len()).max(1);
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            while self.buf.len() - self.start >= max {
                self.cut_one(emit)?;
            }
        }
        Ok(())
    }

    /// Emits whatever is left as the final chunk(s).
    pub(crate) fn finish<E>(
        mut self,
        emit: &mut impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<u64, E> {
        while self.buf.len() > self.start {
            self.cut_one(emit)?;
        }
        Ok(self.offset)
    }

    fn cut_one<E>(&mut self, emit: &mut impl FnMut(u64, &[u8]) -> Result<(), E>) -> Result<(), E> {
        let pending = &self.buf[self.start..];
        let cdc = FastCDC::new(
            pending,
            self.params.min_size,
            self.params.avg_size,
            self.params.max_size,
        );
        let (_, end) = cdc.cut(0, pending.len());
        emit(self.offset, &pending[..end])?;
        self.start += end;
        self.offset += end as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use proptest::prelude::*;

    use super::*;

    const SMALL: Chunking = Chunking {
        min_size: 1024,
        avg_size: 4096,
        max_size: 16384,
    };

    /// Deterministic pseudo-random bytes (xorshift), so tests need no RNG crate.
    pub(crate) fn noise(seed: u64, len: usize) -> Vec<u8> {
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

    fn chunks_of(data: &[u8], pieces: usize, params: Chunking) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        let mut emit = |off: u64, c: &[u8]| -> Result<(), Infallible> {
            out.push((off, c.to_vec()));
            Ok(())
        };
        let mut ch = Chunker::new(params).unwrap();
        let step = data.len().div_ceil(pieces.max(1)).max(1);
        for piece in data.chunks(step) {
            ch.push(piece, &mut emit).unwrap();
        }
        let total = ch.finish(&mut emit).unwrap();
        assert_eq!(total, data.len() as u64);
        out
    }

    #[test]
    fn chunks_cover_the_stream_within_size_limits() {
        let data = noise(1, 300_000);
        let chunks = chunks_of(&data, 7, SMALL);
        let mut pos = 0u64;
        for (i, (off, c)) in chunks.iter().enumerate() {
            assert_eq!(*off, pos);
            assert!(c.len() <= SMALL.max_size as usize);
            if i + 1 < chunks.len() {
                assert!(c.len() >= SMALL.min_size as usize);
            }
            pos += c.len() as u64;
        }
        assert_eq!(chunks.concat_bytes(), data);
        assert!(chunks.len() > 30, "{} chunks", chunks.len());
    }

    trait Concat {
        fn concat_bytes(&self) -> Vec<u8>;
    }
    impl Concat for Vec<(u64, Vec<u8>)> {
        fn concat_bytes(&self) -> Vec<u8> {
            self.iter().flat_map(|(_, c)| c.iter().copied()).collect()
        }
    }

    #[test]
    fn matches_fastcdc_over_the_whole_buffer() {
        let data = noise(2, 200_000);
        let ours: Vec<usize> = chunks_of(&data, 13, SMALL)
            .iter()
            .map(|(_, c)| c.len())
            .collect();
        let reference: Vec<usize> = FastCDC::new(&data, 1024, 4096, 16384)
            .map(|c| c.length)
            .collect();
        assert_eq!(ours, reference);
    }

    #[test]
    fn insertion_at_the_front_changes_only_the_first_chunks() {
        let data = noise(3, 400_000);
        let before = chunks_of(&data, 1, SMALL);
        let mut edited = b"a few inserted bytes".to_vec();
        edited.extend_from_slice(&data);
        let after = chunks_of(&edited, 1, SMALL);
        let old: std::collections::HashSet<&Vec<u8>> = before.iter().map(|(_, c)| c).collect();
        let changed = after.iter().filter(|(_, c)| !old.contains(c)).count();
        assert!(changed <= 2, "{changed} of {} chunks changed", after.len());
        assert!(!old.contains(&after[0].1));
    }

    #[test]
    fn empty_stream_has_no_chunks() {
        assert!(chunks_of(&[], 1, SMALL).is_empty());
    }

    #[test]
    fn rejects_sizes_fastcdc_cannot_take() {
        for bad in [
            Chunking {
                min_size: 8,
                ..SMALL
            },
            Chunking {
                min_size: 8192,
                ..SMALL
            },
            Chunking {
                max_size: 32 << 20,
                ..SMALL
            },
        ] {
            assert!(Chunker::new(bad).is_err(), "{bad:?}");
        }
        assert!(validate_chunking(&DEFAULT_CHUNKING).is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn same_input_same_chunks_whatever_the_write_sizes(
            seed in any::<u64>(), len in 0usize..120_000, pieces in 1usize..50,
        ) {
            let data = noise(seed, len);
            let a = chunks_of(&data, 1, SMALL);
            let b = chunks_of(&data, pieces, SMALL);
            prop_assert_eq!(a, b);
        }
    }
}
