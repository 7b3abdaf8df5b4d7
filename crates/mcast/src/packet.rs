//! The wire format (docs/multicast.md, "Packets"): a checked parser that borrows from the
//! datagram, and builders that write into a caller's buffer.

use crate::blocks::Hash;

pub const MAGIC: [u8; 4] = *b"MCST";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 56;
pub const TRAILER_LEN: usize = 4;
/// The smallest packet: a header and a trailer, no body.
pub const MIN_LEN: usize = HEADER_LEN + TRAILER_LEN;
/// Bytes of a data packet around its symbol.
pub const DATA_OVERHEAD: usize = MIN_LEN + DATA_FIXED;
/// Most blocks one status bitmap covers.
pub const MAX_BITMAP_BITS: usize = 4096;
/// Most NACK entries in one status.
pub const MAX_NACKS: usize = 128;
/// Most receiver ids in one notice.
pub const MAX_NOTICE_IDS: usize = 128;
/// Largest packet this protocol builds (a status with a full bitmap and NACK list).
pub const MAX_CONTROL_LEN: usize =
    MIN_LEN + STATUS_FIXED + MAX_BITMAP_BITS / 8 + MAX_NACKS * NACK_LEN;

const DATA_FIXED: usize = 8;
const ANNOUNCE_LEN: usize = 32;
const STATUS_FIXED: usize = 48;
const NACK_LEN: usize = 6;
const NOTICE_FIXED: usize = 4;

/// Header offsets.
mod off {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 4;
    pub const KIND: usize = 5;
    pub const LENGTH: usize = 6;
    pub const SESSION: usize = 8;
    pub const MANIFEST: usize = 16;
    pub const SEQ: usize = 48;
}

const KIND_DATA: u8 = 1;
const KIND_ANNOUNCE: u8 = 2;
const KIND_STATUS: u8 = 3;
const KIND_NOTICE: u8 = 4;

/// Why a datagram is not a packet of this protocol. Receivers count each separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("truncated")]
    Truncated,
    #[error("not a metalcast multicast packet")]
    NotOurs,
    #[error("protocol version {0}")]
    Version(u8),
    #[error("length field does not match the datagram")]
    Length,
    #[error("bad checksum")]
    Checksum,
    #[error("unknown packet type {0}")]
    UnknownType(u8),
    #[error("malformed body")]
    Malformed,
}

/// The fields every packet carries besides its type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub session: u64,
    pub manifest: Hash,
    pub seq: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body<'a> {
    Data(Data<'a>),
    Announce(Announce),
    Status(Status<'a>),
    Notice(Notice<'a>),
}

/// One symbol of one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Data<'a> {
    pub block: u32,
    pub symbol: u16,
    pub repair: bool,
    pub payload: &'a [u8],
}

/// The session's parameters, repeated by the sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Announce {
    pub length: u64,
    pub block_size: u32,
    pub block_count: u32,
    pub symbol_size: u16,
    pub repair_count: u16,
    pub status_interval_ms: u16,
    /// Bit 0: block hashes come out of band.
    pub flags: u16,
    pub rate_kbit: u32,
    pub pass: u32,
}

/// Announcement flag: the block list is fetched from a trusted source, not sent in band.
pub const HASHES_OUT_OF_BAND: u16 = 1;

/// A receiver's fixed status fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatusFields {
    pub receiver: u64,
    pub done: bool,
    pub leaving: bool,
    pub blocks_done: u32,
    pub loss_ppm: u32,
    pub overflow_ppm: u32,
    pub rx_kbit: u32,
    pub max_kbit: u32,
    pub highest_seq: u64,
    pub window_start: u32,
}

/// A receiver's report: fixed fields, a window of its missing-blocks bitmap, NACKs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status<'a> {
    pub fields: StatusFields,
    bitmap: &'a [u8],
    nacks: &'a [u8],
}

impl<'a> Status<'a> {
    /// Blocks the bitmap window covers.
    pub fn window_len(&self) -> u32 {
        (self.bitmap.len() * 8) as u32
    }

