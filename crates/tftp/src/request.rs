//! What to do with a datagram that arrives on the listening port: serve a read request, refuse it
//! with a TFTP error, or drop it.

use crate::packet::{self, ErrorCode, Packet, ParseError};

/// Transfer mode of a read request (RFC 1350 §1). "mail" is obsolete and refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Octet,
    /// Text: LF is sent as CR LF and CR as CR NUL.
    Netascii,
}

/// One option as the client sent it; the name is lowercased (RFC 2347: case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedOption {
    pub name: String,
    pub value: String,
}

impl RequestedOption {
    pub fn new(name: &str, value: &str) -> Self {
        Self {
            name: name.to_ascii_lowercase(),
            value: value.to_owned(),
        }
    }
}

/// A read request accepted for serving, owned so it can move into the transfer's task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    /// The file name exactly as sent (bytes; TFTP does not promise UTF-8).
    pub filename: Vec<u8>,
    pub mode: Mode,
    pub options: Vec<RequestedOption>,
}

impl ReadRequest {
    /// The file name for logs and events.
    pub fn display_name(&self) -> String {
        String::from_utf8_lossy(&self.filename).into_owned()
    }
}

/// Why a datagram on the listening port is not served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("malformed packet: {0}")]
    Malformed(#[from] ParseError),
    #[error("write request for {file:?} on a read-only server")]
    Write { file: String },
    #[error("unsupported transfer mode {mode:?} for {file:?}")]
    UnsupportedMode { file: String, mode: String },
    #[error("unexpected {0} packet on the listening port")]
    NotARequest(&'static str),
    #[error("error packet from client on the listening port")]
    ClientError,
}

impl RequestError {
    /// The TFTP error to send back, or `None` when the datagram is dropped silently (malformed
    /// packets, and ERROR packets, which are never answered).
    pub fn reply(&self) -> Option<(ErrorCode, &'static str)> {
        match self {
            Self::Malformed(_) | Self::ClientError => None,
            Self::Write { .. } => Some((
                ErrorCode::AccessViolation,
                "access violation: read-only server",
            )),
            Self::UnsupportedMode { .. } => Some((
                ErrorCode::IllegalOperation,
                "unsupported transfer mode (use octet or netascii)",
            )),
            Self::NotARequest(_) => Some((ErrorCode::IllegalOperation, "illegal TFTP operation")),
        }
    }

    /// The requested file, for requests that named one.
    pub fn file(&self) -> Option<&str> {
        match self {
            Self::Write { file } | Self::UnsupportedMode { file, .. } => Some(file),
            Self::Malformed(_) | Self::NotARequest(_) | Self::ClientError => None,
        }
    }
}

/// Classifies the first datagram of a would-be transfer.
pub fn parse_request(datagram: &[u8]) -> Result<ReadRequest, RequestError> {
    match packet::parse(datagram)? {
        Packet::Rrq(req) => {
            let file = String::from_utf8_lossy(req.filename);
            let mode = if req.mode.eq_ignore_ascii_case(b"octet") {
                Mode::Octet
            } else if req.mode.eq_ignore_ascii_case(b"netascii") {
                Mode::Netascii
            } else {
                return Err(RequestError::UnsupportedMode {
                    file: file.into_owned(),
                    mode: String::from_utf8_lossy(req.mode).into_owned(),
                });
            };
            let options = req
                .options
                .iter()
                .map(|(name, value)| {
                    RequestedOption::new(
                        &String::from_utf8_lossy(name),
                        &String::from_utf8_lossy(value),
                    )
                })
                .collect();
            Ok(ReadRequest {
                filename: req.filename.to_vec(),
                mode,
                options,
            })
        }
        Packet::Wrq(req) => Err(RequestError::Write {
            file: String::from_utf8_lossy(req.filename).into_owned(),
        }),
        Packet::Data { .. } => Err(RequestError::NotARequest("DATA")),
        Packet::Ack { .. } => Err(RequestError::NotARequest("ACK")),
        Packet::Oack { .. } => Err(RequestError::NotARequest("OACK")),
        Packet::Error { .. } => Err(RequestError::ClientError),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octet_rrq_is_served_with_lowercased_option_names() {
        let req = parse_request(b"\x00\x01undionly.kpxe\0OCTET\0BlkSize\x001468\0tsize\x000\0");
        assert_eq!(
            req,
            Ok(ReadRequest {
                filename: b"undionly.kpxe".to_vec(),
                mode: Mode::Octet,
                options: vec![
                    RequestedOption::new("blksize", "1468"),
                    RequestedOption::new("tsize", "0"),
                ],
            })
        );
    }

    #[test]
    fn netascii_rrq_is_served() {
        let req = parse_request(b"\x00\x01motd\0NetASCII\0");
        assert_eq!(req.map(|r| r.mode), Ok(Mode::Netascii));
    }

    #[test]
    fn wrq_is_an_access_violation() {
        let err = parse_request(b"\x00\x02upload.bin\0octet\0").expect_err("refused");
        assert_eq!(
            err.reply(),
            Some((
                ErrorCode::AccessViolation,
                "access violation: read-only server"
            ))
        );
        assert_eq!(err.file(), Some("upload.bin"));
    }

    #[test]
    fn mail_mode_is_refused() {
        let err = parse_request(b"\x00\x01f\0mail\0").expect_err("refused");
        assert_eq!(err.reply().map(|r| r.0), Some(ErrorCode::IllegalOperation));
    }

    #[test]
    fn other_opcodes_are_illegal_operations() {
        for dgram in [
            &b"\x00\x03\x00\x01data"[..],
            b"\x00\x04\x00\x01",
            b"\x00\x06blksize\x00512\0",
        ] {
            let err = parse_request(dgram).expect_err("refused");
            assert_eq!(err.reply().map(|r| r.0), Some(ErrorCode::IllegalOperation));
        }
    }

    #[test]
    fn errors_and_malformed_packets_are_dropped_silently() {
        for dgram in [
            &b"\x00\x05\x00\x00bye\0"[..],
            b"\x01",
            b"\x00\x01nonul",
            b"\x00\x63",
        ] {
            assert_eq!(parse_request(dgram).expect_err("refused").reply(), None);
        }
    }
}
