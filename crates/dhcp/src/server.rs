//! The server: its state, and the fixed chain of handlers every request passes.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::{SystemTime, UNIX_EPOCH};

use dhcproto::v4::MessageType;
use metalcast_proto::MacAddr;
use tracing::{debug, error, info, warn};

use crate::config::{
    BootFiles, Chainload, ConfigError, DhcpConfig, Mode, Reservation, UnknownNodes, host_in,
};
use crate::leases::{LeaseStore, Slot};
use crate::pxe::{self, BootChoice, Client, Firmware};
use crate::reply::{self, Draft, Network, kind_name};
use crate::wire::{self, Request};
use crate::{Counters, Lease, LeaseChange, Outcome, PXE_PORT, Received, Seen, Transmit};

/// How long an offered address is held for the client's DHCPREQUEST.
const OFFER_HOLD_SECS: i64 = 60;
/// Proxy mode: an address a PXE client was seen using older than this may be swept away.
const OBSERVED_SECS: i64 = 3600;
/// Maps that only grow with new MACs are swept of stale entries when they reach this size,
/// then again at twice the size left, so sweeping stays amortized O(1) per insert.
const SWEEP_MIN: usize = 1024;

/// The DHCP server for one appliance: all interfaces, all pools.
///
/// Call contract:
/// - [`Server::handle`] for every datagram received on port 67 (and 4011 in proxy mode),
///   with the current time; send `reply` from the socket it came in on, persist `lease`,
///   record `seen`.
/// - [`Server::set_known`] for every MAC the appliance knows, at start and when one
///   registers; [`Server::tftp_done`] when the TFTP service finished sending a boot file.
/// - [`Server::counters`] and [`Server::lease_for_ip`] are getters.
///
/// Nothing here blocks, reads a clock or touches a socket or a disk.
#[derive(Debug)]
pub struct Server {
    mode: Mode,
    interfaces: Vec<String>,
    unknown_nodes: UnknownNodes,
    lease_secs: u32,
    decline_secs: u32,
    boot_files: BootFiles,
    chainload: Chainload,
    chainload_window: i64,
    http_port: u16,
    networks: Vec<Network>,
    reservations: HashMap<MacAddr, Reservation>,
    known: HashSet<MacAddr>,
    /// When the TFTP service last finished sending a boot file to each MAC.
    chainloaded: HashMap<MacAddr, i64>,
    /// Nodes whose next boot is their local disk (see [`Server::set_local_boot`]).
    local_boot: HashSet<MacAddr>,
    chainloaded_sweep_at: usize,
    leases: LeaseStore,
    observed: Observed,
    counters: Counters,
}

/// One request on its way through the chain.
struct Ctx<'r, 'a> {
    now: i64,
    rx: &'r Received<'a>,
    req: Request<'a>,
    client: Client,
    draft: Option<Draft>,
    lease: Option<LeaseChange>,
    seen: Option<String>,
}

/// What a handler decided.
enum Flow {
    /// Hand on to the next handler.
    Continue,
    /// Stop here without a reply.
    Silent(Silent),
}

