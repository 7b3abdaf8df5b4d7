//! Reed-Solomon coding of one block into symbols (`reed-solomon-simd`), and back from any K
//! distinct symbols.
//!
//! Symbol `i < K` is bytes `i·S .. (i+1)·S` of the block (the last one zero-padded); symbol
//! `K + j` is repair symbol `j` of the code with K originals and R recovery shards.

use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

#[derive(Debug, thiserror::Error)]
#[error("erasure coding")]
pub struct FecError(#[from] reed_solomon_simd::Error);

/// A block cut into its K source symbols and coded into R repair symbols.
pub struct EncodedBlock {
    k: usize,
    symbol_size: usize,
    source: Vec<u8>,
    repair: Vec<u8>,
}

impl EncodedBlock {
    /// Symbol `index` (source or repair), or `None` past K + R.
    pub fn symbol(&self, index: usize) -> Option<&[u8]> {
        let s = self.symbol_size;
        if index < self.k {
            self.source.get(index * s..(index + 1) * s)
        } else {
            let j = index - self.k;
            self.repair.get(j * s..(j + 1) * s)
        }
    }

    pub fn source_symbols(&self) -> usize {
        self.k
    }
}

/// Reuses one encoder's working memory across blocks.
#[derive(Default)]
pub struct Encoder {
    inner: Option<ReedSolomonEncoder>,
}

impl Encoder {
    pub fn encode(
        &mut self,
        block: &[u8],
        symbol_size: usize,
        repair: usize,
    ) -> Result<EncodedBlock, FecError> {
        let k = block.len().div_ceil(symbol_size).max(1);
        let mut source = block.to_vec();
        source.resize(k * symbol_size, 0);
        let enc = match self.inner.take() {
            Some(mut enc) => {
                enc.reset(k, repair, symbol_size)?;
                enc
            }
            None => ReedSolomonEncoder::new(k, repair, symbol_size)?,
        };
        let enc = self.inner.insert(enc);
        for shard in source.chunks_exact(symbol_size) {
            enc.add_original_shard(shard)?;
        }
        let result = enc.encode()?;
        let mut out = Vec::with_capacity(repair * symbol_size);
        for shard in result.recovery_iter() {
            out.extend_from_slice(shard);
        }
        Ok(EncodedBlock {
            k,
            symbol_size,
            source,
            repair: out,
        })
    }
}

/// What [`SymbolSet::insert`] did with a symbol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inserted {
    New,
    Duplicate,
    /// Index past K + R or a payload of the wrong size.
    Invalid,
}

/// The symbols collected so far for one block.
pub struct SymbolSet {
    k: usize,
    repair_count: usize,
    symbol_size: usize,
    /// Source symbols land in place, so a block received without loss needs no decoding.
    source: Vec<u8>,
    have: Vec<u64>,
    distinct: usize,
    repair_index: Vec<u16>,
    repair: Vec<u8>,
}

impl SymbolSet {
    pub fn new(k: usize, repair_count: usize, symbol_size: usize) -> SymbolSet {
        SymbolSet {
            k,
            repair_count,
            symbol_size,
            source: vec![0; k * symbol_size],
            have: vec![0; (k + repair_count).div_ceil(64)],
            distinct: 0,
            repair_index: Vec::new(),
            repair: Vec::new(),
        }
    }

    pub fn insert(&mut self, index: usize, payload: &[u8]) -> Inserted {
        if index >= self.k + self.repair_count || payload.len() != self.symbol_size {
            return Inserted::Invalid;
        }
        let (word, bit) = (index / 64, 1u64 << (index % 64));
        if self.have[word] & bit != 0 {
            return Inserted::Duplicate;
        }
        // Past K symbols nothing more is needed; `is_complete` is already true.
        if self.distinct >= self.k {
            return Inserted::Duplicate;
        }
        self.have[word] |= bit;
        self.distinct += 1;
        let s = self.symbol_size;
        if index < self.k {
            self.source[index * s..(index + 1) * s].copy_from_slice(payload);
        } else {
            self.repair_index.push((index - self.k) as u16);
            self.repair.extend_from_slice(payload);
        }
        Inserted::New
    }

    /// Distinct symbols held.
    pub fn len(&self) -> usize {
        self.distinct
    }

