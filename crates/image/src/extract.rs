//! The extraction pipeline an agent runs: fetch → decompress → verify → tar extractor.
//!
//! Worker threads fetch chunks from a [`ChunkSource`] ahead of the extractor, a run of
//! consecutive chunks at a time where the source batches, decompress each and check its length
//! and BLAKE3 against the verified manifest. The extractor reads the
//! stream chunk by chunk, in order, and only ever sees bytes of a chunk that passed; a chunk
//! that fails stops the extraction with an error naming its index and hash, and none of its
//! bytes are written. Memory stays bounded by the look-ahead window.
//!
//! Resume: progress events carry `resume_chunk`, the first chunk not completely written.
//! Extraction started at chunk R parses from the start of the tar member that holds R's first
//! byte (R's `entry_start`, in chunk J <= R). If that member is a regular file whose data
//! holds R's first byte and the file on disk already has the bytes before it, the stream
//! jumps from the member's header to chunk R and the file is continued: only J and R onwards
//! are fetched. Otherwise the member is extracted again from its header.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::Path;
use std::rc::Rc;
use std::sync::{Condvar, Mutex};

use metalcast_proto::image::{ChunkRef, Digest, MAX_CHUNKS_PER_FETCH};

use crate::manifest::VerifiedManifest;
use crate::read::Forward;
use crate::store::Store;
use crate::unpack::{UnpackError, UnpackOptions, UnpackStats, unpack_with};

pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// Decompressed bytes fetched ahead of the extractor: what bounds the pipeline's memory.
const LOOKAHEAD: u64 = 16 << 20;

/// Where chunks come from: the agent implements it over HTTP (retrying as it sees fit),
/// [`Store`] implements it for local use and tests. Called from several threads.
pub trait ChunkSource: Sync {
    /// The stored (zstd-compressed) bytes of chunk number `index` of the manifest.
    fn fetch(&self, index: usize, chunk: &ChunkRef) -> Result<Vec<u8>, SourceError>;

    /// Stored bytes worth asking for at once: runs of consecutive chunks up to this size go
    /// to [`fetch_run`](Self::fetch_run). 0, the default, fetches one chunk at a time.
    fn run_bytes(&self) -> u64 {
        0
    }

    /// The stored bytes of chunks `first..first + chunks.len()`, back to back.
    fn fetch_run(&self, first: usize, chunks: &[ChunkRef]) -> Result<Vec<u8>, SourceError> {
        let mut all = Vec::new();
        for (index, chunk) in (first..).zip(chunks) {
            all.extend(self.fetch(index, chunk)?);
        }
        Ok(all)
    }
}

impl ChunkSource for Store {
    fn fetch(&self, _index: usize, chunk: &ChunkRef) -> Result<Vec<u8>, SourceError> {
        Ok(self.get(&chunk.hash)?)
    }
}

#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// First chunk not yet written: 0 for a fresh extraction, else a `resume_chunk`.
    pub start_chunk: usize,
    /// Chunks fetched in parallel (at least 1).
    pub fetchers: usize,
    pub unpack: UnpackOptions,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            start_chunk: 0,
            fetchers: 4,
            unpack: UnpackOptions::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractProgress {
    /// Stream bytes verified and handed to the extractor.
    pub stream_bytes: u64,
    /// Length of the whole stream.
    pub total_bytes: u64,
    /// First chunk not completely written: where to start again after a failure.
    pub resume_chunk: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractReport {
    /// The chunk fetching began with (at or before the requested start chunk).
    pub first_fetched: usize,
    pub chunks_fetched: usize,
    pub unpack: UnpackStats,
}

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("start chunk {start} is beyond the image's {chunks} chunks")]
    Start { start: usize, chunks: usize },
    #[error("fetching chunk {index} ({hash})")]
    Fetch {
        index: usize,
        hash: Digest,
        #[source]
        source: SourceError,
    },
    #[error("chunk {index} ({hash}) failed verification: {why}")]
    Corrupt {
        index: usize,
        hash: Digest,
        why: String,
    },
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error("reading past the end of the tar stream")]
    Drain(#[source] io::Error),
}

/// Index of the chunk holding stream byte `offset` (the chunk count at the end).
fn chunk_at(chunks: &[ChunkRef], offset: u64) -> usize {
    chunks.partition_point(|c| c.offset + c.len <= offset)
}

