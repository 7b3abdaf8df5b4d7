//! A checked view of a received BOOTP/DHCP request (RFC 2131 section 2, RFC 2132).
//!
//! Requests are parsed here rather than with `dhcproto`'s decoder because that decoder can
//! panic on hostile input (a `hlen` above 16 makes `Message::chaddr` slice out of bounds;
//! option 94 of the wrong length trips a `debug_assert`) and allocates for every option.
//! This view borrows the datagram, copies only what the server decides on, and rejects
//! anything that does not fit. Replies are built with `dhcproto` (see `reply.rs`).

use std::borrow::Cow;
use std::net::Ipv4Addr;

use dhcproto::v4::MessageType;
use metalcast_proto::MacAddr;

pub(crate) const OP: usize = 0;
pub(crate) const HTYPE: usize = 1;
pub(crate) const HLEN: usize = 2;
pub(crate) const XID: usize = 4;
pub(crate) const FLAGS: usize = 10;
pub(crate) const CIADDR: usize = 12;
pub(crate) const GIADDR: usize = 24;
pub(crate) const CHADDR: usize = 28;
pub(crate) const SNAME: usize = 44;
pub(crate) const FILE: usize = 108;
pub(crate) const MAGIC: usize = 236;
pub(crate) const OPTIONS: usize = 240;
pub(crate) const CHADDR_LEN: usize = 16;
const SNAME_LEN: usize = 64;
const FILE_LEN: usize = 128;

pub(crate) const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
pub(crate) const BOOTREQUEST: u8 = 1;
pub(crate) const HTYPE_ETHERNET: u8 = 1;
const ETHERNET_HLEN: u8 = 6;

/// Option codes the server reads.
pub(crate) mod code {
    pub const PAD: u8 = 0;
    pub const HOSTNAME: u8 = 12;
    pub const REQUESTED_IP: u8 = 50;
    pub const OVERLOAD: u8 = 52;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const CLASS_ID: u8 = 60;
    pub const USER_CLASS: u8 = 77;
    pub const RELAY_AGENT_INFO: u8 = 82;
    pub const CLIENT_ARCH: u8 = 93;
    pub const CLIENT_MACHINE_ID: u8 = 97;
    pub const END: u8 = 255;
}

/// Why a datagram was not accepted as a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ParseError {
    #[error("{0} bytes is shorter than a DHCP message")]
    Truncated(usize),
    #[error("op {0} is not BOOTREQUEST")]
    NotRequest(u8),
    #[error("hardware type {htype} length {hlen} is not Ethernet")]
    NotEthernet { htype: u8, hlen: u8 },
    #[error("no DHCP magic cookie (plain BOOTP is not served)")]
    NoMagic,
    #[error("option {0} runs past the end of its field")]
    OptionOverrun(u8),
    #[error("option {code} has length {len}")]
    BadLength { code: u8, len: usize },
    #[error("no DHCP message type option")]
    NoMessageType,
}

/// The parts of a request the server decides on. Options split over several instances are
/// joined as RFC 3396 says; options in `file`/`sname` are read when option 52 says so.
#[derive(Debug, Clone)]
pub(crate) struct Request<'a> {
    pub xid: u32,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; CHADDR_LEN],
    pub mac: MacAddr,
    pub msg_type: MessageType,
    pub requested_ip: Option<Ipv4Addr>,
    pub server_id: Option<Ipv4Addr>,
    pub hostname: Option<Cow<'a, [u8]>>,
    pub class_id: Option<Cow<'a, [u8]>>,
    pub user_class: Option<Cow<'a, [u8]>>,
    /// First entry of option 93 (RFC 4578 2.1 allows a list; the first is the preferred).
    pub arch: Option<u16>,
    pub machine_id: Option<Cow<'a, [u8]>>,
    /// Option 82 exactly as received, to be echoed (RFC 3046 2.2).
    pub relay_info: Option<Cow<'a, [u8]>>,
}

/// Raw option values as found, before their lengths are checked.
#[derive(Default)]
struct Raw<'a> {
    hostname: Option<Cow<'a, [u8]>>,
    requested_ip: Option<Cow<'a, [u8]>>,
    overload: Option<Cow<'a, [u8]>>,
    msg_type: Option<Cow<'a, [u8]>>,
    server_id: Option<Cow<'a, [u8]>>,
    class_id: Option<Cow<'a, [u8]>>,
    user_class: Option<Cow<'a, [u8]>>,
    relay_info: Option<Cow<'a, [u8]>>,
    arch: Option<Cow<'a, [u8]>>,
    machine_id: Option<Cow<'a, [u8]>>,
}

