//! Socket details in one place: the listening socket reports which local address each request
//! was sent to (IP_PKTINFO / IPV6_PKTINFO), so a transfer answers from that same address even
//! when the server listens on the unspecified address of a multi-homed host.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;

use nix::libc;
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrLike, SockaddrStorage, recvmsg, setsockopt, sockopt,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Asks the kernel to attach the destination address to every received datagram.
pub(crate) fn enable_pktinfo(socket: &UdpSocket) -> io::Result<()> {
    if socket.local_addr()?.is_ipv6() {
        setsockopt(socket, sockopt::Ipv6RecvPacketInfo, &true)?;
    }
    // Also on an IPv6 socket: IPv4 clients of a dual-stack socket report through IP_PKTINFO.
    setsockopt(socket, sockopt::Ipv4PacketInfo, &true)?;
    Ok(())
}

/// Room for a rack's worth of requests arriving at once (the default ~208 KiB holds about 200
/// small datagrams, and a rack powering on sends more before the listener drains them).
const LISTEN_RECEIVE_BUFFER: usize = 4 << 20;

/// Enlarges the listening socket's receive buffer: above `net.core.rmem_max` when privileged
/// (SO_RCVBUFFORCE), up to it otherwise. Best effort; a smaller buffer only costs retransmits.
pub(crate) fn enlarge_receive_buffer(socket: &UdpSocket) {
    if setsockopt(socket, sockopt::RcvBufForce, &LISTEN_RECEIVE_BUFFER).is_err()
        && let Err(e) = setsockopt(socket, sockopt::RcvBuf, &LISTEN_RECEIVE_BUFFER)
    {
        tracing::debug!(error = %e, "tftp: keeping the default receive buffer");
    }
}

/// One datagram from the listening socket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Received {
    pub len: usize,
    /// Sender, with IPv4-mapped IPv6 addresses turned back into IPv4.
    pub peer: SocketAddr,
    /// The local address the datagram was sent to, when the kernel said.
    pub local: Option<IpAddr>,
}

/// Receives one datagram into `buf`; `control` is scratch space for the ancillary data, reused.
pub(crate) async fn recv_with_local(
    socket: &UdpSocket,
    buf: &mut [u8],
    control: &mut [u8],
) -> io::Result<Received> {
    socket
        .async_io(Interest::READABLE, || recv_once(socket, buf, control))
        .await
}

/// Room for either kind of packet-info message.
pub(crate) fn control_buffer() -> Vec<u8> {
    nix::cmsg_space!(libc::in_pktinfo, libc::in6_pktinfo)
}

fn recv_once(socket: &UdpSocket, buf: &mut [u8], control: &mut [u8]) -> io::Result<Received> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(control),
        MsgFlags::empty(),
    )?;
    let peer = msg
        .address
        .as_ref()
        .and_then(to_socket_addr)
        .ok_or_else(|| io::Error::other("datagram without a source address"))?;
    let mut local = None;
    for cmsg in msg.cmsgs()? {
        match cmsg {
            ControlMessageOwned::Ipv4PacketInfo(info) => {
                // ipi_spec_dst is the local address to answer from (ipi_addr may be a broadcast).
                let spec = Ipv4Addr::from(u32::from_be(info.ipi_spec_dst.s_addr));
                let dst = Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr));
                local = Some(IpAddr::V4(if spec.is_unspecified() { dst } else { spec }));
            }
            ControlMessageOwned::Ipv6PacketInfo(info) => {
                local = Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)).to_canonical());
            }
            _ => {}
        }
    }
    Ok(Received {
        len: msg.bytes,
        peer: canonical(peer),
        local,
    })
}

fn to_socket_addr(storage: &SockaddrStorage) -> Option<SocketAddr> {
    match storage.family()? {
        nix::sys::socket::AddressFamily::Inet => storage
            .as_sockaddr_in()
            .map(|a| SocketAddr::V4((*a).into())),
        nix::sys::socket::AddressFamily::Inet6 => storage
            .as_sockaddr_in6()
            .map(|a| SocketAddr::V6((*a).into())),
        _ => None,
    }
}

/// An IPv4-mapped IPv6 address as the plain IPv4 address it stands for.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn roundtrip(bind: &str, target: IpAddr) -> Received {
        let server = UdpSocket::bind(bind).await.expect("bind");
        enable_pktinfo(&server).expect("pktinfo");
        let port = server.local_addr().expect("addr").port();
        let client = UdpSocket::bind(SocketAddr::new(
            if target.is_ipv4() {
                Ipv4Addr::LOCALHOST.into()
            } else {
                Ipv6Addr::LOCALHOST.into()
            },
            0,
        ))
        .await
        .expect("client bind");
        client.send_to(b"hi", (target, port)).await.expect("send");
        let mut buf = [0; 16];
        let mut control = control_buffer();
        let got = recv_with_local(&server, &mut buf, &mut control)
            .await
            .expect("recv");
        assert_eq!(&buf[..got.len], b"hi");
        assert_eq!(got.peer, canonical(client.local_addr().expect("addr")));
        got
    }

    #[tokio::test]
    async fn reports_the_local_address_on_an_unspecified_ipv4_socket() {
        // 127.0.0.2 is local on Linux without configuration; the answer must come from it.
        let got = roundtrip("0.0.0.0:0", Ipv4Addr::new(127, 0, 0, 2).into()).await;
        assert_eq!(got.local, Some(Ipv4Addr::new(127, 0, 0, 2).into()));
    }

    #[tokio::test]
    async fn dual_stack_socket_reports_ipv4_clients_as_ipv4() {
        if std::net::UdpSocket::bind("[::1]:0").is_err() {
            eprintln!("note: no IPv6 loopback here; skipping");
            return;
        }
        let got = roundtrip("[::]:0", Ipv4Addr::LOCALHOST.into()).await;
        assert_eq!(got.local, Some(Ipv4Addr::LOCALHOST.into()));
        assert!(got.peer.is_ipv4());
        let got = roundtrip("[::]:0", Ipv6Addr::LOCALHOST.into()).await;
        assert_eq!(got.local, Some(Ipv6Addr::LOCALHOST.into()));
    }
}