/// Extracts the image into the existing directory `target`. `progress` runs after every
/// chunk handed to the extractor and once more at the end or on failure; its last
/// `resume_chunk` is where to start again.
pub fn extract<S: ChunkSource>(
    source: &S,
    manifest: &VerifiedManifest,
    target: &Path,
    opts: &ExtractOptions,
    progress: &mut dyn FnMut(&ExtractProgress),
) -> Result<ExtractReport, ExtractError> {
    let m = manifest.manifest();
    let chunks = &m.chunks[..];
    let n = chunks.len();
    if opts.start_chunk > n {
        return Err(ExtractError::Start {
            start: opts.start_chunk,
            chunks: n,
        });
    }
    let report_at = |applied: u64| ExtractProgress {
        stream_bytes: applied,
        total_bytes: m.size,
        resume_chunk: chunk_at(chunks, applied),
    };
    if opts.start_chunk == n {
        progress(&report_at(m.size));
        return Ok(ExtractReport {
            first_fetched: n,
            chunks_fetched: 0,
            unpack: UnpackStats::default(),
        });
    }
    let parse_from = chunks[opts.start_chunk].entry_start;
    let first = chunk_at(chunks, parse_from);
    let skip = (parse_from - chunks[first].offset) as usize;
    // Everything before the start chunk was written by the interrupted extraction.
    let written = chunks[opts.start_chunk].offset;
    let resume_at = (written > parse_from).then_some(written - parse_from);
    tracing::info!(
        start_chunk = opts.start_chunk,
        first_fetched = first,
        parse_from,
        "extracting image {}",
        manifest.id()
    );

    let prefetch = Prefetch {
        source,
        chunks,
        run_bytes: source.run_bytes(),
        state: Mutex::new(PrefetchState {
            next_claim: first,
            wanted: first,
            ready: BTreeMap::new(),
            stop: false,
        }),
        changed: Condvar::new(),
    };
    std::thread::scope(|scope| {
        for _ in 0..opts.fetchers.max(1) {
            scope.spawn(|| prefetch.work());
        }
        // Stops the workers however the extraction ends.
        let _stop = StopOnDrop(&prefetch);
        let applied = Rc::new(Cell::new(parse_from));
        let failure = Rc::new(RefCell::new(None));
        let progress = RefCell::new(progress);
        let mut stream = ChunkStream {
            prefetch: &prefetch,
            next: first,
            taken: 0,
            cur: Vec::new(),
            pos: 0,
            skip,
            fed: parse_from,
            failure: failure.clone(),
            on_chunk: &|fed, next| {
                let p = ExtractProgress {
                    stream_bytes: fed,
                    total_bytes: m.size,
                    resume_chunk: next,
                };
                let mut f = progress.borrow_mut();
                (*f)(&p);
            },
        };
        let base = parse_from;
        let unpacked = unpack_with(&mut stream, target, &opts.unpack, resume_at, &mut |end| {
            applied.set(base + end)
        });
        let result = unpacked.map_err(ExtractError::from).and_then(|stats| {
            // Whatever follows the end-of-archive block is verified all the same.
            io::copy(&mut stream, &mut io::sink()).map_err(ExtractError::Drain)?;
            applied.set(m.size);
            Ok(stats)
        });
        // Where to start again: after a chunk failure, that chunk (all before it were
        // written); after a failure to write, the member being written.
        let (result, resume_chunk) = match (result, failure.borrow_mut().take()) {
            (Ok(stats), _) => (Ok(stats), n),
            (Err(_), Some((index, chunk_error))) => (Err(chunk_error), index),
            (Err(e), None) => (Err(e), report_at(applied.get()).resume_chunk),
        };
        let last = ExtractProgress {
            stream_bytes: stream.fed,
            total_bytes: m.size,
            resume_chunk,
        };
        let mut f = progress.borrow_mut();
        (*f)(&last);
        result.map(|unpack| ExtractReport {
            first_fetched: first,
            chunks_fetched: stream.taken,
            unpack,
        })
    })
}

struct PrefetchState {
    next_claim: usize,
    /// The chunk the extractor waits for next.
    wanted: usize,
    ready: BTreeMap<usize, Result<Vec<u8>, ExtractError>>,
    stop: bool,
}