impl<'a> Raw<'a> {
    fn slot(&mut self, code: u8) -> Option<&mut Option<Cow<'a, [u8]>>> {
        Some(match code {
            code::HOSTNAME => &mut self.hostname,
            code::REQUESTED_IP => &mut self.requested_ip,
            code::OVERLOAD => &mut self.overload,
            code::MESSAGE_TYPE => &mut self.msg_type,
            code::SERVER_ID => &mut self.server_id,
            code::CLASS_ID => &mut self.class_id,
            code::USER_CLASS => &mut self.user_class,
            code::RELAY_AGENT_INFO => &mut self.relay_info,
            code::CLIENT_ARCH => &mut self.arch,
            code::CLIENT_MACHINE_ID => &mut self.machine_id,
            _ => return None,
        })
    }

    /// Walks one option area. Stops at END; a missing END ends the area at its last byte.
    fn walk(&mut self, area: &'a [u8]) -> Result<(), ParseError> {
        let mut i = 0;
        while let Some(&code) = area.get(i) {
            match code {
                code::END => return Ok(()),
                code::PAD => i += 1,
                _ => {
                    let len = usize::from(*area.get(i + 1).ok_or(ParseError::OptionOverrun(code))?);
                    let data = area
                        .get(i + 2..i + 2 + len)
                        .ok_or(ParseError::OptionOverrun(code))?;
                    if let Some(slot) = self.slot(code) {
                        match slot {
                            None => *slot = Some(Cow::Borrowed(data)),
                            // RFC 3396: later instances continue the value.
                            Some(value) => value.to_mut().extend_from_slice(data),
                        }
                    }
                    i += 2 + len;
                }
            }
        }
        Ok(())
    }
}

fn ipv4_at(data: &[u8], at: usize) -> Ipv4Addr {
    let mut b = [0u8; 4];
    b.copy_from_slice(&data[at..at + 4]);
    Ipv4Addr::from(b)
}

fn ipv4_option(code: u8, raw: Option<Cow<'_, [u8]>>) -> Result<Option<Ipv4Addr>, ParseError> {
    match raw {
        None => Ok(None),
        Some(v) => match <[u8; 4]>::try_from(v.as_ref()) {
            Ok(b) => Ok(Some(Ipv4Addr::from(b))),
            Err(_) => Err(ParseError::BadLength { code, len: v.len() }),
        },
    }
}