    /// Whether the window says block `window_start + i` is missing.
    pub fn missing(&self, i: u32) -> bool {
        let i = i as usize;
        self.bitmap
            .get(i / 8)
            .is_some_and(|byte| byte & (1 << (i % 8)) != 0)
    }

    /// (block, symbols still needed) for each partly received block.
    pub fn nacks(&self) -> impl Iterator<Item = (u32, u16)> + 'a {
        self.nacks
            .chunks_exact(NACK_LEN)
            .map(|e| (be32(&e[0..4]), be16(&e[4..6])))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoticeKind {
    /// The listed receivers must fetch what they lack by unicast.
    GoUnicast,
    /// The session has ended.
    Done,
    /// The sender has the final (done or leaving) status of the listed receivers.
    Acknowledged,
}

/// Why a receiver leaves the multicast session without completing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    None,
    TooSlow,
    Deadline,
    SessionEnded,
    SenderFailed,
}

impl Reason {
    fn code(self) -> u8 {
        match self {
            Reason::None => 0,
            Reason::TooSlow => 1,
            Reason::Deadline => 2,
            Reason::SessionEnded => 3,
            Reason::SenderFailed => 4,
        }
    }

    fn from_code(code: u8) -> Option<Reason> {
        Some(match code {
            0 => Reason::None,
            1 => Reason::TooSlow,
            2 => Reason::Deadline,
            3 => Reason::SessionEnded,
            4 => Reason::SenderFailed,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Notice<'a> {
    pub kind: NoticeKind,
    pub reason: Reason,
    ids: &'a [u8],
}

impl<'a> Notice<'a> {
    pub fn ids(&self) -> impl Iterator<Item = u64> + 'a {
        self.ids.chunks_exact(8).map(be64)
    }
}

/// Checks a datagram in the order of docs/multicast.md and returns a view into it.
pub fn parse(buf: &[u8]) -> Result<(Header, Body<'_>), ParseError> {
    if buf.len() < off::SESSION {
        return Err(ParseError::Truncated);
    }
    if buf[off::MAGIC..off::MAGIC + 4] != MAGIC {
        return Err(ParseError::NotOurs);
    }
    if buf[off::VERSION] != VERSION {
        return Err(ParseError::Version(buf[off::VERSION]));
    }
    let declared = usize::from(be16(&buf[off::LENGTH..]));
    if declared < MIN_LEN {
        return Err(ParseError::Length);
    }
    if buf.len() < declared {
        return Err(ParseError::Truncated);
    }
    if buf.len() > declared {
        return Err(ParseError::Length);
    }
    let (covered, trailer) = buf.split_at(declared - TRAILER_LEN);
    if crc32c::crc32c(covered) != be32(trailer) {
        return Err(ParseError::Checksum);
    }
    let header = Header {
        session: be64(&buf[off::SESSION..]),
        manifest: buf[off::MANIFEST..off::MANIFEST + 32]
            .try_into()
            .map_err(|_| ParseError::Truncated)?,
        seq: be64(&buf[off::SEQ..]),
    };
    let body = &covered[HEADER_LEN..];
    let body = match buf[off::KIND] {
        KIND_DATA => parse_data(body)?,
        KIND_ANNOUNCE => parse_announce(body)?,
        KIND_STATUS => parse_status(body)?,
        KIND_NOTICE => parse_notice(body)?,
        other => return Err(ParseError::UnknownType(other)),
    };
    Ok((header, body))
}

fn parse_data(b: &[u8]) -> Result<Body<'_>, ParseError> {
    if b.len() <= DATA_FIXED || b[6] & !1 != 0 {
        return Err(ParseError::Malformed);
    }
    Ok(Body::Data(Data {
        block: be32(&b[0..]),
        symbol: be16(&b[4..]),
        repair: b[6] & 1 != 0,
        payload: &b[DATA_FIXED..],
    }))
}

fn parse_announce(b: &[u8]) -> Result<Body<'_>, ParseError> {
    if b.len() != ANNOUNCE_LEN {
        return Err(ParseError::Malformed);
    }
    Ok(Body::Announce(Announce {
        length: be64(&b[0..]),
        block_size: be32(&b[8..]),
        block_count: be32(&b[12..]),
        symbol_size: be16(&b[16..]),
        repair_count: be16(&b[18..]),
        status_interval_ms: be16(&b[20..]),
        flags: be16(&b[22..]),
        rate_kbit: be32(&b[24..]),
        pass: be32(&b[28..]),
    }))
}

