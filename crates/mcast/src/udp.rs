//! The socket edge: every socket option of the protocol in one place.
//!
//! A sender socket is bound to the interface's address, sends to the group through that
//! interface (`IP_MULTICAST_IF`) with TTL 1 and loopback off, and receives the receivers'
//! unicast statuses. A group socket is bound to the group's address and port, joined on one
//! interface (`IP_ADD_MEMBERSHIP` by interface index), takes only that group
//! (`IP_MULTICAST_ALL` off) and reports its drops (`SO_RXQ_OVFL`). Both use big buffers and
//! move datagrams in batches with `sendmmsg`/`recvmmsg`.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use nix::sys::socket::{
    self, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrIn, setsockopt, sockopt,
};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};

/// Socket buffer sizes asked for; the kernel may grant less without `CAP_NET_ADMIN`.
pub const SEND_BUFFER: usize = 4 << 20;
pub const RECV_BUFFER: usize = 32 << 20;
/// Largest datagram a batch slot holds.
const SLOT: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    #[error("interface {0} does not exist")]
    NoInterface(String),
    #[error("interface {0} has no IPv4 address")]
    NoAddress(String),
    #[error("{0} is not an IPv4 multicast address")]
    NotMulticast(Ipv4Addr),
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> UdpError {
    move |source| UdpError::Io { what, source }
}

fn errno(what: &'static str) -> impl FnOnce(nix::Error) -> UdpError {
    move |e| UdpError::Io {
        what,
        source: e.into(),
    }
}

/// An interface's index and first IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interface {
    pub index: u32,
    pub addr: Ipv4Addr,
}

impl Interface {
    pub fn by_name(name: &str) -> Result<Interface, UdpError> {
        let index = nix::net::if_::if_nametoindex(name)
            .map_err(|_| UdpError::NoInterface(name.to_string()))?;
        let addrs = nix::ifaddrs::getifaddrs().map_err(errno("listing interface addresses"))?;
        let addr = addrs
            .filter(|a| a.interface_name == name)
            .find_map(|a| a.address.and_then(|s| s.as_sockaddr_in().map(|s| s.ip())))
            .ok_or_else(|| UdpError::NoAddress(name.to_string()))?;
        Ok(Interface { index, addr })
    }
}

/// Datagrams received in one `recvmmsg` call.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    lens: Vec<usize>,
    froms: Vec<SocketAddr>,
    count: usize,
    drops: u64,
    headers: MultiHeaders<SockaddrIn>,
}

impl RecvBatch {
    pub fn new(capacity: usize) -> RecvBatch {
        let capacity = capacity.max(1);
        RecvBatch {
            bufs: vec![vec![0; SLOT]; capacity],
            lens: vec![0; capacity],
            froms: vec![SocketAddr::from(([0, 0, 0, 0], 0)); capacity],
            count: 0,
            drops: 0,
            headers: MultiHeaders::preallocate(capacity, Some(nix::cmsg_space!(u32))),
        }
    }

    pub fn capacity(&self) -> usize {
        self.bufs.len()
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Datagram `i` and its source.
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        (i < self.count).then(|| (&self.bufs[i][..self.lens[i]], self.froms[i]))
    }

    /// The socket's cumulative drop count, as last reported by the kernel.
    pub fn socket_drops(&self) -> u64 {
        self.drops
    }
}

/// A UDP socket of the protocol (either kind).
pub struct McastSocket {
    socket: Socket,
    group: SocketAddrV4,
    /// The interface a group socket joined on.
    joined: Option<Interface>,
}

