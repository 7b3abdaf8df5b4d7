//! The per-transfer sender: a deterministic state machine with no sockets and no clock of its own.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use crate::options::Negotiated;
use crate::packet::{self, DATA_HEADER_LEN, ErrorCode};

/// Bytes a transfer reads from its source at once (rounded down to whole blocks, at least one):
/// one read serves the next several dozen blocks instead of one system call per block.
pub const READ_AHEAD: usize = 64 * 1024;

/// Where a transfer's bytes come from, read by position, so any block (a retransmitted one too)
/// can be read again.
pub trait BlockSource {
    /// Fills `buf` with the bytes at `offset`. Returns fewer than `buf.len()` bytes only at the
    /// end of the data.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
}

impl BlockSource for File {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            match FileExt::read_at(self, &mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(filled)
    }
}

/// How a transfer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferOutcome {
    /// The client acknowledged the last block.
    Completed {
        bytes: u64,
        duration: Duration,
        blksize: u16,
        windowsize: u16,
    },
    /// The client sent an ERROR packet (for example UEFI firmware after a tsize probe).
    AbortedByClient { message: String, after_bytes: u64 },
    /// The server gave up: no acknowledgement after all retries, or the file could not be read.
    Failed { reason: String },
    /// The request was refused before any data was sent (write request, bad name, missing file).
    Refused { reason: String },
}

/// Sends one file to one client: OACK if options were agreed, then DATA blocks in windows of
/// `windowsize` (RFC 7440; a window of 1 is RFC 1350 lock-step).
///
/// # Driving it
///
/// The owner feeds it and drains it, in this order, until [`Sender::is_finished`]:
/// 1. call [`Sender::poll_transmit`] until it returns `None`, sending each datagram to the client;
/// 2. wait for a datagram from the client or for [`Sender::poll_timeout`], whichever comes first;
/// 3. report it with [`Sender::handle_ack`], [`Sender::handle_error`] or
///    [`Sender::handle_timeout`], then go back to 1.
///
/// `now` is always supplied by the caller, so tests own time. Getters: [`Sender::outcome`],
/// [`Sender::is_finished`].
///
/// # Reading
///
/// Blocks are read from the source [`READ_AHEAD`] bytes at a time, starting at the block about to
/// be sent, and kept until a block outside them is needed. A retransmission inside the buffered
/// range is served from memory; one before it (a window longer than the buffer) reads again from
/// the retransmitted block.
///
/// # Block numbers
///
/// Internally blocks are counted from 1 in a `u64`; on the wire the number is that count modulo
/// 65536, so block 65535 is followed by block 0 (the rollover tftpd-hpa, iPXE and curl expect).
/// An ACK is matched to the one outstanding block with the same low 16 bits; an ACK for the block
/// already acknowledged, or for nothing outstanding, is ignored, so a duplicate ACK never triggers
/// a resend (no Sorcerer's Apprentice).
pub struct Sender<S> {
    source: S,
    blksize: u16,
    windowsize: u64,
    timeout: Duration,
    max_retries: u32,
    started: Instant,
    /// The datagram most recently handed out by `poll_transmit`, reused for every packet.
    buf: Vec<u8>,
    /// Source bytes read ahead, allocated at the first read; whole blocks, at least one.
    ahead: Vec<u8>,
    ahead_capacity: usize,
    /// Source offset of `ahead[0]` and how many bytes the read returned, once read. Fewer than
    /// `ahead_capacity` means the data ends there.
    buffered: Option<(u64, usize)>,
    /// The encoded OACK while it waits for ACK 0.
    oack: Option<Vec<u8>>,
    /// The OACK has to be (re)sent.
    oack_due: bool,
    /// Highest block the client acknowledged (0: none yet).
    acked: u64,
    /// Next block to transmit.
    next: u64,
    /// Highest block transmitted so far.
    sent: u64,
    /// The final block and its length, once a short read has revealed it.
    last: Option<(u64, usize)>,
    /// Timeouts in a row without progress.
    retries: u32,
    deadline: Option<Instant>,
    /// An ERROR packet to send before finishing.
    error_due: Option<(ErrorCode, &'static str)>,
    outcome: Option<TransferOutcome>,
}

impl<S: BlockSource> Sender<S> {
    /// Starts a transfer with the agreed parameters; `max_retries` is how many timeouts in a row
    /// are retransmitted before giving up.
    pub fn new(source: S, agreed: &Negotiated, max_retries: u32, now: Instant) -> Self {
        let oack = (!agreed.oack.is_empty()).then(|| {
            let mut buf = Vec::new();
            packet::encode_oack(
                &mut buf,
                agreed
                    .oack
                    .iter()
                    .map(|(name, value)| (*name, value.as_str())),
            );
            buf
        });
        Self {
            source,
            blksize: agreed.blksize,
            windowsize: u64::from(agreed.windowsize.max(1)),
            timeout: agreed.timeout,
            max_retries,
            started: now,
            buf: Vec::with_capacity(DATA_HEADER_LEN + usize::from(agreed.blksize)),
            ahead: Vec::new(),
            ahead_capacity: read_ahead_capacity(agreed.blksize),
            buffered: None,
            oack_due: oack.is_some(),
            oack,
            acked: 0,
            next: 1,
            sent: 0,
            last: None,
            retries: 0,
            deadline: None,
            error_due: None,
            outcome: None,
        }
    }

