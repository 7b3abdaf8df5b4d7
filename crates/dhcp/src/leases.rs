//! Address state in memory: who holds which address, and the allocator.
//!
//! Every address with state has one [`Slot`], found by IP; a client's current address is
//! found by MAC. Allocation never scans a range per packet: each pool keeps a cursor over
//! addresses never handed out, a queue of addresses given back, and its expiring slots
//! ordered by expiry so the oldest expired one can be reclaimed when nothing else is left.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::Ipv4Addr;

use metalcast_proto::MacAddr;

use crate::Lease;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Slot {
    /// Held for a client between OFFER and REQUEST.
    Offered { mac: MacAddr, until: i64 },
    /// Bound (RFC 2131). Kept after expiry or release so the client gets the same address
    /// back, until another client needs it.
    Bound(Lease),
    /// Declined by a client: in use by someone we do not know (RFC 2131 4.3.3).
    Declined { until: i64 },
}

impl Slot {
    fn expires(&self) -> i64 {
        match self {
            Slot::Offered { until, .. } | Slot::Declined { until } => *until,
            Slot::Bound(lease) => lease.expires_unix,
        }
    }

    pub(crate) fn mac(&self) -> Option<MacAddr> {
        match self {
            Slot::Offered { mac, .. } => Some(*mac),
            Slot::Bound(lease) => Some(lease.mac),
            Slot::Declined { .. } => None,
        }
    }
}

/// Allocation state of one pool's dynamic range.
#[derive(Debug)]
struct Range {
    start: u32,
    end: u32,
    /// Next address never looked at; every address is passed once, so the cost is amortized.
    cursor: u64,
    /// Addresses whose slot was removed.
    returned: VecDeque<Ipv4Addr>,
    /// `(expiry, ip)` of every slot in this range that is not a reservation.
    expiring: BTreeSet<(i64, Ipv4Addr)>,
}

impl Range {
    fn contains(&self, ip: Ipv4Addr) -> bool {
        (self.start..=self.end).contains(&u32::from(ip))
    }
}

#[derive(Debug)]
pub(crate) struct LeaseStore {
    by_ip: HashMap<Ipv4Addr, Slot>,
    by_mac: HashMap<MacAddr, Ipv4Addr>,
    /// Reserved address to its owner; never allocated to anyone else.
    reserved: HashMap<Ipv4Addr, MacAddr>,
    ranges: Vec<Range>,
}

impl LeaseStore {
    /// `ranges`: each pool's dynamic range, inclusive, in pool order.
    pub(crate) fn new(
        ranges: &[(Ipv4Addr, Ipv4Addr)],
        reserved: HashMap<Ipv4Addr, MacAddr>,
    ) -> Self {
        LeaseStore {
            by_ip: HashMap::new(),
            by_mac: HashMap::new(),
            reserved,
            ranges: ranges
                .iter()
                .map(|&(s, e)| Range {
                    start: u32::from(s),
                    end: u32::from(e),
                    cursor: u64::from(u32::from(s)),
                    returned: VecDeque::new(),
                    expiring: BTreeSet::new(),
                })
                .collect(),
        }
    }

    /// Index of the pool whose dynamic range holds `ip`.
    pub(crate) fn range_of(&self, ip: Ipv4Addr) -> Option<usize> {
        self.ranges.iter().position(|r| r.contains(ip))
    }

    pub(crate) fn reserved_owner(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        self.reserved.get(&ip).copied()
    }

    pub(crate) fn slot(&self, ip: Ipv4Addr) -> Option<&Slot> {
        self.by_ip.get(&ip)
    }

    /// The address this client holds or was offered, with its slot.
    pub(crate) fn of_mac(&self, mac: MacAddr) -> Option<(Ipv4Addr, &Slot)> {
        let ip = *self.by_mac.get(&mac)?;
        let slot = self.by_ip.get(&ip)?;
        (slot.mac() == Some(mac)).then_some((ip, slot))
    }

    pub(crate) fn lease_for_ip(&self, ip: Ipv4Addr) -> Option<&Lease> {
        match self.by_ip.get(&ip)? {
            Slot::Bound(lease) => Some(lease),
            _ => None,
        }
    }