/// Parses a datagram received on a server port. Never panics.
pub(crate) fn parse(data: &[u8]) -> Result<Request<'_>, ParseError> {
    if data.len() < OPTIONS {
        return Err(ParseError::Truncated(data.len()));
    }
    // Length checked above: every fixed-offset read below is in bounds.
    if data[OP] != BOOTREQUEST {
        return Err(ParseError::NotRequest(data[OP]));
    }
    let (htype, hlen) = (data[HTYPE], data[HLEN]);
    if htype != HTYPE_ETHERNET || hlen != ETHERNET_HLEN {
        return Err(ParseError::NotEthernet { htype, hlen });
    }
    if data[MAGIC..OPTIONS] != MAGIC_COOKIE {
        return Err(ParseError::NoMagic);
    }

    let mut raw = Raw::default();
    raw.walk(&data[OPTIONS..])?;
    // RFC 2131 4.1 / RFC 2132 9.3: 1 = options continue in `file`, 2 = in `sname`, 3 = both,
    // read in that order. A 52 found inside those fields is ignored.
    let overload = match raw.overload.take() {
        None => 0,
        Some(v) if v.len() == 1 && (1..=3).contains(&v[0]) => v[0],
        Some(v) => {
            return Err(ParseError::BadLength {
                code: code::OVERLOAD,
                len: v.len(),
            });
        }
    };
    if overload & 1 != 0 {
        raw.walk(&data[FILE..FILE + FILE_LEN])?;
    }
    if overload & 2 != 0 {
        raw.walk(&data[SNAME..SNAME + SNAME_LEN])?;
    }

    let msg_type = match raw.msg_type.take() {
        None => return Err(ParseError::NoMessageType),
        Some(v) if v.len() == 1 => MessageType::from(v[0]),
        Some(v) => {
            return Err(ParseError::BadLength {
                code: code::MESSAGE_TYPE,
                len: v.len(),
            });
        }
    };
    // RFC 4578 2.1: a list of 16-bit types. A malformed one is treated as absent: the
    // client then simply gets no boot file.
    let arch = raw
        .arch
        .as_deref()
        .filter(|v| !v.is_empty() && v.len() % 2 == 0)
        .map(|v| u16::from_be_bytes([v[0], v[1]]));

    let mut chaddr = [0u8; CHADDR_LEN];
    chaddr.copy_from_slice(&data[CHADDR..CHADDR + CHADDR_LEN]);
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&chaddr[..6]);

    Ok(Request {
        xid: u32::from_be_bytes([data[XID], data[XID + 1], data[XID + 2], data[XID + 3]]),
        flags: u16::from_be_bytes([data[FLAGS], data[FLAGS + 1]]),
        ciaddr: ipv4_at(data, CIADDR),
        giaddr: ipv4_at(data, GIADDR),
        chaddr,
        mac: MacAddr(mac),
        msg_type,
        requested_ip: ipv4_option(code::REQUESTED_IP, raw.requested_ip)?,
        server_id: ipv4_option(code::SERVER_ID, raw.server_id)?,
        hostname: raw.hostname,
        class_id: raw.class_id,
        user_class: raw.user_class,
        arch,
        machine_id: raw.machine_id,
        relay_info: raw.relay_info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Pkt, mac};

    fn header_of(pkt: &[u8]) -> Vec<u8> {
        pkt[..OPTIONS].to_vec()
    }

    #[test]
    fn reads_fixed_fields_and_options() {
        let bytes = Pkt::discover(mac(7))
            .xid(0x1234_5678)
            .giaddr([10, 1, 0, 1])
            .requested([10, 0, 0, 120])
            .arch(7)
            .pxe()
            .ipxe()
            .circuit_id(b"ab")
            .build();
        let r = parse(&bytes).unwrap();
        assert_eq!(r.xid, 0x1234_5678);
        assert_eq!(r.mac, mac(7));
        assert_eq!(r.msg_type, MessageType::Discover);
        assert_eq!(r.giaddr, Ipv4Addr::new(10, 1, 0, 1));
        assert_eq!(r.requested_ip, Some(Ipv4Addr::new(10, 0, 0, 120)));
        assert_eq!(r.arch, Some(7));
        assert!(r.class_id.unwrap().starts_with(b"PXEClient"));
        assert_eq!(r.user_class.as_deref(), Some(&b"iPXE"[..]));
        assert_eq!(r.relay_info.as_deref(), Some(&[1, 2, b'a', b'b'][..]));
    }

    #[test]
    fn joins_split_options_rfc3396() {
        let mut bytes = header_of(&Pkt::discover(mac(1)).build());
        bytes.extend([53, 1, 1, 60, 3, b'P', b'X', b'E', 12, 1, b'n', 60, 6]);
        bytes.extend(b"Client");
        bytes.push(255);
        let r = parse(&bytes).unwrap();
        assert_eq!(r.class_id.as_deref(), Some(&b"PXEClient"[..]));
        assert_eq!(r.hostname.as_deref(), Some(&b"n"[..]));
    }

    #[test]
    fn reads_overloaded_file_and_sname() {
        let mut bytes = header_of(&Pkt::discover(mac(1)).build());
        bytes[FILE..FILE + 4].copy_from_slice(&[93, 2, 0, 7]);
        bytes[FILE + 4] = 255;
        bytes[SNAME..SNAME + 6].copy_from_slice(&[77, 4, b'i', b'P', b'X', b'E']);
        bytes.extend([53, 1, 1, 52, 1, 3, 255]);
        let r = parse(&bytes).unwrap();
        assert_eq!(r.arch, Some(7));
        assert_eq!(r.user_class.as_deref(), Some(&b"iPXE"[..]));
    }

    #[test]
    fn tolerates_missing_end_and_padding() {
        let mut bytes = header_of(&Pkt::discover(mac(1)).build());
        bytes.extend([0, 0, 53, 1, 3, 0]);
        assert_eq!(parse(&bytes).unwrap().msg_type, MessageType::Request);
    }

    #[test]
    fn rejects_what_does_not_fit() {
        let good = Pkt::discover(mac(1)).build();
        assert_eq!(parse(&good[..100]).unwrap_err(), ParseError::Truncated(100));

        let mut b = good.clone();
        b[OP] = 2;
        assert_eq!(parse(&b).unwrap_err(), ParseError::NotRequest(2));

        let mut b = good.clone();
        b[HLEN] = 20;
        assert!(matches!(
            parse(&b).unwrap_err(),
            ParseError::NotEthernet { hlen: 20, .. }
        ));

        let mut b = good.clone();
        b[MAGIC] = 0;
        assert_eq!(parse(&b).unwrap_err(), ParseError::NoMagic);

        let mut b = header_of(&good);
        b.extend([53, 1, 1, 60, 9, b'P']);
        assert_eq!(parse(&b).unwrap_err(), ParseError::OptionOverrun(60));

        let mut b = header_of(&good);
        b.extend([53, 1, 1, 54, 3, 1, 2, 3, 255]);
        assert_eq!(
            parse(&b).unwrap_err(),
            ParseError::BadLength { code: 54, len: 3 }
        );

        let mut b = header_of(&good);
        b.extend([53, 2, 1, 1, 255]);
        assert_eq!(
            parse(&b).unwrap_err(),
            ParseError::BadLength { code: 53, len: 2 }
        );

        let mut b = header_of(&good);
        b.extend([12, 1, b'x', 255]);
        assert_eq!(parse(&b).unwrap_err(), ParseError::NoMessageType);
    }

    #[test]
    fn odd_length_arch_is_treated_as_absent() {
        let mut b = header_of(&Pkt::discover(mac(1)).build());
        b.extend([53, 1, 1, 93, 3, 0, 7, 1, 255]);
        assert_eq!(parse(&b).unwrap().arch, None);
    }
}