impl McastSocket {
    /// The sender's socket: bound to `iface`'s address (port `port`, 0 for any), sending to
    /// `group` through `iface`.
    pub fn sender(iface: &Interface, group: SocketAddrV4, port: u16) -> Result<Self, UdpError> {
        check_group(group)?;
        let socket = new_socket()?;
        socket
            .bind(&SocketAddrV4::new(iface.addr, port).into())
            .map_err(io_err("binding the sender socket"))?;
        socket
            .set_multicast_if_v4(&iface.addr)
            .map_err(io_err("setting IP_MULTICAST_IF"))?;
        socket
            .set_multicast_ttl_v4(1)
            .map_err(io_err("setting IP_MULTICAST_TTL"))?;
        socket
            .set_multicast_loop_v4(false)
            .map_err(io_err("setting IP_MULTICAST_LOOP"))?;
        grow_buffers(&socket, SEND_BUFFER, 1 << 20);
        Ok(McastSocket {
            socket,
            group,
            joined: None,
        })
    }

    /// A receiver's socket: bound to `group`, joined on `iface`.
    pub fn group(iface: &Interface, group: SocketAddrV4) -> Result<Self, UdpError> {
        check_group(group)?;
        let socket = new_socket()?;
        socket
            .set_reuse_address(true)
            .map_err(io_err("setting SO_REUSEADDR"))?;
        // Bound to the group's address, the socket sees no other group's traffic on the port.
        socket
            .bind(&group.into())
            .map_err(io_err("binding the group socket"))?;
        socket
            .join_multicast_v4_n(group.ip(), &InterfaceIndexOrAddress::Index(iface.index))
            .map_err(io_err("joining the multicast group"))?;
        socket
            .set_multicast_all_v4(false)
            .map_err(io_err("setting IP_MULTICAST_ALL"))?;
        setsockopt(&socket, sockopt::RxqOvfl, &1).map_err(errno("setting SO_RXQ_OVFL"))?;
        grow_buffers(&socket, 1 << 20, RECV_BUFFER);
        Ok(McastSocket {
            socket,
            group,
            joined: Some(*iface),
        })
    }