fn parse_status(b: &[u8]) -> Result<Body<'_>, ParseError> {
    if b.len() < STATUS_FIXED || b[8] & !3 != 0 {
        return Err(ParseError::Malformed);
    }
    let nack_count = usize::from(be16(&b[10..]));
    let bits = usize::from(be16(&b[44..]));
    if bits % 8 != 0 || bits > MAX_BITMAP_BITS || nack_count > MAX_NACKS {
        return Err(ParseError::Malformed);
    }
    let bitmap_end = STATUS_FIXED + bits / 8;
    if b.len() != bitmap_end + nack_count * NACK_LEN {
        return Err(ParseError::Malformed);
    }
    Ok(Body::Status(Status {
        fields: StatusFields {
            receiver: be64(&b[0..]),
            done: b[8] & 1 != 0,
            leaving: b[8] & 2 != 0,
            blocks_done: be32(&b[12..]),
            loss_ppm: be32(&b[16..]),
            overflow_ppm: be32(&b[20..]),
            rx_kbit: be32(&b[24..]),
            max_kbit: be32(&b[28..]),
            highest_seq: be64(&b[32..]),
            window_start: be32(&b[40..]),
        },
        bitmap: &b[STATUS_FIXED..bitmap_end],
        nacks: &b[bitmap_end..],
    }))
}

fn parse_notice(b: &[u8]) -> Result<Body<'_>, ParseError> {
    if b.len() < NOTICE_FIXED {
        return Err(ParseError::Malformed);
    }
    let kind = match b[0] {
        1 => NoticeKind::GoUnicast,
        2 => NoticeKind::Done,
        3 => NoticeKind::Acknowledged,
        _ => return Err(ParseError::Malformed),
    };
    let reason = Reason::from_code(b[1]).ok_or(ParseError::Malformed)?;
    let n = usize::from(be16(&b[2..]));
    if n > MAX_NOTICE_IDS || b.len() != NOTICE_FIXED + 8 * n {
        return Err(ParseError::Malformed);
    }
    Ok(Body::Notice(Notice {
        kind,
        reason,
        ids: &b[NOTICE_FIXED..],
    }))
}

/// Starts a packet in `buf` (cleared first).
fn begin(buf: &mut Vec<u8>, kind: u8, header: &Header) {
    buf.clear();
    buf.extend_from_slice(&MAGIC);
    buf.push(VERSION);
    buf.push(kind);
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(&header.session.to_be_bytes());
    buf.extend_from_slice(&header.manifest);
    buf.extend_from_slice(&header.seq.to_be_bytes());
}

/// Fills in the length and appends the checksum.
fn finish(buf: &mut Vec<u8>) {
    let len = (buf.len() + TRAILER_LEN) as u16;
    buf[off::LENGTH..off::LENGTH + 2].copy_from_slice(&len.to_be_bytes());
    let crc = crc32c::crc32c(buf);
    buf.extend_from_slice(&crc.to_be_bytes());
}

pub fn write_data(buf: &mut Vec<u8>, header: &Header, data: &Data<'_>) {
    begin(buf, KIND_DATA, header);
    buf.extend_from_slice(&data.block.to_be_bytes());
    buf.extend_from_slice(&data.symbol.to_be_bytes());
    buf.push(u8::from(data.repair));
    buf.push(0);
    buf.extend_from_slice(data.payload);
    finish(buf);
}

pub fn write_announce(buf: &mut Vec<u8>, header: &Header, a: &Announce) {
    begin(buf, KIND_ANNOUNCE, header);
    buf.extend_from_slice(&a.length.to_be_bytes());
    buf.extend_from_slice(&a.block_size.to_be_bytes());
    buf.extend_from_slice(&a.block_count.to_be_bytes());
    buf.extend_from_slice(&a.symbol_size.to_be_bytes());
    buf.extend_from_slice(&a.repair_count.to_be_bytes());
    buf.extend_from_slice(&a.status_interval_ms.to_be_bytes());
    buf.extend_from_slice(&a.flags.to_be_bytes());
    buf.extend_from_slice(&a.rate_kbit.to_be_bytes());
    buf.extend_from_slice(&a.pass.to_be_bytes());
    finish(buf);
}