    /// `ip` may be given to `mac` now: not reserved for someone else, and either without
    /// state, already this client's, or an offer or quarantine that has run out. Another
    /// client's expired binding does not count as free (RFC 2131 4.3.1 prefers to keep it).
    pub(crate) fn is_free_for(&self, ip: Ipv4Addr, mac: MacAddr, now: i64) -> bool {
        if self.reserved.get(&ip).is_some_and(|&owner| owner != mac) {
            return false;
        }
        match self.by_ip.get(&ip) {
            None => true,
            Some(slot) if slot.mac() == Some(mac) => true,
            Some(Slot::Offered { until, .. } | Slot::Declined { until }) => *until <= now,
            Some(Slot::Bound(_)) => false,
        }
    }

    /// Takes the next free address of pool `pool`: one given back, then one never used, then
    /// the longest-expired slot. `skip` (the server's own address) is never returned.
    pub(crate) fn allocate(&mut self, pool: usize, now: i64, skip: Ipv4Addr) -> Option<Ipv4Addr> {
        let usable = |s: &Self, ip: Ipv4Addr| {
            ip != skip && !s.reserved.contains_key(&ip) && !s.by_ip.contains_key(&ip)
        };
        if pool >= self.ranges.len() {
            return None;
        }
        while let Some(ip) = self.ranges[pool].returned.pop_front() {
            if usable(self, ip) && self.ranges[pool].contains(ip) {
                return Some(ip);
            }
        }
        loop {
            let range = &mut self.ranges[pool];
            if range.cursor > u64::from(range.end) {
                break;
            }
            // The cursor only runs from start to end, both u32.
            let ip = Ipv4Addr::from(range.cursor as u32);
            range.cursor += 1;
            if usable(self, ip) {
                return Some(ip);
            }
        }
        while let Some(&(expiry, ip)) = self.ranges[pool].expiring.first() {
            if expiry > now {
                return None;
            }
            self.remove(ip);
            // `remove` queued it as given back; it is being handed out (or skipped) instead.
            self.ranges[pool].returned.pop_back();
            if ip != skip {
                return Some(ip);
            }
        }
        None
    }

    /// Holds `ip` for `mac` until `until`, unless the client already has it bound.
    pub(crate) fn offer(&mut self, ip: Ipv4Addr, mac: MacAddr, until: i64) {
        if matches!(self.by_ip.get(&ip), Some(Slot::Bound(lease)) if lease.mac == mac) {
            return;
        }
        self.set(ip, Slot::Offered { mac, until });
    }

    /// Binds `lease`. A different address the client held before is given back: one client,
    /// one lease.
    pub(crate) fn bind(&mut self, lease: Lease) {
        if let Some(old) = self
            .of_mac(lease.mac)
            .map(|(ip, _)| ip)
            .filter(|&ip| ip != lease.ip)
        {
            self.remove(old);
        }
        self.set(lease.ip, Slot::Bound(lease));
    }

    /// Drops an offer made to `mac` (it chose another server).
    pub(crate) fn withdraw_offer(&mut self, mac: MacAddr) -> Option<Ipv4Addr> {
        match self.of_mac(mac) {
            Some((ip, Slot::Offered { .. })) => {
                self.remove(ip);
                Some(ip)
            }
            _ => None,
        }
    }

    /// Ends `mac`'s active binding of `ip` now; false if it has none. The record stays so
    /// the client gets the address again if nobody else took it (RFC 2131 4.3.4).
    pub(crate) fn release(&mut self, mac: MacAddr, ip: Ipv4Addr, now: i64) -> bool {
        match self.by_ip.get(&ip) {
            Some(Slot::Bound(lease)) if lease.mac == mac && lease.expires_unix > now => {
                let mut lease = lease.clone();
                lease.expires_unix = now;
                self.set(ip, Slot::Bound(lease));
                true
            }
            _ => false,
        }
    }

    /// Takes `ip` out of use until `until`. Returns the active binding it ends, if any.
    pub(crate) fn decline(&mut self, ip: Ipv4Addr, now: i64, until: i64) -> Option<Lease> {
        let previous = match self.by_ip.get(&ip) {
            Some(Slot::Bound(lease)) if lease.expires_unix > now => Some(lease.clone()),
            _ => None,
        };
        self.set(ip, Slot::Declined { until });
        previous
    }