enum Silent {
    Policy(Cow<'static, str>),
    NotForUs(Cow<'static, str>),
    Exhausted,
    /// Acted on; the message takes no reply.
    Done,
}

fn policy(reason: impl Into<Cow<'static, str>>) -> Flow {
    Flow::Silent(Silent::Policy(reason.into()))
}

fn not_for_us(reason: impl Into<Cow<'static, str>>) -> Flow {
    Flow::Silent(Silent::NotForUs(reason.into()))
}

type Handler = fn(&mut Server, &mut Ctx<'_, '_>) -> Flow;

/// Every request passes these in order: who may be answered, which address (or, in proxy
/// mode, which kind of reply), which boot file.
const CHAIN: [Handler; 3] = [Server::admit, Server::assign, Server::boot];

/// RFC 2131 4.3.2 client states a DHCPREQUEST can come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestState {
    Selecting,
    InitReboot,
    /// RENEWING or REBINDING: the client uses its address (ciaddr).
    Renewing,
}

enum Verdict {
    Ack,
    Nak(String),
}

impl Server {
    /// Validates `config` and restores `leases` persisted by an earlier run. Leases that no
    /// longer fit the configuration are dropped (logged).
    pub fn new(
        config: DhcpConfig,
        http_port: u16,
        leases: Vec<Lease>,
    ) -> Result<Server, ConfigError> {
        config.validate()?;
        let ranges: Vec<_> = config
            .pools
            .iter()
            .map(|p| (p.range[0], p.range[1]))
            .collect();
        let reserved = config.reservations.iter().map(|r| (r.ip, r.mac)).collect();
        let networks = config
            .pools
            .into_iter()
            .map(|p| Network {
                subnet: p.subnet,
                router: p.router,
                dns: p.dns,
                domain: p.domain,
            })
            .collect();
        let mut server = Server {
            mode: config.mode,
            interfaces: config.interfaces,
            unknown_nodes: config.unknown_nodes,
            lease_secs: config.lease_time_secs,
            decline_secs: config.decline_secs,
            boot_files: config.boot,
            chainload: config.chainload,
            chainload_window: i64::from(config.chainload_window_secs),
            http_port,
            networks,
            reservations: config
                .reservations
                .into_iter()
                .map(|r| (r.mac, r))
                .collect(),
            known: HashSet::new(),
            chainloaded: HashMap::new(),
            local_boot: HashSet::new(),
            chainloaded_sweep_at: SWEEP_MIN,
            leases: LeaseStore::new(&ranges, reserved),
            observed: Observed::default(),
            counters: Counters::default(),
        };
        server.restore(leases);
        Ok(server)
    }

    fn restore(&mut self, leases: Vec<Lease>) {
        if self.mode == Mode::Proxy {
            if !leases.is_empty() {
                info!(
                    count = leases.len(),
                    "proxy mode hands out no addresses: stored leases ignored"
                );
            }
            return;
        }
        let (mut kept, mut dropped) = (0usize, 0usize);
        for lease in leases {
            let fits = match self.reservations.get(&lease.mac) {
                Some(r) => r.ip == lease.ip,
                None => {
                    self.leases.range_of(lease.ip).is_some()
                        && self.leases.reserved_owner(lease.ip).is_none()
                }
            };
            let (mac, ip) = (lease.mac, lease.ip);
            if fits && self.leases.restore(lease) {
                kept += 1;
            } else {
                dropped += 1;
                debug!(%mac, %ip, "stored lease no longer fits the configuration: dropped");
            }
        }
        info!(kept, dropped, "restored leases");
    }

    /// Decides the answer to one received datagram. Never panics on any input.
    pub fn handle(&mut self, now: SystemTime, rx: &Received<'_>) -> Outcome {
        self.counters.received += 1;
        let req = match wire::parse(rx.data) {
            Ok(req) => req,
            Err(reason) => {
                self.counters.dropped_malformed += 1;
                debug!(src = %rx.src, %reason, "dropped malformed datagram");
                return Outcome::default();
            }
        };
        let client = Client::new(req.class_id.as_deref(), req.user_class.as_deref(), req.arch);
        let mut cx = Ctx {
            now: unix_secs(now),
            rx,
            req,
            client,
            draft: None,
            lease: None,
            seen: None,
        };
        for handler in CHAIN {
            if let Flow::Silent(why) = handler(self, &mut cx) {
                return self.silent(cx, why);
            }
        }
        match cx.draft.take() {
            Some(draft) => self.finish(cx, draft),
            None => self.silent(cx, Silent::Done),
        }
    }

    /// Marks `mac` as a node the appliance knows (see `unknown_nodes`).
    pub fn set_known(&mut self, mac: MacAddr) {
        self.known.insert(mac);
    }

