//! Building and addressing replies (RFC 2131 4.1 and 4.3, RFC 3046 2.2).

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::Encodable;
use dhcproto::error::EncodeError;
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode};
use ipnet::Ipv4Net;

use crate::pxe::{self, Client};
use crate::wire::{Request, code};
use crate::{CLIENT_PORT, SERVER_PORT};

/// BOOTP's minimum message (RFC 951, RFC 1542 2.1): some relays and old PXE ROMs drop
/// anything shorter.
const MIN_REPLY_LEN: usize = 300;

/// Network settings of the pool a reply carries.
#[derive(Debug, Clone)]
pub(crate) struct Network {
    pub subnet: Ipv4Net,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
}

/// A reply decided by the handlers, before encoding.
#[derive(Debug, Clone)]
pub(crate) struct Draft {
    pub kind: MessageType,
    /// Zero in proxy and DHCPINFORM replies.
    pub yiaddr: Ipv4Addr,
    /// Lease time, T1 and T2 are sent when set (not for DHCPINFORM or proxy replies).
    pub lease_secs: Option<u32>,
    /// Index of the pool whose network settings are sent.
    pub pool: Option<usize>,
    pub hostname: Option<String>,
    /// Option 56, the reason of a DHCPNAK.
    pub message: Option<String>,
    /// Boot file name or URL, filled in by the boot handler.
    pub boot: Option<String>,
    /// Shown in the event line: "proxy", "inform".
    pub note: Option<&'static str>,
}

impl Draft {
    pub(crate) fn new(kind: MessageType, yiaddr: Ipv4Addr) -> Self {
        Draft {
            kind,
            yiaddr,
            lease_secs: None,
            pool: None,
            hostname: None,
            message: None,
            boot: None,
            note: None,
        }
    }

    pub(crate) fn nak(reason: String) -> Self {
        Draft {
            message: Some(reason),
            ..Draft::new(MessageType::Nak, Ipv4Addr::UNSPECIFIED)
        }
    }
}

pub(crate) fn kind_name(kind: MessageType) -> &'static str {
    match kind {
        MessageType::Discover => "DHCPDISCOVER",
        MessageType::Offer => "DHCPOFFER",
        MessageType::Request => "DHCPREQUEST",
        MessageType::Decline => "DHCPDECLINE",
        MessageType::Ack => "DHCPACK",
        MessageType::Nak => "DHCPNAK",
        MessageType::Release => "DHCPRELEASE",
        MessageType::Inform => "DHCPINFORM",
        _ => "DHCP",
    }
}

/// Where a reply goes (RFC 2131 4.1): back to the source on the PXE port; to the relay when
/// relayed; a DHCPNAK is broadcast; to the client's address when it has one; otherwise
/// broadcast, since we do not write ARP entries for addresses a client does not use yet.
pub(crate) fn destination(
    req: &Request<'_>,
    kind: MessageType,
    src: SocketAddrV4,
    pxe_port: bool,
) -> SocketAddrV4 {
    if pxe_port {
        src
    } else if !req.giaddr.is_unspecified() {
        SocketAddrV4::new(req.giaddr, SERVER_PORT)
    } else if kind == MessageType::Nak || req.ciaddr.is_unspecified() {
        SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
    } else {
        SocketAddrV4::new(req.ciaddr, CLIENT_PORT)
    }
}