struct Prefetch<'a, S> {
    source: &'a S,
    chunks: &'a [ChunkRef],
    run_bytes: u64,
    state: Mutex<PrefetchState>,
    changed: Condvar,
}

impl<S: ChunkSource> Prefetch<'_, S> {
    fn lock(&self) -> std::sync::MutexGuard<'_, PrefetchState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether chunk `i` (at or after the one wanted) lies within the look-ahead.
    fn in_lookahead(&self, st: &PrefetchState, i: usize) -> bool {
        let (c, wanted) = (&self.chunks[i], &self.chunks[st.wanted]);
        i == st.wanted || c.offset + c.len <= wanted.offset + LOOKAHEAD
    }

    /// Claims the next run of chunks to fetch, waiting for room in the look-ahead; `None`
    /// when there is nothing left to do.
    fn claim(&self) -> Option<std::ops::Range<usize>> {
        let n = self.chunks.len();
        let mut st = self.lock();
        loop {
            if st.stop || st.next_claim >= n {
                return None;
            }
            if self.in_lookahead(&st, st.next_claim) {
                break;
            }
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        let first = st.next_claim;
        let mut end = first + 1;
        let mut stored = self.chunks[first].stored_len;
        while end < n
            && end - first < MAX_CHUNKS_PER_FETCH
            && stored + self.chunks[end].stored_len <= self.run_bytes
            && self.in_lookahead(&st, end)
        {
            stored += self.chunks[end].stored_len;
            end += 1;
        }
        st.next_claim = end;
        Some(first..end)
    }

    fn work(&self) {
        // One decompression context per worker, reused for every chunk it fetches.
        let mut zstd = None;
        while let Some(run) = self.claim() {
            let chunks = &self.chunks[run.clone()];
            // The first chunk of the run not yet handed over: a failure is reported there.
            let pending = Cell::new(run.start);
            // A panic in the source or the decoder must not leave the extractor waiting for
            // these chunks forever.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if let [chunk] = chunks {
                    let stored = self.source.fetch(run.start, chunk)?;
                    self.ready(run.start, verify(&mut zstd, run.start, chunk, &stored));
                    return Ok(());
                }
                let stored = self.source.fetch_run(run.start, chunks)?;
                // Only the manifest's stored lengths tell where one chunk ends in a run.
                let expected: u64 = chunks.iter().map(|c| c.stored_len).sum();
                if stored.len() as u64 != expected {
                    return Err(format!(
                        "{} stored bytes for chunks {} to {}, the manifest says {expected}",
                        stored.len(),
                        run.start,
                        run.end - 1
                    )
                    .into());
                }
                let mut rest = stored.as_slice();
                for (index, chunk) in run.clone().zip(chunks) {
                    let (one, tail) = rest.split_at(chunk.stored_len as usize);
                    rest = tail;
                    let result = verify(&mut zstd, index, chunk, one);
                    let failed = result.is_err();
                    self.ready(index, result);
                    if failed {
                        break;
                    }
                    pending.set(index + 1);
                }
                Ok(())
            }))
            .unwrap_or_else(|_| Err("the chunk source panicked".into()));
            // The extractor stops at the chunk the failure is reported for, having written
            // nothing from it on.
            if let Err(source) = outcome {
                let index = pending.get();
                self.ready(
                    index,
                    Err(ExtractError::Fetch {
                        index,
                        hash: self.chunks[index].hash,
                        source,
                    }),
                );
            }
        }
    }

    fn ready(&self, index: usize, result: Result<Vec<u8>, ExtractError>) {
        let mut st = self.lock();
        st.ready.insert(index, result);
        self.changed.notify_all();
    }

    fn take(&self, index: usize) -> Result<Vec<u8>, ExtractError> {
        let mut st = self.lock();
        loop {
            if let Some(r) = st.ready.remove(&index) {
                st.wanted = index + 1;
                // Drop chunks a jump made useless.
                st.ready = st.ready.split_off(&index);
                self.changed.notify_all();
                return r;
            }
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The extractor skips ahead to chunk `to`: fetch from there on.
    fn jump(&self, to: usize) {
        let mut st = self.lock();
        st.next_claim = st.next_claim.max(to);
        st.wanted = to;
        self.changed.notify_all();
    }

    fn stop(&self) {
        self.lock().stop = true;
        self.changed.notify_all();
    }
}

struct StopOnDrop<'a, 'b, S: ChunkSource>(&'a Prefetch<'b, S>);

impl<S: ChunkSource> Drop for StopOnDrop<'_, '_, S> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Decompresses (never past the manifest's length) and checks one chunk's stored bytes.
fn verify(
    zstd: &mut Option<zstd::bulk::Decompressor<'static>>,
    index: usize,
    c: &ChunkRef,
    stored: &[u8],
) -> Result<Vec<u8>, ExtractError> {
    let corrupt = |why: String| ExtractError::Corrupt {
        index,
        hash: c.hash,
        why,
    };
    let zstd = match zstd {
        Some(z) => z,
        None => {
            zstd.insert(zstd::bulk::Decompressor::new().map_err(|e| corrupt(format!("zstd: {e}")))?)
        }
    };
    let data = zstd
        .decompress(stored, c.len as usize)
        .map_err(|e| corrupt(format!("zstd: {e}")))?;
    if data.len() as u64 != c.len {
        return Err(corrupt(format!(
            "{} bytes after decompression, expected {}",
            data.len(),
            c.len
        )));
    }
    let actual = Digest(*blake3::hash(&data).as_bytes());
    if actual != c.hash {
        return Err(corrupt(format!("content hashes to {actual}")));
    }
    Ok(data)
}

/// The verified tar stream, chunk by chunk, as a reader.
struct ChunkStream<'a, 'b, S> {
    prefetch: &'a Prefetch<'b, S>,
    /// Index of the next chunk to take.
    next: usize,
    taken: usize,
    cur: Vec<u8>,
    pos: usize,
    /// Bytes of the first chunk before the resume member.
    skip: usize,
    /// Stream offset of the next byte handed out.
    fed: u64,
    /// A chunk failure, with the chunk's index, kept to be reported as such.
    failure: Rc<RefCell<Option<(usize, ExtractError)>>>,
    /// Called with the bytes fed and the next chunk's index after each complete chunk.
    on_chunk: &'a dyn Fn(u64, usize),
}

impl<S: ChunkSource> Read for ChunkStream<'_, '_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            if !self.cur.is_empty() {
                self.cur = Vec::new();
                self.pos = 0;
                (self.on_chunk)(self.fed, self.next);
            }
            if self.next == self.prefetch.chunks.len() {
                return Ok(0);
            }
            match self.prefetch.take(self.next) {
                Ok(data) => {
                    self.cur = data;
                    self.pos = std::mem::take(&mut self.skip);
                    self.next += 1;
                    self.taken += 1;
                }
                Err(e) => {
                    let msg = e.to_string();
                    *self.failure.borrow_mut() = Some((self.next, e));
                    return Err(io::Error::other(msg));
                }
            }
        }
        let n = (self.cur.len() - self.pos).min(buf.len());
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        self.fed += n as u64;
        Ok(n)
    }
}

