//! TFTP packets on the wire: a checked parser that borrows from the datagram, and the encoders the
//! server needs (DATA, ERROR, OACK). RFC 1350 §5 and RFC 2347 §2.

/// Opcodes (RFC 1350 §5, RFC 2347 for OACK).
const OP_RRQ: u16 = 1;
const OP_WRQ: u16 = 2;
const OP_DATA: u16 = 3;
const OP_ACK: u16 = 4;
const OP_ERROR: u16 = 5;
const OP_OACK: u16 = 6;

/// Length of the opcode field.
const OPCODE_LEN: usize = 2;
/// Length of the DATA / ACK header: opcode + block number.
pub const DATA_HEADER_LEN: usize = 4;

/// TFTP error codes (RFC 1350 appendix, RFC 2347 adds 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    NotDefined = 0,
    FileNotFound = 1,
    AccessViolation = 2,
    DiskFull = 3,
    IllegalOperation = 4,
    UnknownTransferId = 5,
    FileExists = 6,
    NoSuchUser = 7,
    OptionRefused = 8,
}

/// One parsed TFTP packet, borrowing from the received datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    Rrq(Request<'a>),
    Wrq(Request<'a>),
    Data { block: u16, data: &'a [u8] },
    Ack { block: u16 },
    Error { code: u16, message: &'a [u8] },
    Oack { options: Vec<(&'a [u8], &'a [u8])> },
}

/// The body of an RRQ or WRQ: `filename NUL mode NUL [option NUL value NUL]*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub filename: &'a [u8],
    pub mode: &'a [u8],
    /// Option name/value pairs in the order sent; names and values are raw bytes.
    pub options: Vec<(&'a [u8], &'a [u8])>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("datagram of {0} bytes is too short")]
    TooShort(usize),
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    #[error("{0} is not NUL-terminated")]
    Unterminated(&'static str),
}

/// Parses one datagram.
///
/// Lenient where RFC 1350 clients are known to be sloppy and nothing is at stake: an ERROR message
/// without its final NUL is taken whole (so a client's abort is never missed), and a trailing
/// option without a value is dropped. Filename and mode must be NUL-terminated.
pub fn parse(datagram: &[u8]) -> Result<Packet<'_>, ParseError> {
    let Some((opcode, body)) = split_u16(datagram) else {
        return Err(ParseError::TooShort(datagram.len()));
    };
    match opcode {
        OP_RRQ => parse_request(body).map(Packet::Rrq),
        OP_WRQ => parse_request(body).map(Packet::Wrq),
        OP_DATA => {
            let (block, data) = split_u16(body).ok_or(ParseError::TooShort(datagram.len()))?;
            Ok(Packet::Data { block, data })
        }
        OP_ACK => {
            let (block, _) = split_u16(body).ok_or(ParseError::TooShort(datagram.len()))?;
            Ok(Packet::Ack { block })
        }
        OP_ERROR => {
            let (code, rest) = split_u16(body).ok_or(ParseError::TooShort(datagram.len()))?;
            let message = rest.split(|&b| b == 0).next().unwrap_or_default();
            Ok(Packet::Error { code, message })
        }
        OP_OACK => Ok(Packet::Oack {
            options: parse_options(body),
        }),
        other => Err(ParseError::UnknownOpcode(other)),
    }
}

fn split_u16(bytes: &[u8]) -> Option<(u16, &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<OPCODE_LEN>()?;
    Some((u16::from_be_bytes(*head), rest))
}

fn parse_request(body: &[u8]) -> Result<Request<'_>, ParseError> {
    let (filename, rest) = split_cstr(body).ok_or(ParseError::Unterminated("filename"))?;
    let (mode, rest) = split_cstr(rest).ok_or(ParseError::Unterminated("mode"))?;
    Ok(Request {
        filename,
        mode,
        options: parse_options(rest),
    })
}

/// Splits at the first NUL: the string before it and the bytes after it.
fn split_cstr(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = bytes.iter().position(|&b| b == 0)?;
    Some((&bytes[..nul], &bytes[nul + 1..]))
}

fn parse_options(region: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut fields: Vec<&[u8]> = region.split(|&b| b == 0).collect();
    // A terminated list ends in an empty fragment; an unterminated last value (some clients forget
    // the final NUL) is kept as a value.
    if region.last().is_none_or(|&b| b == 0) {
        fields.pop();
    }
    // `chunks_exact` drops a dangling name that has no value.
    fields
        .chunks_exact(2)
        .map(|pair| (pair[0], pair[1]))
        .collect()
}