    /// Restores a lease persisted by an earlier run. Returns false when it conflicts with
    /// one already restored that lasts longer.
    pub(crate) fn restore(&mut self, lease: Lease) -> bool {
        let keeps = |slot: Option<&Slot>| slot.is_some_and(|s| s.expires() >= lease.expires_unix);
        if keeps(self.by_ip.get(&lease.ip)) || keeps(self.of_mac(lease.mac).map(|(_, s)| s)) {
            return false;
        }
        self.bind(lease);
        true
    }

    fn set(&mut self, ip: Ipv4Addr, slot: Slot) {
        let tracked = !self.reserved.contains_key(&ip);
        let range = self.range_of(ip);
        let new_mac = slot.mac();
        let new_expiry = slot.expires();
        if let Some(old) = self.by_ip.insert(ip, slot) {
            self.forget(ip, &old, range);
        }
        if let Some(mac) = new_mac {
            self.by_mac.insert(mac, ip);
        }
        if let (Some(r), true) = (range, tracked) {
            self.ranges[r].expiring.insert((new_expiry, ip));
        }
    }

    fn remove(&mut self, ip: Ipv4Addr) {
        if let Some(old) = self.by_ip.remove(&ip) {
            let range = self.range_of(ip);
            self.forget(ip, &old, range);
            if let Some(r) = range {
                self.ranges[r].returned.push_back(ip);
            }
        }
    }