    /// Whether `mac`'s next network boot only hands over to its local disk. Such a node's
    /// iPXE gets the script at once, whatever `chainload` says: loading another iPXE just to
    /// exit from it gains nothing, and UEFI iPXE ROMs hang when a chained iPXE exits back into
    /// them, instead of returning to the firmware's next boot option.
    pub fn set_local_boot(&mut self, mac: MacAddr, on: bool) {
        if on {
            self.local_boot.insert(mac);
        } else {
            self.local_boot.remove(&mac);
        }
    }

    /// The TFTP service finished sending a boot file to `mac`: an iPXE request from it
    /// within `chainload_window_secs` is our iPXE build and gets the script URL.
    pub fn tftp_done(&mut self, mac: MacAddr, now: SystemTime) {
        let now = unix_secs(now);
        if self.chainloaded.len() >= self.chainloaded_sweep_at {
            let window = self.chainload_window;
            self.chainloaded
                .retain(|_, at| now.saturating_sub(*at) <= window);
            self.chainloaded_sweep_at = (self.chainloaded.len() * 2).max(SWEEP_MIN);
        }
        self.chainloaded.insert(mac, now);
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The lease on `ip`, for the TFTP service to name the client. In proxy mode, the last
    /// address a PXE client was seen requesting or using (we hand out none ourselves).
    pub fn lease_for_ip(&self, ip: Ipv4Addr) -> Option<&Lease> {
        match self.mode {
            Mode::Authoritative => self.leases.lease_for_ip(ip),
            Mode::Proxy => self.observed.by_ip.get(&ip),
        }
    }

    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    pub(crate) fn interfaces(&self) -> &[String] {
        &self.interfaces
    }

    /// `ip` is inside one of the pools' subnets.
    pub(crate) fn serves(&self, ip: Ipv4Addr) -> bool {
        self.pool_containing(ip).is_some()
    }

    fn is_known(&self, mac: MacAddr) -> bool {
        self.known.contains(&mac) || self.reservations.contains_key(&mac)
    }

    // ---- the chain ----

    /// Who may be answered at all.
    fn admit(&mut self, cx: &mut Ctx<'_, '_>) -> Flow {
        if cx.rx.iface_ip.is_unspecified() {
            return policy("the interface has no IPv4 address");
        }
        if self.unknown_nodes == UnknownNodes::Ignore && !self.is_known(cx.req.mac) {
            return policy("unknown MAC and unknown_nodes = \"ignore\"");
        }
        match self.mode {
            Mode::Authoritative if cx.rx.local_port == PXE_PORT => {
                policy("port 4011 is served in proxy mode only")
            }
            Mode::Proxy if !cx.client.pxe => policy("proxy mode answers PXE clients only"),
            _ => Flow::Continue,
        }
    }

    /// The address part: what kind of reply, for which address.
    fn assign(&mut self, cx: &mut Ctx<'_, '_>) -> Flow {
        match (self.mode, cx.req.msg_type) {
            (Mode::Proxy, _) => self.proxy(cx),
            (Mode::Authoritative, MessageType::Discover) => self.discover(cx),
            (Mode::Authoritative, MessageType::Request) => self.request(cx),
            (Mode::Authoritative, MessageType::Release) => self.release(cx),
            (Mode::Authoritative, MessageType::Decline) => self.decline(cx),
            (Mode::Authoritative, MessageType::Inform) => self.inform(cx),
            (Mode::Authoritative, other) => policy(format!("message type {other:?} is not served")),
        }
    }

    /// The boot file of an OFFER or ACK.
    fn boot(&mut self, cx: &mut Ctx<'_, '_>) -> Flow {
        let Some(draft) = cx.draft.as_mut().filter(|d| d.kind != MessageType::Nak) else {
            return Flow::Continue;
        };
        let mac = cx.req.mac;
        let recent = self
            .chainloaded
            .get(&mac)
            .is_some_and(|&at| cx.now.saturating_sub(at) <= self.chainload_window);
        let local = self.local_boot.contains(&mac);
        draft.boot = match pxe::choose(&cx.client, self.chainload, recent || local) {
            BootChoice::Binary(Firmware::Bios) => Some(self.boot_files.bios.clone()),
            BootChoice::Binary(Firmware::Uefi) => Some(self.boot_files.uefi.clone()),
            BootChoice::Script => Some(format!(
                "http://{}:{}/boot/{}.ipxe",
                cx.rx.iface_ip,
                self.http_port,
                mac.to_hyphenated()
            )),
            BootChoice::Nothing => {
                if cx.client.pxe {
                    info!(%mac, arch = ?cx.client.arch, "no boot file for this PXE client architecture");
                }
                None
            }
        };
        if self.mode == Mode::Proxy && draft.boot.is_none() {
            // A proxy reply exists only to carry a boot file.
            return policy("proxy mode: no boot file for this client");
        }
        Flow::Continue
    }

    // ---- authoritative mode ----

    fn discover(&mut self, cx: &mut Ctx<'_, '_>) -> Flow {
        let Some(pool) = self.link_pool(&cx.req, cx.rx.iface_ip) else {
            return self.no_pool(cx);
        };
        let mac = cx.req.mac;
        let Some(ip) = self.pick_address(pool, &cx.req, cx.now, cx.rx.iface_ip) else {
            cx.seen = Some(format!(
                "DHCPDISCOVER from {}: no free address in {}",
                cx.client, self.networks[pool].subnet
            ));
            return Flow::Silent(Silent::Exhausted);
        };
        self.leases
            .offer(ip, mac, cx.now.saturating_add(OFFER_HOLD_SECS));
        cx.draft = Some(Draft {
            lease_secs: Some(self.lease_secs),
            pool: Some(pool),
            hostname: self.reserved_hostname(mac),
            ..Draft::new(MessageType::Offer, ip)
        });
        Flow::Continue
    }

    /// Reservation, then the client's current address, then the one it asks for, then the
    /// next free one.
    fn pick_address(
        &mut self,
        pool: usize,
        req: &Request<'_>,
        now: i64,
        server_ip: Ipv4Addr,
    ) -> Option<Ipv4Addr> {
        let mac = req.mac;
        if let Some(ip) = self.reserved_ip(mac, pool) {
            return Some(ip);
        }
        let mine = |ip: Ipv4Addr| self.leases.range_of(ip) == Some(pool) && ip != server_ip;
        if let Some(ip) = self
            .leases
            .of_mac(mac)
            .map(|(ip, _)| ip)
            .filter(|&ip| mine(ip))
        {
            return Some(ip);
        }
        if let Some(ip) = req
            .requested_ip
            .filter(|&ip| mine(ip) && self.leases.is_free_for(ip, mac, now))
        {
            return Some(ip);
        }
        self.leases.allocate(pool, now, server_ip)
    }

    fn request(&mut self, cx: &mut Ctx<'_, '_>) -> Flow {
        let req = &cx.req;
        let (mac, server_ip) = (req.mac, cx.rx.iface_ip);
        let (state, ip) = match (req.server_id, req.requested_ip, req.ciaddr) {
            (Some(id), _, _) if id != server_ip => {
                // RFC 2131 4.3.2: the client took another server's offer; ours is free again.
                if let Some(ip) = self.leases.withdraw_offer(mac) {
                    debug!(%mac, %ip, "offer withdrawn: the client chose server {id}");
                }
                return not_for_us("the client chose another server");
            }
            (Some(_), Some(ip), _) => (RequestState::Selecting, ip),
            (Some(_), None, ci) if !ci.is_unspecified() => (RequestState::Selecting, ci),
            (None, Some(ip), ci) if ci.is_unspecified() => (RequestState::InitReboot, ip),
            (None, _, ci) if !ci.is_unspecified() => (RequestState::Renewing, ci),
            _ => return policy("DHCPREQUEST names no address"),
        };
        // A renewal is unicast straight from the client, past any relay: its address names
        // the subnet (RFC 2131 4.3.2).
        let pool = match state {
            RequestState::Renewing => match self.pool_containing(ip) {
                Some(pool) => pool,
                None => return not_for_us("renewal of an address outside our subnets"),
            },
            _ => match self.link_pool(&cx.req, server_ip) {
                Some(pool) => pool,
                None => return self.no_pool(cx),
            },
        };
        match self.check_request(state, pool, mac, ip, cx.now, server_ip) {
            Verdict::Nak(reason) => cx.draft = Some(Draft::nak(reason)),
            Verdict::Ack => {
                let lease = Lease {
                    mac,
                    ip,
                    expires_unix: cx.now.saturating_add(i64::from(self.lease_secs)),
                    hostname: self
                        .reserved_hostname(mac)
                        .or_else(|| cx.req.hostname.as_deref().and_then(client_hostname)),
                };
                self.leases.bind(lease.clone());
                cx.lease = Some(LeaseChange::Bound(lease));
                cx.draft = Some(Draft {
                    lease_secs: Some(self.lease_secs),
                    pool: Some(pool),
                    hostname: self.reserved_hostname(mac),
                    ..Draft::new(MessageType::Ack, ip)
                });
            }
        }
        Flow::Continue
    }

    /// May `mac` have `ip` on pool `pool`'s link? Authoritative: an address we do not have
    /// on record for the client is refused, so it starts over with DHCPDISCOVER at once.
    fn check_request(
        &self,
        state: RequestState,
        pool: usize,
        mac: MacAddr,
        ip: Ipv4Addr,
        now: i64,
        server_ip: Ipv4Addr,
    ) -> Verdict {
        let net = self.networks[pool].subnet;
        if !host_in(net, ip) {
            return Verdict::Nak(format!("{ip} is not on this network ({net})"));
        }
        if let Some(reserved) = self.reserved_ip(mac, pool) {
            return if reserved == ip {
                Verdict::Ack
            } else {
                Verdict::Nak(format!("this client's address is {reserved}"))
            };
        }
        if self.leases.reserved_owner(ip).is_some() {
            return Verdict::Nak(format!("{ip} is reserved for another client"));
        }
        if self.leases.range_of(ip) != Some(pool) || ip == server_ip {
            return Verdict::Nak(format!("{ip} is not in the pool"));
        }
        match self.leases.slot(ip) {
            Some(slot) if slot.mac() == Some(mac) => Verdict::Ack,
            // Our offer was lost (a restart), but the address is still free.
            _ if state == RequestState::Selecting && self.leases.is_free_for(ip, mac, now) => {
                Verdict::Ack
            }
            Some(_) => Verdict::Nak(format!("{ip} is not this client's lease")),
            None => Verdict::Nak(format!("no lease of {ip} on record for this client")),
        }
    }

    fn release(&mut self, cx: &mut Ctx<'_, '_>) -> Flow {
        let (mac, ip) = (cx.req.mac, cx.req.ciaddr);
        if cx.req.server_id.is_some_and(|id| id != cx.rx.iface_ip) {
            return not_for_us("DHCPRELEASE for another server");
        }
        if !self.leases.release(mac, ip, cx.now) {
            return not_for_us(format!(
                "DHCPRELEASE of {ip}, which is not an active lease of this client"
            ));
        }
        info!(%mac, %ip, "lease released");
        cx.lease = Some(LeaseChange::Released { mac, ip });
        cx.seen = Some(format!("DHCPRELEASE {ip} from {}", cx.client));
        Flow::Silent(Silent::Done)
    }

    fn decline(&mut self, cx: &mut Ctx<'_, '_>) -> Flow {
        let mac = cx.req.mac;
        if cx.req.server_id.is_some_and(|id| id != cx.rx.iface_ip) {
            return not_for_us("DHCPDECLINE for another server");
        }
        let Some(ip) = cx.req.requested_ip else {
            return policy("DHCPDECLINE names no address");
        };
        let holds = self.leases.slot(ip).and_then(Slot::mac) == Some(mac)
            || self.reservations.get(&mac).is_some_and(|r| r.ip == ip);
        if !holds {
            // Only the holder may take an address out of use, not any client on the link.
            return not_for_us(format!("DHCPDECLINE of {ip}, which is not this client's"));
        }
        let until = cx.now.saturating_add(i64::from(self.decline_secs));
        let ended = self.leases.decline(ip, cx.now, until);
        warn!(%mac, %ip, secs = self.decline_secs, "address declined: another host uses it; quarantined");
        cx.lease = ended.map(|lease| LeaseChange::Released { mac: lease.mac, ip });
        cx.seen = Some(format!(
            "DHCPDECLINE {ip}: in use by another host, out of the pool for {} s",
            self.decline_secs
        ));
        Flow::Silent(Silent::Done)
    }

    fn inform(&mut self, cx: &mut Ctx<'_, '_>) -> Flow {
        let ip = cx.req.ciaddr;
        if ip.is_unspecified() {
            return policy("DHCPINFORM without ciaddr");
        }
        let Some(pool) = self
            .pool_containing(ip)
            .or_else(|| self.link_pool(&cx.req, cx.rx.iface_ip))
        else {
            return self.no_pool(cx);
        };
        // RFC 2131 4.3.5: configuration only, no address and no lease time.
        cx.draft = Some(Draft {
            pool: Some(pool),
            note: Some("inform"),
            ..Draft::new(MessageType::Ack, Ipv4Addr::UNSPECIFIED)
        });
        Flow::Continue
    }

    // ---- proxy mode ----

    fn proxy(&mut self, cx: &mut Ctx<'_, '_>) -> Flow {
        let req = &cx.req;
        let server_ip = cx.rx.iface_ip;
        // The address server is someone else; remember which address each PXE client takes
        // so the TFTP service can name it (`lease_for_ip`).
        let using = if !req.ciaddr.is_unspecified() {
            Some(req.ciaddr)
        } else {
            req.requested_ip
                .filter(|_| req.msg_type == MessageType::Request)
        };
        if let Some(ip) = using {
            self.observed.record(req.mac, ip, cx.now);
        }
        let pxe_port = cx.rx.local_port == PXE_PORT;
        let kind = match req.msg_type {
            MessageType::Discover if !pxe_port => MessageType::Offer,
            MessageType::Request if !pxe_port && req.server_id == Some(server_ip) => {
                MessageType::Ack
            }
            MessageType::Request | MessageType::Inform
                if pxe_port && req.server_id.is_none_or(|id| id == server_ip) =>
            {
                MessageType::Ack
            }
            _ => return not_for_us("proxy mode: for the server that owns the addresses"),
        };
        cx.draft = Some(Draft {
            note: Some("proxy"),
            ..Draft::new(kind, Ipv4Addr::UNSPECIFIED)
        });
        Flow::Continue
    }

    // ---- helpers ----

    /// The pool of the link the request came from: the relay's address, else ours.
    fn link_pool(&self, req: &Request<'_>, iface_ip: Ipv4Addr) -> Option<usize> {
        let link = if req.giaddr.is_unspecified() {
            iface_ip
        } else {
            req.giaddr
        };
        self.pool_containing(link)
    }

    fn pool_containing(&self, ip: Ipv4Addr) -> Option<usize> {
        self.networks.iter().position(|n| n.subnet.contains(&ip))
    }

    fn no_pool(&self, cx: &Ctx<'_, '_>) -> Flow {
        let link = if cx.req.giaddr.is_unspecified() {
            cx.rx.iface_ip
        } else {
            cx.req.giaddr
        };
        policy(format!("no pool's subnet holds the link address {link}"))
    }

    fn reserved_ip(&self, mac: MacAddr, pool: usize) -> Option<Ipv4Addr> {
        let net = self.networks.get(pool)?.subnet;
        self.reservations
            .get(&mac)
            .map(|r| r.ip)
            .filter(|&ip| host_in(net, ip))
    }

    fn reserved_hostname(&self, mac: MacAddr) -> Option<String> {
        self.reservations.get(&mac).and_then(|r| r.hostname.clone())
    }

    fn silent(&mut self, cx: Ctx<'_, '_>, why: Silent) -> Outcome {
        let mac = cx.req.mac;
        let msg = kind_name(cx.req.msg_type);
        match why {
            Silent::Policy(reason) => {
                self.counters.dropped_policy += 1;
                debug!(%mac, msg, %reason, "not answered");
            }
            Silent::NotForUs(reason) => {
                self.counters.not_for_us += 1;
                debug!(%mac, msg, %reason, "not for us");
            }
            Silent::Exhausted => {
                self.counters.pool_exhausted += 1;
                warn!(%mac, "{}", cx.seen.as_deref().unwrap_or("pool exhausted"));
            }
            Silent::Done => self.counters.no_reply_needed += 1,
        }
        Outcome {
            reply: None,
            lease: cx.lease,
            seen: cx.seen.map(|message| Seen { mac, message }),
        }
    }

    fn finish(&mut self, cx: Ctx<'_, '_>, draft: Draft) -> Outcome {
        let mac = cx.req.mac;
        let network = draft.pool.and_then(|i| self.networks.get(i));
        let data = match reply::encode(&cx.req, &cx.client, &draft, network, cx.rx.iface_ip) {
            Ok(data) => data,
            Err(e) => {
                self.counters.encode_errors += 1;
                error!(%mac, error = %e, "could not encode a reply");
                return Outcome {
                    reply: None,
                    lease: cx.lease,
                    seen: None,
                };
            }
        };
        let to = reply::destination(&cx.req, draft.kind, cx.rx.src, cx.rx.local_port == PXE_PORT);
        self.counters.replied += 1;
        if draft.kind == MessageType::Nak {
            self.counters.naks += 1;
        }
        let message = describe(&draft, &cx.client);
        debug!(%mac, %to, "{message}");
        Outcome {
            reply: Some(Transmit { to, data }),
            lease: cx.lease,
            seen: Some(Seen { mac, message }),
        }
    }
}

/// The event line of a reply: `DHCPACK 10.0.0.23 to iPXE (bios), boot http://…`.
fn describe(draft: &Draft, client: &Client) -> String {
    let mut s = String::from(kind_name(draft.kind));
    if let Some(note) = draft.note {
        let _ = write!(s, " ({note})");
    }
    if !draft.yiaddr.is_unspecified() {
        let _ = write!(s, " {}", draft.yiaddr);
    }
    let _ = write!(s, " to {client}");
    let _ = match (&draft.message, &draft.boot) {
        (Some(reason), _) => write!(s, ": {reason}"),
        (None, Some(file)) => write!(s, ", boot {file}"),
        (None, None) => write!(s, ", no boot file"),
    };
    s
}

/// Option 12 as a lease's hostname, if it is one: some clients NUL-terminate it.
fn client_hostname(raw: &[u8]) -> Option<String> {
    let name = std::str::from_utf8(raw).ok()?.trim_end_matches('\0');
    let ok = (1..=253).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    ok.then(|| name.to_string())
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// Proxy mode: the address each PXE client was last seen requesting or using.
#[derive(Debug, Default)]
struct Observed {
    by_ip: HashMap<Ipv4Addr, Lease>,
    by_mac: HashMap<MacAddr, Ipv4Addr>,
    sweep_at: usize,
}

impl Observed {
    fn record(&mut self, mac: MacAddr, ip: Ipv4Addr, now: i64) {
        if self.by_ip.len() >= self.sweep_at.max(SWEEP_MIN) {
            self.by_ip.retain(|_, l| l.expires_unix > now);
            self.by_mac
                .retain(|m, ip| self.by_ip.get(ip).is_some_and(|l| l.mac == *m));
            self.sweep_at = self.by_ip.len() * 2;
        }
        if let Some(old) = self.by_mac.insert(mac, ip).filter(|&old| old != ip) {
            self.by_ip.remove(&old);
        }
        let lease = Lease {
            mac,
            ip,
            expires_unix: now.saturating_add(OBSERVED_SECS),
            hostname: None,
        };
        if let Some(prev) = self.by_ip.insert(ip, lease).filter(|p| p.mac != mac) {
            self.by_mac.remove(&prev.mac);
        }
    }
}

#[cfg(test)]
mod tests;