/// `bitmap` is cut to [`MAX_BITMAP_BITS`] and `nacks` to [`MAX_NACKS`].
pub fn write_status(
    buf: &mut Vec<u8>,
    header: &Header,
    s: &StatusFields,
    bitmap: &[u8],
    nacks: &[(u32, u16)],
) {
    let bitmap = &bitmap[..bitmap.len().min(MAX_BITMAP_BITS / 8)];
    let nacks = &nacks[..nacks.len().min(MAX_NACKS)];
    begin(buf, KIND_STATUS, header);
    buf.extend_from_slice(&s.receiver.to_be_bytes());
    buf.push(u8::from(s.done) | u8::from(s.leaving) << 1);
    buf.push(0);
    buf.extend_from_slice(&(nacks.len() as u16).to_be_bytes());
    buf.extend_from_slice(&s.blocks_done.to_be_bytes());
    buf.extend_from_slice(&s.loss_ppm.to_be_bytes());
    buf.extend_from_slice(&s.overflow_ppm.to_be_bytes());
    buf.extend_from_slice(&s.rx_kbit.to_be_bytes());
    buf.extend_from_slice(&s.max_kbit.to_be_bytes());
    buf.extend_from_slice(&s.highest_seq.to_be_bytes());
    buf.extend_from_slice(&s.window_start.to_be_bytes());
    buf.extend_from_slice(&((bitmap.len() * 8) as u16).to_be_bytes());
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(bitmap);
    for (block, need) in nacks {
        buf.extend_from_slice(&block.to_be_bytes());
        buf.extend_from_slice(&need.to_be_bytes());
    }
    finish(buf);
}

/// `ids` is cut to [`MAX_NOTICE_IDS`].
pub fn write_notice(
    buf: &mut Vec<u8>,
    header: &Header,
    kind: NoticeKind,
    reason: Reason,
    ids: &[u64],
) {
    let ids = &ids[..ids.len().min(MAX_NOTICE_IDS)];
    begin(buf, KIND_NOTICE, header);
    buf.push(match kind {
        NoticeKind::GoUnicast => 1,
        NoticeKind::Done => 2,
        NoticeKind::Acknowledged => 3,
    });
    buf.push(reason.code());
    buf.extend_from_slice(&(ids.len() as u16).to_be_bytes());
    for id in ids {
        buf.extend_from_slice(&id.to_be_bytes());
    }
    finish(buf);
}

// Callers have checked the lengths; a short slice reads as zeros rather than panicking.
fn be16(b: &[u8]) -> u16 {
    let mut a = [0u8; 2];
    let n = b.len().min(2);
    a[..n].copy_from_slice(&b[..n]);
    u16::from_be_bytes(a)
}