    /// Removes the indexes that pointed at `old`, the previous slot of `ip`.
    fn forget(&mut self, ip: Ipv4Addr, old: &Slot, range: Option<usize>) {
        if let Some(mac) = old.mac().filter(|m| self.by_mac.get(m) == Some(&ip)) {
            self.by_mac.remove(&mac);
        }
        if let Some(r) = range {
            self.ranges[r].expiring.remove(&(old.expires(), ip));
        }
    }

    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        for (mac, ip) in &self.by_mac {
            assert_eq!(
                self.by_ip.get(ip).and_then(Slot::mac),
                Some(*mac),
                "by_mac {mac} -> {ip}"
            );
        }
        for (r, range) in self.ranges.iter().enumerate() {
            for (expiry, ip) in &range.expiring {
                assert_eq!(
                    self.by_ip.get(ip).map(Slot::expires),
                    Some(*expiry),
                    "pool {r} {ip}"
                );
            }
        }
        for (ip, slot) in &self.by_ip {
            if let (Some(r), false) = (self.range_of(*ip), self.reserved.contains_key(ip)) {
                assert!(
                    self.ranges[r].expiring.contains(&(slot.expires(), *ip)),
                    "{ip} untracked"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::mac;

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, last)
    }

    fn store(reserved: &[(u8, u8)]) -> LeaseStore {
        LeaseStore::new(
            &[(ip(10), ip(13))],
            reserved.iter().map(|&(a, m)| (ip(a), mac(m))).collect(),
        )
    }

    fn lease(m: u8, a: u8, expires: i64) -> Lease {
        Lease {
            mac: mac(m),
            ip: ip(a),
            expires_unix: expires,
            hostname: None,
        }
    }

    const SKIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

    #[test]
    fn allocates_in_order_skipping_reserved_and_taken() {
        let mut s = store(&[(11, 9)]);
        s.bind(lease(5, 12, 1000));
        assert_eq!(s.allocate(0, 0, SKIP), Some(ip(10)));
        s.offer(ip(10), mac(1), 60);
        assert_eq!(s.allocate(0, 0, SKIP), Some(ip(13)));
        s.offer(ip(13), mac(2), 60);
        assert_eq!(
            s.allocate(0, 0, SKIP),
            None,
            "exhausted before anything expires"
        );
        s.check_invariants();
    }

    #[test]
    fn never_hands_out_the_servers_own_address() {
        let mut s = store(&[]);
        assert_eq!(s.allocate(0, 0, ip(10)), Some(ip(11)));
    }

    #[test]
    fn reclaims_expired_offers_then_oldest_bindings() {
        let mut s = store(&[]);
        for (m, a) in [(1, 10), (2, 11), (3, 12)] {
            s.bind(lease(m, a, 500 + i64::from(m)));
        }
        s.offer(ip(13), mac(4), 100);
        assert_eq!(s.allocate(0, 50, SKIP), None);
        assert_eq!(s.allocate(0, 100, SKIP), Some(ip(13)), "expired offer");
        s.offer(ip(13), mac(5), 1000);
        assert_eq!(
            s.allocate(0, 502, SKIP),
            Some(ip(10)),
            "oldest expired binding"
        );
        assert!(s.of_mac(mac(1)).is_none(), "previous owner forgotten");
        s.check_invariants();
    }

    #[test]
    fn withdrawn_offer_is_reused_first() {
        let mut s = store(&[]);
        s.offer(ip(10), mac(1), 100);
        s.offer(ip(11), mac(2), 100);
        assert_eq!(s.withdraw_offer(mac(1)), Some(ip(10)));
        assert_eq!(s.allocate(0, 0, SKIP), Some(ip(10)));
        assert_eq!(s.withdraw_offer(mac(3)), None);
        s.check_invariants();
    }

    #[test]
    fn rebinding_elsewhere_gives_the_old_address_back() {
        let mut s = store(&[]);
        s.bind(lease(1, 10, 100));
        s.bind(lease(1, 12, 100));
        assert!(s.slot(ip(10)).is_none());
        assert_eq!(s.of_mac(mac(1)).map(|(a, _)| a), Some(ip(12)));
        s.check_invariants();
    }

    #[test]
    fn offer_does_not_downgrade_own_binding() {
        let mut s = store(&[]);
        s.bind(lease(1, 10, 100));
        s.offer(ip(10), mac(1), 50);
        assert!(matches!(s.slot(ip(10)), Some(Slot::Bound(_))));
    }

    #[test]
    fn free_for_rules() {
        let mut s = store(&[(13, 9)]);
        s.bind(lease(1, 10, 100));
        s.offer(ip(11), mac(2), 100);
        s.decline(ip(12), 0, 100);
        assert!(s.is_free_for(ip(10), mac(1), 0), "own binding");
        assert!(
            !s.is_free_for(ip(10), mac(2), 200),
            "someone else's expired binding"
        );
        assert!(!s.is_free_for(ip(11), mac(3), 50));
        assert!(s.is_free_for(ip(11), mac(3), 100), "expired offer");
        assert!(!s.is_free_for(ip(12), mac(3), 50), "quarantined");
        assert!(s.is_free_for(ip(12), mac(3), 100));
        assert!(!s.is_free_for(ip(13), mac(3), 0), "reserved for another");
        assert!(s.is_free_for(ip(13), mac(9), 0));
    }

    #[test]
    fn release_keeps_the_record_and_expires_it() {
        let mut s = store(&[]);
        s.bind(lease(1, 10, 1000));
        assert!(!s.release(mac(2), ip(10), 5));
        assert!(s.release(mac(1), ip(10), 5));
        assert!(!s.release(mac(1), ip(10), 6), "already over");
        assert_eq!(s.lease_for_ip(ip(10)).map(|l| l.expires_unix), Some(5));
        assert!(s.is_free_for(ip(10), mac(1), 6), "same client gets it back");
        s.check_invariants();
    }

    #[test]
    fn decline_quarantines_and_forgets_the_client() {
        let mut s = store(&[]);
        s.bind(lease(1, 10, 1000));
        assert_eq!(s.decline(ip(10), 0, 300).map(|l| l.mac), Some(mac(1)));
        assert_eq!(s.decline(ip(11), 0, 300), None, "nothing was bound");
        assert!(s.of_mac(mac(1)).is_none());
        assert!(s.lease_for_ip(ip(10)).is_none());
        s.check_invariants();
    }

    #[test]
    fn restore_keeps_the_longer_of_conflicting_leases() {
        let mut s = store(&[]);
        assert!(s.restore(lease(1, 10, 500)));
        assert!(!s.restore(lease(2, 10, 400)), "same ip, shorter");
        assert!(s.restore(lease(3, 10, 600)), "same ip, longer");
        assert!(s.of_mac(mac(1)).is_none());
        assert!(!s.restore(lease(3, 11, 550)), "same mac, shorter");
        s.check_invariants();
    }
}