impl<S: ChunkSource> Forward for ChunkStream<'_, '_, S> {
    fn forward(&mut self, n: u64) -> io::Result<bool> {
        let target = self.fed + n;
        if n <= (self.cur.len() - self.pos) as u64 {
            self.pos += n as usize;
            self.fed = target;
            return Ok(true);
        }
        let chunks = self.prefetch.chunks;
        let to = chunk_at(chunks, target);
        if to >= chunks.len() {
            return Ok(false);
        }
        self.prefetch.jump(to);
        self.next = to;
        self.cur = Vec::new();
        self.pos = 0;
        self.skip = (target - chunks[to].offset) as usize;
        self.fed = target;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use metalcast_proto::image::ChunkRef;

    use super::*;

    fn c(offset: u64, len: u64) -> ChunkRef {
        ChunkRef {
            hash: Digest([0; 32]),
            offset,
            len,
            stored_len: 1,
            entry_start: 0,
        }
    }

    #[test]
    fn chunk_at_finds_the_holder() {
        let chunks = [c(0, 10), c(10, 5), c(15, 20)];
        assert_eq!(chunk_at(&chunks, 0), 0);
        assert_eq!(chunk_at(&chunks, 9), 0);
        assert_eq!(chunk_at(&chunks, 10), 1);
        assert_eq!(chunk_at(&chunks, 34), 2);
        assert_eq!(chunk_at(&chunks, 35), 3);
    }
}