    /// The next datagram to send, if any. Sending re-arms the retransmission timer.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<&[u8]> {
        if let Some((code, message)) = self.error_due.take() {
            packet::encode_error(&mut self.buf, code, message);
            return Some(&self.buf);
        }
        if self.outcome.is_some() {
            return None;
        }
        if let Some(oack) = &self.oack {
            if !self.oack_due {
                return None;
            }
            self.oack_due = false;
            self.deadline = Some(now + self.timeout);
            self.buf.clear();
            self.buf.extend_from_slice(oack);
            return Some(&self.buf);
        }
        if self.next > self.acked + self.windowsize
            || self.last.is_some_and(|(last, _)| self.next > last)
        {
            return None;
        }
        let block = self.next;
        let blksize = usize::from(self.blksize);
        let offset = (block - 1).saturating_mul(u64::from(self.blksize));
        match self.buffered_block(offset) {
            Ok(range) => {
                let len = range.len();
                packet::encode_data_header(&mut self.buf, wire_block(block));
                self.buf.extend_from_slice(&self.ahead[range]);
                if len < blksize {
                    self.last = Some((block, len));
                }
            }
            Err(e) => {
                self.fail(
                    format!("reading block {block} at offset {offset}: {e}"),
                    "read error",
                );
                return self.poll_transmit(now);
            }
        }
        self.next += 1;
        self.sent = self.sent.max(block);
        self.deadline = Some(now + self.timeout);
        Some(&self.buf)
    }

