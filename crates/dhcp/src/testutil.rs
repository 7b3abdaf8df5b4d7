//! Test packets built with `dhcproto`, independent of the server's own parser.

use std::net::Ipv4Addr;

use dhcproto::v4::relay::{RelayAgentInformation, RelayInfo};
use dhcproto::v4::{Architecture, DhcpOption, Flags, Message, MessageType};
use dhcproto::{Decodable, Decoder, Encodable};
use metalcast_proto::MacAddr;

pub(crate) fn mac(n: u8) -> MacAddr {
    MacAddr([0x52, 0x54, 0x00, 0x00, 0x00, n])
}

/// A client request under construction.
pub(crate) struct Pkt(Message);

impl Pkt {
    pub(crate) fn new(kind: MessageType, mac: MacAddr) -> Self {
        let any = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(
            0x0b00_0000 | u32::from(mac.0[5]),
            any,
            any,
            any,
            any,
            &mac.0,
        );
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        Pkt(m)
    }

    pub(crate) fn discover(mac: MacAddr) -> Self {
        Pkt::new(MessageType::Discover, mac)
    }

    pub(crate) fn request(mac: MacAddr) -> Self {
        Pkt::new(MessageType::Request, mac)
    }

    pub(crate) fn xid(mut self, xid: u32) -> Self {
        self.0.set_xid(xid);
        self
    }

    pub(crate) fn ciaddr(mut self, ip: [u8; 4]) -> Self {
        self.0.set_ciaddr(ip);
        self
    }

    pub(crate) fn giaddr(mut self, ip: [u8; 4]) -> Self {
        self.0.set_giaddr(ip);
        self
    }

    pub(crate) fn broadcast_flag(mut self) -> Self {
        self.0.set_flags(Flags::default().set_broadcast());
        self
    }

    fn opt(mut self, opt: DhcpOption) -> Self {
        self.0.opts_mut().insert(opt);
        self
    }

    pub(crate) fn requested(self, ip: [u8; 4]) -> Self {
        self.opt(DhcpOption::RequestedIpAddress(ip.into()))
    }

    pub(crate) fn server_id(self, ip: [u8; 4]) -> Self {
        self.opt(DhcpOption::ServerIdentifier(ip.into()))
    }

    pub(crate) fn arch(self, arch: u16) -> Self {
        self.opt(DhcpOption::ClientSystemArchitecture(Architecture::from(
            arch,
        )))
        .opt(DhcpOption::ClientNetworkInterface(1, 2, 1))
    }

    /// Option 60 as firmware PXE and iPXE send it.
    pub(crate) fn pxe(self) -> Self {
        self.opt(DhcpOption::ClassIdentifier(
            b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
        ))
    }

    /// Option 77 as iPXE sends it.
    pub(crate) fn ipxe(self) -> Self {
        self.opt(DhcpOption::UserClass(b"iPXE".to_vec()))
    }

    pub(crate) fn hostname(self, name: &str) -> Self {
        self.opt(DhcpOption::Hostname(name.to_string()))
    }

    pub(crate) fn machine_id(self, id: &[u8]) -> Self {
        self.opt(DhcpOption::ClientMachineIdentifier(id.to_vec()))
    }

    pub(crate) fn circuit_id(self, id: &[u8]) -> Self {
        let mut info = RelayAgentInformation::default();
        info.insert(RelayInfo::AgentCircuitId(id.to_vec()));
        self.opt(DhcpOption::RelayAgentInformation(info))
    }

    pub(crate) fn build(&self) -> Vec<u8> {
        self.0.to_vec().expect("test packet encodes")
    }
}

/// Decodes a reply the server produced.
pub(crate) fn decode(bytes: &[u8]) -> Message {
    Message::decode(&mut Decoder::new(bytes)).expect("reply decodes")
}

/// The BOOTP `file` field of a reply, without its NUL padding.
pub(crate) fn boot_file(m: &Message) -> Option<String> {
    let raw = m.fname()?;
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    Some(String::from_utf8_lossy(&raw[..end]).into_owned())
}