/// Writes a DATA header for `block` into `buf` (cleared first); the caller appends the payload.
pub fn encode_data_header(buf: &mut Vec<u8>, block: u16) {
    buf.clear();
    buf.extend_from_slice(&OP_DATA.to_be_bytes());
    buf.extend_from_slice(&block.to_be_bytes());
}

/// Writes an ERROR packet into `buf` (cleared first).
pub fn encode_error(buf: &mut Vec<u8>, code: ErrorCode, message: &str) {
    buf.clear();
    buf.extend_from_slice(&OP_ERROR.to_be_bytes());
    buf.extend_from_slice(&(code as u16).to_be_bytes());
    // A NUL inside the message would truncate it on the client; drop any.
    buf.extend(message.bytes().filter(|&b| b != 0));
    buf.push(0);
}

/// Writes an OACK packet into `buf` (cleared first).
pub fn encode_oack<'a>(buf: &mut Vec<u8>, options: impl IntoIterator<Item = (&'a str, &'a str)>) {
    buf.clear();
    buf.extend_from_slice(&OP_OACK.to_be_bytes());
    for (name, value) in options {
        buf.extend_from_slice(name.as_bytes());
        buf.push(0);
        buf.extend_from_slice(value.as_bytes());
        buf.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rrq_with_options() {
        let dgram = b"\x00\x01ipxe.efi\0octet\0blksize\x001468\0tsize\x000\0";
        let Ok(Packet::Rrq(req)) = parse(dgram) else {
            panic!("not an RRQ: {:?}", parse(dgram));
        };
        assert_eq!(req.filename, b"ipxe.efi");
        assert_eq!(req.mode, b"octet");
        assert_eq!(
            req.options,
            vec![(&b"blksize"[..], &b"1468"[..]), (&b"tsize"[..], &b"0"[..])]
        );
    }

    #[test]
    fn last_option_value_without_nul_is_kept() {
        let Ok(Packet::Rrq(req)) = parse(b"\x00\x01f\0octet\0blksize\x001468") else {
            panic!("not an RRQ");
        };
        assert_eq!(req.options, vec![(&b"blksize"[..], &b"1468"[..])]);
    }

    #[test]
    fn dangling_option_name_is_dropped() {
        let Ok(Packet::Rrq(req)) = parse(b"\x00\x01f\0octet\0blksize\0") else {
            panic!("not an RRQ");
        };
        assert!(req.options.is_empty());
    }

    #[test]
    fn request_without_terminated_mode_is_malformed() {
        assert_eq!(
            parse(b"\x00\x01file\0octet"),
            Err(ParseError::Unterminated("mode"))
        );
        assert_eq!(
            parse(b"\x00\x01file"),
            Err(ParseError::Unterminated("filename"))
        );
    }

    #[test]
    fn short_and_unknown_datagrams_are_errors() {
        assert_eq!(parse(b""), Err(ParseError::TooShort(0)));
        assert_eq!(parse(b"\x00"), Err(ParseError::TooShort(1)));
        assert_eq!(parse(b"\x00\x04\x01"), Err(ParseError::TooShort(3)));
        assert_eq!(parse(b"\x00\x09xx"), Err(ParseError::UnknownOpcode(9)));
    }

    #[test]
    fn parses_ack_data_error() {
        assert_eq!(
            parse(b"\x00\x04\x12\x34"),
            Ok(Packet::Ack { block: 0x1234 })
        );
        assert_eq!(
            parse(b"\x00\x03\x00\x01abc"),
            Ok(Packet::Data {
                block: 1,
                data: b"abc"
            })
        );
        assert_eq!(
            parse(b"\x00\x05\x00\x08tsize probe\0"),
            Ok(Packet::Error {
                code: 8,
                message: b"tsize probe"
            })
        );
        // Unterminated message: still an abort.
        assert_eq!(
            parse(b"\x00\x05\x00\x00bye"),
            Ok(Packet::Error {
                code: 0,
                message: b"bye"
            })
        );
    }

    #[test]
    fn encoders_round_trip() {
        let mut buf = Vec::new();
        encode_error(&mut buf, ErrorCode::FileNotFound, "no\0such file");
        assert_eq!(
            parse(&buf),
            Ok(Packet::Error {
                code: 1,
                message: b"nosuch file"
            })
        );
        encode_oack(&mut buf, [("blksize", "1468"), ("tsize", "42")]);
        assert_eq!(
            parse(&buf),
            Ok(Packet::Oack {
                options: vec![(&b"blksize"[..], &b"1468"[..]), (&b"tsize"[..], &b"42"[..])]
            })
        );
        encode_data_header(&mut buf, 65535);
        buf.extend_from_slice(b"xy");
        assert_eq!(
            parse(&buf),
            Ok(Packet::Data {
                block: 65535,
                data: b"xy"
            })
        );
    }
}