    /// When [`Sender::handle_timeout`] should be called, if anything is outstanding.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.outcome.is_some() {
            None
        } else {
            self.deadline
        }
    }

    /// An ACK from the client for wire block `block`.
    pub fn handle_ack(&mut self, now: Instant, block: u16) {
        if self.outcome.is_some() {
            return;
        }
        if self.oack.is_some() {
            // RFC 2347: the client confirms the OACK with ACK 0; data starts at block 1.
            if block == 0 {
                self.oack = None;
                self.oack_due = false;
                self.progress();
            }
            return;
        }
        let ahead = u64::from(block.wrapping_sub(wire_block(self.acked)));
        if ahead == 0 || self.acked + ahead > self.sent {
            return;
        }
        self.acked += ahead;
        // RFC 7440: an ACK inside the window means the blocks after it were lost; resume there.
        self.next = self.acked + 1;
        self.progress();
        if self.last.is_some_and(|(last, _)| self.acked >= last) {
            self.outcome = Some(TransferOutcome::Completed {
                bytes: self.acked_bytes(),
                duration: now.saturating_duration_since(self.started),
                blksize: self.blksize,
                windowsize: u16::try_from(self.windowsize).unwrap_or(u16::MAX),
            });
        }
    }

    /// An ERROR packet from the client: the transfer ends at once, nothing is sent back
    /// (RFC 1350: errors are not acknowledged).
    pub fn handle_error(&mut self, code: u16, message: &str) {
        if self.outcome.is_some() {
            return;
        }
        self.outcome = Some(TransferOutcome::AbortedByClient {
            message: format!("error {code}: {message}"),
            after_bytes: self.acked_bytes(),
        });
    }

    /// The timer from [`Sender::poll_timeout`] fired: resend the OACK or the unacknowledged window,
    /// or give up after `max_retries` timeouts in a row.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.outcome.is_some() || self.deadline.is_none_or(|deadline| now < deadline) {
            return;
        }
        self.deadline = None;
        self.retries += 1;
        if self.retries > self.max_retries {
            let waiting_for = if self.oack.is_some() {
                "ACK of the OACK".to_owned()
            } else {
                format!("ACK of block {}", self.acked + 1)
            };
            self.fail(
                format!(
                    "timed out after {} retries waiting for {waiting_for}",
                    self.max_retries
                ),
                "timed out",
            );
            return;
        }
        if self.oack.is_some() {
            self.oack_due = true;
        } else {
            self.next = self.acked + 1;
        }
    }

    /// How the transfer ended, once it has.
    pub fn outcome(&self) -> Option<&TransferOutcome> {
        self.outcome.as_ref()
    }

    /// The transfer is over and nothing is left to send.
    pub fn is_finished(&self) -> bool {
        self.outcome.is_some() && self.error_due.is_none()
    }

    /// Where in `ahead` the block at `offset` is, reading ahead from `offset` if it is not
    /// buffered. A range shorter than a block is the last block.
    fn buffered_block(&mut self, offset: u64) -> io::Result<Range<usize>> {
        let blksize = usize::from(self.blksize);
        let within = |(start, len): (u64, usize)| {
            let from = usize::try_from(offset.checked_sub(start)?).ok()?;
            let ends_here = len < self.ahead_capacity;
            // A whole block, or whatever is left of data that ends in the buffer.
            (from + blksize <= len || (ends_here && from <= len)).then_some(from)
        };
        let from = match self.buffered.and_then(within) {
            Some(from) => from,
            None => {
                self.buffered = None;
                self.ahead.resize(self.ahead_capacity, 0);
                let len = self.source.read_at(offset, &mut self.ahead)?;
                self.buffered = Some((offset, len.min(self.ahead_capacity)));
                0
            }
        };
        let len = self.buffered.map_or(0, |(_, len)| len);
        Ok(from..(from + blksize).min(len))
    }

    fn progress(&mut self) {
        self.retries = 0;
        self.deadline = None;
    }

    fn fail(&mut self, reason: String, client_message: &'static str) {
        self.outcome = Some(TransferOutcome::Failed { reason });
        self.error_due = Some((ErrorCode::NotDefined, client_message));
    }

    /// Bytes the client has acknowledged.
    fn acked_bytes(&self) -> u64 {
        match self.last {
            Some((last, len)) if self.acked >= last => {
                (last - 1) * u64::from(self.blksize) + len as u64
            }
            _ => self.acked * u64::from(self.blksize),
        }
    }
}

/// The read-ahead buffer size for `blksize`: [`READ_AHEAD`] rounded down to whole blocks, at
/// least one block, so a buffered block never straddles the end of the buffer.
fn read_ahead_capacity(blksize: u16) -> usize {
    let blksize = usize::from(blksize.max(1));
    blksize * (READ_AHEAD / blksize).max(1)
}