    pub fn is_empty(&self) -> bool {
        self.distinct == 0
    }

    /// Symbols still needed before the block can be rebuilt.
    pub fn needed(&self) -> usize {
        self.k.saturating_sub(self.distinct)
    }

    pub fn is_complete(&self) -> bool {
        self.distinct >= self.k
    }

    fn has(&self, index: usize) -> bool {
        self.have[index / 64] & (1 << (index % 64)) != 0
    }

    /// Rebuilds the block (`block_len` bytes) once [`Self::is_complete`].
    pub fn rebuild(mut self, decoder: &mut Decoder, block_len: usize) -> Result<Vec<u8>, FecError> {
        let missing = (0..self.k).any(|i| !self.has(i));
        if missing {
            let s = self.symbol_size;
            let dec = decoder.reset(self.k, self.repair_count, s)?;
            for i in (0..self.k).filter(|&i| self.has(i)) {
                dec.add_original_shard(i, &self.source[i * s..(i + 1) * s])?;
            }
            for (j, shard) in self.repair_index.iter().zip(self.repair.chunks_exact(s)) {
                dec.add_recovery_shard(usize::from(*j), shard)?;
            }
            let result = dec.decode()?;
            for (i, shard) in result.restored_original_iter() {
                self.source[i * s..(i + 1) * s].copy_from_slice(shard);
            }
        }
        self.source.truncate(block_len);
        Ok(self.source)
    }
}

/// Reuses one decoder's working memory across blocks.
#[derive(Default)]
pub struct Decoder {
    inner: Option<ReedSolomonDecoder>,
}

impl Decoder {
    fn reset(
        &mut self,
        k: usize,
        repair: usize,
        symbol_size: usize,
    ) -> Result<&mut ReedSolomonDecoder, FecError> {
        let dec = match self.inner.take() {
            Some(mut dec) => {
                dec.reset(k, repair, symbol_size)?;
                dec
            }
            None => ReedSolomonDecoder::new(k, repair, symbol_size)?,
        };
        Ok(self.inner.insert(dec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 7) as u8).collect()
    }

    #[test]
    fn any_k_symbols_rebuild_the_block() {
        let data = block(10_000);
        let mut enc = Encoder::default();
        let coded = enc.encode(&data, 100, 100).unwrap();
        assert_eq!(coded.source_symbols(), 100);
        assert!(coded.symbol(199).is_some() && coded.symbol(200).is_none());
        let mut dec = Decoder::default();
        // Every other symbol: half source, half repair.
        let mut set = SymbolSet::new(100, 100, 100);
        for i in (0..200).step_by(2) {
            assert_eq!(set.insert(i, coded.symbol(i).unwrap()), Inserted::New);
        }
        assert!(set.is_complete());
        assert_eq!(set.insert(1, coded.symbol(1).unwrap()), Inserted::Duplicate);
        assert_eq!(set.rebuild(&mut dec, 10_000).unwrap(), data);
        // Repair symbols only.
        let mut set = SymbolSet::new(100, 100, 100);
        for i in 100..200 {
            set.insert(i, coded.symbol(i).unwrap());
        }
        assert_eq!(set.rebuild(&mut dec, 10_000).unwrap(), data);
    }

    #[test]
    fn short_last_block_is_padded_and_cut_back() {
        let data = block(250);
        let coded = Encoder::default().encode(&data, 100, 4).unwrap();
        assert_eq!(coded.source_symbols(), 3);
        assert_eq!(&coded.symbol(2).unwrap()[50..], &[0u8; 50]);
        let mut set = SymbolSet::new(3, 4, 100);
        for i in [6, 0, 4] {
            set.insert(i, coded.symbol(i).unwrap());
        }
        assert_eq!(set.needed(), 0);
        let out = set.rebuild(&mut Decoder::default(), 250).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn invalid_symbols_are_refused() {
        let mut set = SymbolSet::new(3, 4, 100);
        assert_eq!(set.insert(7, &[0; 100]), Inserted::Invalid);
        assert_eq!(set.insert(0, &[0; 99]), Inserted::Invalid);
        assert!(set.is_empty());
        assert_eq!(set.needed(), 3);
    }
}