fn be32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    let n = b.len().min(4);
    a[..n].copy_from_slice(&b[..n]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = b.len().min(8);
    a[..n].copy_from_slice(&b[..n]);
    u64::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H: Header = Header {
        session: 0x0102_0304_0506_0708,
        manifest: [9; 32],
        seq: 42,
    };

    #[test]
    fn data_round_trips_and_fits_the_mtu() {
        let payload = [7u8; crate::blocks::DEFAULT_SYMBOL_SIZE as usize];
        let mut buf = Vec::new();
        let d = Data {
            block: 3,
            symbol: 800,
            repair: true,
            payload: &payload,
        };
        write_data(&mut buf, &H, &d);
        assert_eq!(buf.len(), 1500 - 20 - 8);
        assert_eq!(parse(&buf), Ok((H, Body::Data(d))));
    }

    #[test]
    fn announce_round_trips() {
        let a = Announce {
            length: 1 << 33,
            block_size: 1 << 20,
            block_count: 8192,
            symbol_size: 1400,
            repair_count: 749,
            status_interval_ms: 100,
            flags: HASHES_OUT_OF_BAND,
            rate_kbit: 500_000,
            pass: 2,
        };
        let mut buf = Vec::new();
        write_announce(&mut buf, &H, &a);
        assert_eq!(buf.len(), MIN_LEN + ANNOUNCE_LEN);
        assert_eq!(parse(&buf), Ok((H, Body::Announce(a))));
    }

    #[test]
    fn status_round_trips_with_bitmap_and_nacks() {
        let s = StatusFields {
            receiver: 77,
            done: false,
            leaving: true,
            blocks_done: 10,
            loss_ppm: 50_000,
            overflow_ppm: 1,
            rx_kbit: 400_000,
            max_kbit: 0,
            highest_seq: 123_456,
            window_start: 16,
        };
        let mut buf = Vec::new();
        write_status(
            &mut buf,
            &H,
            &s,
            &[0b0000_0101, 0x80],
            &[(17, 3), (40, 700)],
        );
        let Ok((_, Body::Status(p))) = parse(&buf) else {
            panic!("status did not parse");
        };
        assert_eq!(p.fields, s);
        assert_eq!(p.window_len(), 16);
        let missing: Vec<u32> = (0..16).filter(|&i| p.missing(i)).collect();
        assert_eq!(missing, [0, 2, 15]);
        assert_eq!(p.nacks().collect::<Vec<_>>(), [(17, 3), (40, 700)]);
        // The largest status still fits in one datagram.
        write_status(
            &mut buf,
            &H,
            &s,
            &[0xff; MAX_BITMAP_BITS / 8 + 10],
            &[(1, 1); MAX_NACKS + 5],
        );
        assert_eq!(buf.len(), MAX_CONTROL_LEN);
        const { assert!(MAX_CONTROL_LEN <= 1472) };
        assert!(parse(&buf).is_ok());
    }

    #[test]
    fn notice_round_trips() {
        let mut buf = Vec::new();
        write_notice(
            &mut buf,
            &H,
            NoticeKind::GoUnicast,
            Reason::TooSlow,
            &[5, 6],
        );
        let Ok((_, Body::Notice(n))) = parse(&buf) else {
            panic!("notice did not parse");
        };
        assert_eq!((n.kind, n.reason), (NoticeKind::GoUnicast, Reason::TooSlow));
        assert_eq!(n.ids().collect::<Vec<_>>(), [5, 6]);
    }

    #[test]
    fn checks_come_in_the_documented_order() {
        let mut good = Vec::new();
        write_notice(&mut good, &H, NoticeKind::Done, Reason::SessionEnded, &[]);
        assert_eq!(parse(&good[..5]), Err(ParseError::Truncated));
        assert_eq!(parse(&good[..good.len() - 1]), Err(ParseError::Truncated));
        let mut longer = good.clone();
        longer.push(0);
        assert_eq!(parse(&longer), Err(ParseError::Length));
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(parse(&bad), Err(ParseError::NotOurs));
        let mut bad = good.clone();
        bad[4] = 2;
        assert_eq!(parse(&bad), Err(ParseError::Version(2)));
        let mut bad = good.clone();
        bad[20] ^= 1;
        assert_eq!(parse(&bad), Err(ParseError::Checksum));
        let mut bad = good.clone();
        bad[5] = 9;
        let n = bad.len() - TRAILER_LEN;
        let crc = crc32c::crc32c(&bad[..n]).to_be_bytes();
        bad[n..].copy_from_slice(&crc);
        assert_eq!(parse(&bad), Err(ParseError::UnknownType(9)));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn any_flipped_bit_is_refused(byte in 0usize..1468, bit in 0u8..8) {
            let payload = [0x5au8; 1400];
            let mut buf = Vec::new();
            write_data(&mut buf, &H, &Data { block: 1, symbol: 2, repair: false, payload: &payload });
            buf[byte] ^= 1 << bit;
            prop_assert!(parse(&buf).is_err());
        }

        #[test]
        fn any_truncation_is_refused(cut in 0usize..1468) {
            let payload = [0x5au8; 1400];
            let mut buf = Vec::new();
            write_data(&mut buf, &H, &Data { block: 1, symbol: 2, repair: false, payload: &payload });
            prop_assert_eq!(parse(&buf[..cut]), Err(ParseError::Truncated));
        }
    }
}