/// The 16-bit block number on the wire: the count modulo 65536 (rollover to 0).
fn wire_block(block: u64) -> u16 {
    (block & u64::from(u16::MAX)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{Packet, parse};
    use crate::testutil::{MemSource, pseudo_random};

    const TIMEOUT: Duration = Duration::from_secs(1);

    fn agreed(blksize: u16, windowsize: u16, oack: &[(&'static str, &str)]) -> Negotiated {
        Negotiated {
            blksize,
            windowsize,
            timeout: TIMEOUT,
            oack: oack.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        }
    }

    /// What one `poll_transmit` produced, decoded.
    #[derive(Debug, PartialEq, Eq)]
    enum Out {
        Oack(Vec<(String, String)>),
        Data(u16, Vec<u8>),
        Error(u16),
    }

    fn drain(sender: &mut Sender<MemSource>, now: Instant) -> Vec<Out> {
        let mut out = Vec::new();
        while let Some(dgram) = sender.poll_transmit(now) {
            out.push(match parse(dgram).expect("sender emits valid packets") {
                Packet::Oack { options } => Out::Oack(
                    options
                        .iter()
                        .map(|(k, v)| {
                            (
                                String::from_utf8_lossy(k).into_owned(),
                                String::from_utf8_lossy(v).into_owned(),
                            )
                        })
                        .collect(),
                ),
                Packet::Data { block, data } => Out::Data(block, data.to_vec()),
                Packet::Error { code, .. } => Out::Error(code),
                other => panic!("unexpected packet {other:?}"),
            });
            assert!(out.len() <= 70_000, "runaway sender");
        }
        out
    }

    fn blocks(out: &[Out]) -> Vec<u16> {
        out.iter()
            .map(|o| match o {
                Out::Data(block, _) => *block,
                other => panic!("expected data, got {other:?}"),
            })
            .collect()
    }

    #[test]
    fn lock_step_without_options() {
        let t0 = Instant::now();
        let data = pseudo_random(1300, 1);
        let mut s = Sender::new(MemSource::new(data.clone()), &agreed(512, 1, &[]), 5, t0);
        let out = drain(&mut s, t0);
        assert_eq!(out, [Out::Data(1, data[..512].to_vec())]);
        assert_eq!(s.poll_timeout(), Some(t0 + TIMEOUT));
        s.handle_ack(t0, 1);
        assert_eq!(drain(&mut s, t0), [Out::Data(2, data[512..1024].to_vec())]);
        s.handle_ack(t0, 2);
        assert_eq!(drain(&mut s, t0), [Out::Data(3, data[1024..].to_vec())]);
        assert!(!s.is_finished());
        s.handle_ack(t0 + Duration::from_millis(5), 3);
        assert!(s.is_finished());
        assert_eq!(
            s.outcome(),
            Some(&TransferOutcome::Completed {
                bytes: 1300,
                duration: Duration::from_millis(5),
                blksize: 512,
                windowsize: 1
            })
        );
        assert_eq!(s.poll_timeout(), None);
        assert!(drain(&mut s, t0).is_empty());
    }

    #[test]
    fn oack_waits_for_ack_zero() {
        let t0 = Instant::now();
        let mut s = Sender::new(
            MemSource::new(vec![7; 100]),
            &agreed(1468, 1, &[("tsize", "100"), ("blksize", "1468")]),
            5,
            t0,
        );
        assert_eq!(
            drain(&mut s, t0),
            [Out::Oack(vec![
                ("tsize".into(), "100".into()),
                ("blksize".into(), "1468".into())
            ])]
        );
        // An ACK for a data block before the OACK is confirmed means nothing.
        s.handle_ack(t0, 1);
        assert!(drain(&mut s, t0).is_empty());
        s.handle_ack(t0, 0);
        assert_eq!(drain(&mut s, t0), [Out::Data(1, vec![7; 100])]);
        s.handle_ack(t0, 1);
        assert!(matches!(
            s.outcome(),
            Some(TransferOutcome::Completed { bytes: 100, .. })
        ));
    }

    #[test]
    fn window_is_sent_whole_and_advances_on_ack() {
        let t0 = Instant::now();
        let mut s = Sender::new(
            MemSource::new(vec![1; 8 * 10 + 3]),
            &agreed(8, 4, &[]),
            5,
            t0,
        );
        assert_eq!(blocks(&drain(&mut s, t0)), [1, 2, 3, 4]);
        s.handle_ack(t0, 4);
        assert_eq!(blocks(&drain(&mut s, t0)), [5, 6, 7, 8]);
        s.handle_ack(t0, 8);
        // Blocks 9, 10 full and 11 short: the window stops at the end of the file.
        assert_eq!(blocks(&drain(&mut s, t0)), [9, 10, 11]);
        s.handle_ack(t0, 11);
        assert!(matches!(
            s.outcome(),
            Some(TransferOutcome::Completed {
                bytes: 83,
                windowsize: 4,
                ..
            })
        ));
    }

    #[test]
    fn ack_inside_the_window_resends_from_the_next_block() {
        let t0 = Instant::now();
        let mut s = Sender::new(MemSource::new(vec![1; 8 * 20]), &agreed(8, 4, &[]), 5, t0);
        assert_eq!(blocks(&drain(&mut s, t0)), [1, 2, 3, 4]);
        // Block 3 was lost: the client acknowledges 2 (RFC 7440 §4).
        s.handle_ack(t0, 2);
        assert_eq!(blocks(&drain(&mut s, t0)), [3, 4, 5, 6]);
    }

    #[test]
    fn duplicate_and_stale_acks_are_ignored() {
        let t0 = Instant::now();
        let mut s = Sender::new(MemSource::new(vec![1; 8 * 20]), &agreed(8, 4, &[]), 5, t0);
        drain(&mut s, t0);
        s.handle_ack(t0, 4);
        assert_eq!(blocks(&drain(&mut s, t0)), [5, 6, 7, 8]);
        let deadline = s.poll_timeout();
        // Duplicate of the ACK already processed: no resend (Sorcerer's Apprentice), timer intact.
        s.handle_ack(t0, 4);
        assert!(drain(&mut s, t0).is_empty());
        assert_eq!(s.poll_timeout(), deadline);
        // Older ACKs and ACKs for blocks never sent are ignored too.
        for stale in [0, 1, 3, 9, 12, 40_000] {
            s.handle_ack(t0, stale);
            assert!(drain(&mut s, t0).is_empty(), "ack {stale}");
        }
        s.handle_ack(t0, 8);
        assert_eq!(blocks(&drain(&mut s, t0)), [9, 10, 11, 12]);
    }

    #[test]
    fn lock_step_duplicate_ack_does_not_resend() {
        let t0 = Instant::now();
        let mut s = Sender::new(MemSource::new(vec![1; 2000]), &agreed(512, 1, &[]), 5, t0);
        drain(&mut s, t0);
        s.handle_ack(t0, 1);
        assert_eq!(blocks(&drain(&mut s, t0)), [2]);
        s.handle_ack(t0, 1);
        assert!(drain(&mut s, t0).is_empty());
        s.handle_ack(t0, 2);
        assert_eq!(blocks(&drain(&mut s, t0)), [3]);
    }

    #[test]
    fn timeout_retransmits_the_whole_window() {
        let t0 = Instant::now();
        let mut s = Sender::new(MemSource::new(vec![1; 8 * 20]), &agreed(8, 4, &[]), 5, t0);
        drain(&mut s, t0);
        s.handle_ack(t0, 4);
        drain(&mut s, t0);
        // Too early: nothing happens.
        s.handle_timeout(t0 + TIMEOUT / 2);
        assert!(drain(&mut s, t0).is_empty());
        let t1 = t0 + TIMEOUT;
        s.handle_timeout(t1);
        assert_eq!(blocks(&drain(&mut s, t1)), [5, 6, 7, 8]);
        assert_eq!(s.poll_timeout(), Some(t1 + TIMEOUT));
    }

    #[test]
    fn timeout_resends_the_oack() {
        let t0 = Instant::now();
        let mut s = Sender::new(
            MemSource::new(vec![1; 10]),
            &agreed(512, 1, &[("tsize", "10")]),
            5,
            t0,
        );
        assert_eq!(drain(&mut s, t0).len(), 1);
        s.handle_timeout(t0 + TIMEOUT);
        assert!(matches!(
            drain(&mut s, t0 + TIMEOUT).as_slice(),
            [Out::Oack(_)]
        ));
    }

    #[test]
    fn gives_up_after_the_retries_with_an_error() {
        let mut now = Instant::now();
        let mut s = Sender::new(MemSource::new(vec![1; 1000]), &agreed(512, 1, &[]), 3, now);
        assert_eq!(blocks(&drain(&mut s, now)), [1]);
        for _ in 0..3 {
            now = s.poll_timeout().expect("armed");
            s.handle_timeout(now);
            assert_eq!(blocks(&drain(&mut s, now)), [1]);
        }
        now = s.poll_timeout().expect("armed");
        s.handle_timeout(now);
        assert_eq!(drain(&mut s, now), [Out::Error(0)]);
        assert!(s.is_finished());
        assert!(
            matches!(s.outcome(), Some(TransferOutcome::Failed { reason }) if reason.contains("timed out"))
        );
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn progress_resets_the_retry_count() {
        let mut now = Instant::now();
        let mut s = Sender::new(MemSource::new(vec![1; 2000]), &agreed(512, 1, &[]), 1, now);
        drain(&mut s, now);
        now = s.poll_timeout().expect("armed");
        s.handle_timeout(now);
        drain(&mut s, now);
        s.handle_ack(now, 1);
        drain(&mut s, now);
        // One more timeout is allowed again after progress.
        now = s.poll_timeout().expect("armed");
        s.handle_timeout(now);
        assert_eq!(blocks(&drain(&mut s, now)), [2]);
        assert!(s.outcome().is_none());
    }

    #[test]
    fn client_error_after_oack_ends_at_once() {
        let t0 = Instant::now();
        let mut s = Sender::new(
            MemSource::new(vec![1; 5000]),
            &agreed(1468, 1, &[("tsize", "5000")]),
            5,
            t0,
        );
        drain(&mut s, t0);
        s.handle_error(8, "tsize probe");
        assert!(s.is_finished());
        assert_eq!(s.poll_timeout(), None);
        // Nothing is sent back: not an error, not an OACK retransmission.
        assert!(drain(&mut s, t0).is_empty());
        s.handle_timeout(t0 + TIMEOUT * 10);
        assert!(drain(&mut s, t0 + TIMEOUT * 10).is_empty());
        assert_eq!(
            s.outcome(),
            Some(&TransferOutcome::AbortedByClient {
                message: "error 8: tsize probe".into(),
                after_bytes: 0
            })
        );
    }

    #[test]
    fn client_error_mid_transfer_reports_acked_bytes() {
        let t0 = Instant::now();
        let mut s = Sender::new(MemSource::new(vec![1; 5000]), &agreed(512, 2, &[]), 5, t0);
        drain(&mut s, t0);
        s.handle_ack(t0, 2);
        drain(&mut s, t0);
        s.handle_error(0, "user cancelled");
        assert!(matches!(
            s.outcome(),
            Some(TransferOutcome::AbortedByClient {
                after_bytes: 1024,
                ..
            })
        ));
        // Late ACKs change nothing.
        s.handle_ack(t0, 4);
        assert!(drain(&mut s, t0).is_empty());
        assert!(matches!(
            s.outcome(),
            Some(TransferOutcome::AbortedByClient { .. })
        ));
    }

    #[test]
    fn exact_multiple_of_blksize_ends_with_an_empty_block() {
        let t0 = Instant::now();
        let mut s = Sender::new(MemSource::new(vec![9; 1024]), &agreed(512, 4, &[]), 5, t0);
        let out = drain(&mut s, t0);
        assert_eq!(blocks(&out), [1, 2, 3]);
        assert_eq!(out[2], Out::Data(3, Vec::new()));
        s.handle_ack(t0, 2);
        assert_eq!(blocks(&drain(&mut s, t0)), [3]);
        assert!(s.outcome().is_none());
        s.handle_ack(t0, 3);
        assert!(matches!(
            s.outcome(),
            Some(TransferOutcome::Completed { bytes: 1024, .. })
        ));
    }

    #[test]
    fn empty_file_is_one_empty_block() {
        let t0 = Instant::now();
        let mut s = Sender::new(MemSource::new(Vec::new()), &agreed(512, 1, &[]), 5, t0);
        assert_eq!(drain(&mut s, t0), [Out::Data(1, Vec::new())]);
        s.handle_ack(t0, 1);
        assert!(matches!(
            s.outcome(),
            Some(TransferOutcome::Completed { bytes: 0, .. })
        ));
    }

    #[test]
    fn block_numbers_roll_over_to_zero() {
        let t0 = Instant::now();
        // 8-byte blocks, 70000 full blocks plus 5 bytes: crosses 65535 -> 0 once.
        let data = pseudo_random(8 * 70_000 + 5, 7);
        let mut s = Sender::new(MemSource::new(data.clone()), &agreed(8, 16, &[]), 5, t0);
        let mut received = Vec::new();
        let mut expected: u16 = 1;
        let mut saw_zero = false;
        while !s.is_finished() {
            let out = drain(&mut s, t0);
            assert!(!out.is_empty(), "stalled at block {expected}");
            for o in &out {
                let Out::Data(block, bytes) = o else {
                    panic!("unexpected {o:?}");
                };
                assert_eq!(*block, expected);
                saw_zero |= *block == 0;
                received.extend_from_slice(bytes);
                expected = expected.wrapping_add(1);
            }
            s.handle_ack(t0, expected.wrapping_sub(1));
        }
        assert!(saw_zero);
        assert_eq!(received, data);
        assert!(matches!(
            s.outcome(),
            Some(TransferOutcome::Completed { bytes, .. }) if *bytes == data.len() as u64
        ));
    }

    #[test]
    fn ack_across_the_rollover_in_a_window() {
        let t0 = Instant::now();
        let mut s = Sender::new(
            MemSource::new(vec![0; 8 * 65_600]),
            &agreed(8, 8, &[]),
            5,
            t0,
        );
        // Walk to block 65532 acknowledged.
        let mut acked: u16 = 0;
        while acked != 65_532 {
            drain(&mut s, t0);
            acked += 8.min(65_532 - acked);
            s.handle_ack(t0, acked);
        }
        assert_eq!(
            blocks(&drain(&mut s, t0)),
            [65_533, 65_534, 65_535, 0, 1, 2, 3, 4]
        );
        // ACK of wire block 1 (count 65537) inside the window: resume at wire block 2.
        s.handle_ack(t0, 1);
        assert_eq!(blocks(&drain(&mut s, t0)), [2, 3, 4, 5, 6, 7, 8, 9]);
        // The old ACK 65535 from before the rollover is stale now.
        s.handle_ack(t0, 65_535);
        assert!(drain(&mut s, t0).is_empty());
    }

    #[test]
    fn read_error_fails_the_transfer_with_an_error_packet() {
        let t0 = Instant::now();
        // The first read ahead succeeds; the second, at block 129, fails.
        let mut source = MemSource::new(vec![1; READ_AHEAD + 4096]);
        source.fail_from = Some(READ_AHEAD as u64);
        let mut s = Sender::new(source, &agreed(512, 4, &[]), 5, t0);
        for window_end in (4..=128).step_by(4) {
            assert_eq!(drain(&mut s, t0).len(), 4);
            s.handle_ack(t0, window_end);
        }
        assert_eq!(drain(&mut s, t0), [Out::Error(0)]);
        assert!(s.is_finished());
        assert!(
            matches!(s.outcome(), Some(TransferOutcome::Failed { reason }) if reason.contains("injected"))
        );
    }

    #[test]
    fn read_ahead_capacity_is_whole_blocks() {
        assert_eq!(read_ahead_capacity(512), READ_AHEAD);
        assert_eq!(read_ahead_capacity(1468), 44 * 1468);
        assert_eq!(read_ahead_capacity(8), READ_AHEAD);
        // A block larger than the read-ahead size: one block per read.
        assert_eq!(read_ahead_capacity(65_464), 65_464);
    }

    /// Runs a transfer to the end with `windowsize`, acknowledging every window whole, and returns
    /// the bytes received.
    fn receive_all(s: &mut Sender<MemSource>, now: Instant) -> Vec<u8> {
        let mut received = Vec::new();
        while !s.is_finished() {
            let mut last = None;
            for out in drain(s, now) {
                let Out::Data(block, bytes) = out else {
                    panic!("unexpected {out:?}");
                };
                received.extend_from_slice(&bytes);
                last = Some(block);
            }
            s.handle_ack(now, last.expect("a window"));
        }
        received
    }

    #[test]
    fn reads_ahead_once_per_buffer() {
        let t0 = Instant::now();
        let cap = read_ahead_capacity(1468);
        let data = pseudo_random(3 * cap + 5, 3);
        let mut s = Sender::new(MemSource::new(data.clone()), &agreed(1468, 1, &[]), 5, t0);
        assert_eq!(receive_all(&mut s, t0), data);
        // Three full buffers and the 5 bytes after them.
        assert_eq!(s.source.reads, 4);
    }

    #[test]
    fn data_ending_at_the_buffer_end_reads_once_more_for_the_empty_block() {
        let t0 = Instant::now();
        let cap = read_ahead_capacity(1468);
        let data = pseudo_random(cap, 4);
        let mut s = Sender::new(MemSource::new(data.clone()), &agreed(1468, 4, &[]), 5, t0);
        assert_eq!(receive_all(&mut s, t0), data);
        // The full buffer could have been followed by more; the second read finds the end.
        assert_eq!(s.source.reads, 2);
        assert!(matches!(
            s.outcome(),
            Some(TransferOutcome::Completed { bytes, .. }) if *bytes == cap as u64
        ));
    }

    #[test]
    fn data_ending_inside_the_buffer_is_read_once() {
        let t0 = Instant::now();
        // An exact multiple of the block size: the empty last block comes from the same read.
        let data = pseudo_random(10 * 512, 5);
        let mut s = Sender::new(MemSource::new(data.clone()), &agreed(512, 3, &[]), 5, t0);
        assert_eq!(receive_all(&mut s, t0), data);
        assert_eq!(s.source.reads, 1);
    }

    #[test]
    fn retransmitted_window_inside_the_buffer_is_not_read_again() {
        let t0 = Instant::now();
        let data = pseudo_random(4096, 6);
        let mut s = Sender::new(MemSource::new(data.clone()), &agreed(512, 4, &[]), 5, t0);
        let first = drain(&mut s, t0);
        assert_eq!(s.source.reads, 1);
        s.handle_timeout(t0 + TIMEOUT);
        assert_eq!(drain(&mut s, t0 + TIMEOUT), first);
        s.handle_ack(t0, 2);
        assert_eq!(
            drain(&mut s, t0),
            [3, 4, 5, 6].map(|b| Out::Data(b, data[(b as usize - 1) * 512..][..512].to_vec()))
        );
        assert_eq!(s.source.reads, 1);
    }

    #[test]
    fn retransmission_before_the_buffer_reads_from_the_resent_block() {
        let t0 = Instant::now();
        let cap = read_ahead_capacity(512);
        let per_buffer = u16::try_from(cap / 512).expect("small");
        // A window of one and a half buffers: its second half needs a second read.
        let window = per_buffer + per_buffer / 2;
        let data = pseudo_random(3 * cap, 8);
        let mut s = Sender::new(
            MemSource::new(data.clone()),
            &agreed(512, window, &[]),
            5,
            t0,
        );
        let first = drain(&mut s, t0);
        assert_eq!(first.len(), usize::from(window));
        assert_eq!(s.source.reads, 2);
        // The client lost block 3: resending from there reads from block 3 again, and once more
        // for the window's last blocks.
        s.handle_ack(t0, 2);
        let resent = drain(&mut s, t0);
        assert_eq!(s.source.reads, 4);
        assert_eq!(blocks(&resent), (3..=window + 2).collect::<Vec<_>>());
        assert!(
            resent[..first.len() - 2] == first[2..],
            "resent blocks differ"
        );
        s.handle_ack(t0, window + 2);
        let mut received = Vec::new();
        for out in first[..2].iter().chain(&resent) {
            let Out::Data(_, bytes) = out else {
                panic!("unexpected {out:?}");
            };
            received.extend_from_slice(bytes);
        }
        received.extend(receive_all(&mut s, t0));
        assert!(received == data, "received bytes differ from the source");
    }
}