/// Encodes `draft` as a reply to `req` from `server_ip`.
pub(crate) fn encode(
    req: &Request<'_>,
    client: &Client,
    draft: &Draft,
    network: Option<&Network>,
    server_ip: Ipv4Addr,
) -> Result<Vec<u8>, EncodeError> {
    let nak = draft.kind == MessageType::Nak;
    // Table 3 of RFC 2131: ciaddr is echoed in DHCPACK only.
    let ciaddr = if draft.kind == MessageType::Ack {
        req.ciaddr
    } else {
        Ipv4Addr::UNSPECIFIED
    };
    let boot = draft.boot.as_deref().filter(|f| f.len() < 128);
    let siaddr = if boot.is_some() {
        server_ip
    } else {
        Ipv4Addr::UNSPECIFIED
    };

    let mut m = Message::new_with_id(
        req.xid,
        ciaddr,
        draft.yiaddr,
        siaddr,
        req.giaddr,
        &req.chaddr[..6],
    );
    m.set_opcode(Opcode::BootReply);
    let mut flags = Flags::new(req.flags);
    if nak && !req.giaddr.is_unspecified() {
        // RFC 2131 4.3.2: the relay must broadcast a DHCPNAK.
        flags = flags.set_broadcast();
    }
    m.set_flags(flags);

    let opts = m.opts_mut();
    opts.insert(DhcpOption::MessageType(draft.kind));
    opts.insert(DhcpOption::ServerIdentifier(server_ip));
    if let Some(secs) = draft.lease_secs {
        opts.insert(DhcpOption::AddressLeaseTime(secs));
        // RFC 2131 4.4.5 defaults: T1 = 0.5, T2 = 0.875 of the lease.
        opts.insert(DhcpOption::Renewal(secs / 2));
        opts.insert(DhcpOption::Rebinding((u64::from(secs) * 7 / 8) as u32));
    }
    if let Some(net) = network {
        opts.insert(DhcpOption::SubnetMask(net.subnet.netmask()));
        if let Some(router) = net.router {
            opts.insert(DhcpOption::Router(vec![router]));
        }
        if !net.dns.is_empty() {
            opts.insert(DhcpOption::DomainNameServer(net.dns.clone()));
        }
        if let Some(domain) = &net.domain {
            opts.insert(DhcpOption::DomainName(domain.clone()));
        }
    }
    if let Some(name) = &draft.hostname {
        opts.insert(DhcpOption::Hostname(name.clone()));
    }
    if let Some(text) = &draft.message {
        opts.insert(DhcpOption::Message(text.clone()));
    }
    let server_name = server_ip.to_string();
    if let Some(file) = boot {
        opts.insert(DhcpOption::TFTPServerName(server_name.as_bytes().to_vec()));
        opts.insert(DhcpOption::BootfileName(file.as_bytes().to_vec()));
    }
    if client.pxe && !nak {
        opts.insert(DhcpOption::ClassIdentifier(pxe::PXE_CLASS.to_vec()));
        opts.insert(DhcpOption::VendorExtensions(pxe::VENDOR_OPTIONS.to_vec()));
        if let Some(id) = &req.machine_id {
            // PXE spec 2.1: replies to PXE clients carry the client's UUID back.
            opts.insert(DhcpOption::ClientMachineIdentifier(id.to_vec()));
        }
    }
    if let Some(file) = boot {
        m.set_sname_str(&server_name);
        m.set_fname_str(file);
    }

    let mut out = m.to_vec()?;
    if let Some(info) = &req.relay_info {
        append_before_end(&mut out, code::RELAY_AGENT_INFO, info);
    }
    if out.len() < MIN_REPLY_LEN {
        out.resize(MIN_REPLY_LEN, code::PAD);
    }
    Ok(out)
}

/// Adds an option verbatim as the last one (RFC 3046 2.1 wants option 82 last). `dhcproto`
/// would re-encode a parsed option 82, reordering or dropping sub-options it does not
/// model; the relay gets back exactly what it sent. Long values are split (RFC 3396).
fn append_before_end(out: &mut Vec<u8>, option: u8, value: &[u8]) {
    if out.last() == Some(&code::END) {
        out.pop();
    }
    if value.is_empty() {
        out.extend_from_slice(&[option, 0]);
    }
    for chunk in value.chunks(usize::from(u8::MAX)) {
        out.push(option);
        out.push(chunk.len() as u8);
        out.extend_from_slice(chunk);
    }
    out.push(code::END);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_option_lands_before_end_and_splits() {
        let mut out = vec![53, 1, 2, 255];
        append_before_end(&mut out, 82, &[1, 1, 9]);
        assert_eq!(out, vec![53, 1, 2, 82, 3, 1, 1, 9, 255]);

        let mut out = vec![255];
        append_before_end(&mut out, 82, &[7; 300]);
        assert_eq!(out[..2], [82, 255]);
        assert_eq!(out[257..259], [82, 45]);
        assert_eq!(out.len(), 2 + 255 + 2 + 45 + 1);
    }
}