    /// A plain unicast socket on `iface`'s address (a receiver sends its statuses with it).
    pub fn unicast(iface: &Interface) -> Result<Self, UdpError> {
        let socket = new_socket()?;
        socket
            .bind(&SocketAddrV4::new(iface.addr, 0).into())
            .map_err(io_err("binding the status socket"))?;
        Ok(McastSocket {
            socket,
            group: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            joined: None,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("socket has no IP address"))
    }

    pub fn group_addr(&self) -> SocketAddrV4 {
        self.group
    }

    /// Leaves and joins the group again, which sends fresh IGMP reports: a snooping switch
    /// that lost this port's membership (a report lost or suppressed while other members
    /// left) starts forwarding again.
    pub fn rejoin(&self) -> io::Result<()> {
        let Some(iface) = self.joined else {
            return Ok(());
        };
        let index = InterfaceIndexOrAddress::Index(iface.index);
        self.socket.leave_multicast_v4_n(self.group.ip(), &index)?;
        self.socket.join_multicast_v4_n(self.group.ip(), &index)
    }

    /// Sends every datagram to `to`, in as few `sendmmsg` calls as the kernel allows;
    /// blocks while the socket's send buffer is full (the interface's queue is the pace).
    pub fn send_batch(&self, datagrams: &[&[u8]], to: SocketAddrV4) -> io::Result<()> {
        let addr = SockaddrIn::from(to);
        let mut sent = 0;
        while sent < datagrams.len() {
            let rest = &datagrams[sent..];
            let slices: Vec<[IoSlice<'_>; 1]> = rest.iter().map(|d| [IoSlice::new(d)]).collect();
            let addrs = vec![Some(addr); rest.len()];
            let mut headers = MultiHeaders::<SockaddrIn>::preallocate(rest.len(), None);
            let n = match socket::sendmmsg(
                self.socket.as_raw_fd(),
                &mut headers,
                &slices,
                &addrs,
                &[] as &[socket::ControlMessage<'_>],
                MsgFlags::empty(),
            ) {
                Ok(results) => results.count(),
                Err(nix::Error::EINTR) => 0,
                // A full qdisc drops the datagram (it shows as loss); go on with the rest.
                Err(nix::Error::ENOBUFS) => 1,
                Err(e) => return Err(e.into()),
            };
            sent += n;
        }
        Ok(())
    }

    pub fn send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<()> {
        self.socket.send_to(datagram, &to.into()).map(drop)
    }

    /// Takes whatever is queued, up to the batch's capacity, without waiting.
    pub fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        let RecvBatch {
            bufs,
            lens,
            froms,
            count,
            drops,
            headers,
        } = batch;
        *count = 0;
        let mut slices: Vec<[IoSliceMut<'_>; 1]> =
            bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
        let results = match socket::recvmmsg(
            self.socket.as_raw_fd(),
            headers,
            slices.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        ) {
            Ok(results) => results,
            Err(nix::Error::EAGAIN | nix::Error::EINTR) => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        for (i, msg) in results.enumerate() {
            lens[i] = msg.bytes;
            froms[i] = msg
                .address
                .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |a| {
                    SocketAddr::V4(SocketAddrV4::new(a.ip(), a.port()))
                });
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::RxqOvfl(n) = c {
                        *drops = u64::from(n);
                    }
                }
            }
            *count = i + 1;
        }
        Ok(*count)
    }

    /// Waits until a datagram is queued or `timeout` passes (`None`: until a datagram).
    pub fn wait_readable(&self, timeout: Option<Duration>) -> io::Result<()> {
        use nix::poll::{PollFd, PollFlags, ppoll};
        let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
        let timeout = timeout.map(nix::sys::time::TimeSpec::from_duration);
        match ppoll(&mut fds, timeout, None) {
            Ok(_) | Err(nix::Error::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn check_group(group: SocketAddrV4) -> Result<(), UdpError> {
    if group.ip().is_multicast() {
        Ok(())
    } else {
        Err(UdpError::NotMulticast(*group.ip()))
    }
}

fn new_socket() -> Result<Socket, UdpError> {
    Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(io_err("creating a UDP socket"))
}

/// Asks for big buffers, beyond `net.core.*mem_max` when privileged; what the kernel grants
/// is logged, never fatal.
fn grow_buffers(socket: &Socket, send: usize, recv: usize) {
    if setsockopt(socket, sockopt::SndBufForce, &send).is_err() {
        let _ = socket.set_send_buffer_size(send);
    }
    if setsockopt(socket, sockopt::RcvBufForce, &recv).is_err() {
        let _ = socket.set_recv_buffer_size(recv);
    }
    tracing::debug!(
        send = socket.send_buffer_size().unwrap_or(0),
        recv = socket.recv_buffer_size().unwrap_or(0),
        "socket buffers"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_interface_has_its_address() {
        let lo = Interface::by_name("lo").unwrap();
        assert_eq!(lo.addr, Ipv4Addr::LOCALHOST);
        assert!(matches!(
            Interface::by_name("no-such-if0"),
            Err(UdpError::NoInterface(_))
        ));
    }

    #[test]
    fn batches_go_out_and_come_back_on_loopback() {
        let lo = Interface::by_name("lo").unwrap();
        let a = McastSocket::unicast(&lo).unwrap();
        let b = McastSocket::unicast(&lo).unwrap();
        let SocketAddr::V4(to) = b.local_addr().unwrap() else {
            panic!("IPv4 socket");
        };
        let datagrams: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
        let refs: Vec<&[u8]> = datagrams.iter().map(Vec::as_slice).collect();
        a.send_batch(&refs, to).unwrap();
        let mut batch = RecvBatch::new(16);
        let mut got = Vec::new();
        while got.len() < 10 {
            b.wait_readable(Some(Duration::from_secs(2))).unwrap();
            b.recv_batch(&mut batch).unwrap();
            for i in 0..batch.len() {
                let (d, from) = batch.get(i).unwrap();
                assert_eq!(from, a.local_addr().unwrap());
                got.push(d.to_vec());
            }
        }
        assert_eq!(got, datagrams);
    }

    #[test]
    fn group_must_be_multicast() {
        let lo = Interface::by_name("lo").unwrap();
        let not = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 5000);
        assert!(matches!(
            McastSocket::sender(&lo, not, 0),
            Err(UdpError::NotMulticast(_))
        ));
    }
}
