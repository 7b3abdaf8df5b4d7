//! `cargo xtask bench dhcp`: Kea's `perfdhcp` drives `metalcastd`, dnsmasq and `kea-dhcp4` in
//! turn, each serving the same pool with leases persisted, and finds for each the highest
//! offered rate of new-client DORA exchanges it completes with at most 1% lost.
//!
//! Every probe starts the server afresh on an empty lease store, so a rate does not depend
//! on what earlier probes left behind (dnsmasq rewrites its whole lease file per change).

use std::collections::HashSet;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{
    CLIENT_IF, Link, Running, SERVER_IF, appliance_config, appliance_url, cpu_time, fresh_dir,
    ratio, wait_bounded,
};
use crate::lab::{self, Appliance, Binaries, Daemon, wait_for};

/// A /12, so that the pool (~983k addresses) never runs dry within a probe at any rate.
const SERVER_CIDR: &str = "10.80.0.1/12";
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 80, 0, 1);
const CLIENT_CIDR: &str = "10.80.0.2/12";
const SUBNET: &str = "10.80.0.0/12";
const NETMASK: &str = "255.240.0.0";
const POOL_FIRST: Ipv4Addr = Ipv4Addr::new(10, 81, 0, 1);
const POOL_LAST: Ipv4Addr = Ipv4Addr::new(10, 95, 255, 254);
const LEASE_SECS: u32 = 86_400;

/// Seconds of load per probe.
const PERIOD_SECS: u32 = 3;
/// Simulated clients: far more than a probe sends, so each exchange is a new lease.
const CLIENTS: u32 = 1 << 24;
/// The most of the offered exchanges that may go without an ACK for a rate to pass.
const MAX_LOST_PERCENT: u64 = 1;
/// Below this share of the offered DISCOVERs sent, perfdhcp (not the server) set the limit.
const MIN_SENT_SHARE: f64 = 0.97;
/// The client perfdhcp uses to see whether a freshly started server answers yet; outside the
/// load clients' MAC range (perfdhcp's default base 00:0c:01:02:03:04).
const READY_MAC: &str = "mac=02:00:00:00:00:01";

const SEARCH: RateSearch = RateSearch {
    start: 200,
    min: 25,
    max: 51_200,
    precision: 1.07,
    lo: None,
    hi: None,
};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Server {
    Metalcastd,
    Dnsmasq,
    Kea,
}

impl Server {
    const ALL: [Server; 3] = [Server::Metalcastd, Server::Dnsmasq, Server::Kea];

    fn name(self) -> &'static str {
        match self {
            Server::Metalcastd => "metalcastd",
            Server::Dnsmasq => "dnsmasq",
            Server::Kea => "kea-dhcp4",
        }
    }
}

pub fn run() -> Result<()> {
    let bins = lab::build_binaries()?;
    let dir = lab::run_dir("bench-dhcp")?;
    let link = Link::create(SERVER_CIDR, CLIENT_CIDR)?;
    let env = Env { link, bins, dir };
    println!(
        "bench dhcp: perfdhcp, {PERIOD_SECS}s probes of new-client DORA, pool {POOL_FIRST}-{POOL_LAST}, \
         pass = at most {}% of offered exchanges without an ACK",
        MAX_LOST_PERCENT
    );
    let mut results = Vec::new();
    for server in Server::ALL {
        results.push((server, search(&env, server)?));
    }
    report(&results)
}

struct Env {
    link: Link,
    bins: Binaries,
    dir: PathBuf,
}

/// Probes `server` at the rates [`RateSearch`] picks; returns every probe made.
fn search(env: &Env, server: Server) -> Result<Vec<Probe>> {
    let mut search = SEARCH;
    let mut probes = Vec::new();
    while let Some(rate) = search.next() {
        let mut verdict = Verdict::Lossy;
        // A probe that fails gets one more try: on a shared 2-CPU machine another process can
        // take the CPU (from the server or from perfdhcp) for part of a 3 s probe, and that
        // is not the server's capacity.
        for _ in 0..2 {
            let probe = probe(env, server, rate)?;
            println!("bench dhcp: {:<10} {}", server.name(), probe.describe());
            verdict = probe.verdict();
            probes.push(probe);
            if verdict == Verdict::Pass {
                break;
            }
        }
        search.record(rate, verdict == Verdict::Pass);
    }
    Ok(probes)
}

fn probe(env: &Env, server: Server, rate: u32) -> Result<Probe> {
    let dir = env.dir.join(server.name());
    fresh_dir(&dir)?;
    let mut running = start(env, server, &dir)?;
    let log = || format!("see the logs in {}", dir.display());
    wait_for(
        &format!("{} to complete one DORA", server.name()),
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            running.check_alive()?;
            ready(&env.link)
        },
    )
    .with_context(log)?;
    let cpu_before = cpu_time(&env.link.server)?;
    let out = perfdhcp(&env.link, rate, &dir)?;
    let server_cpu = cpu_time(&env.link.server)?.saturating_sub(cpu_before);
    running.check_alive().with_context(log)?;
    // Stopped before counting: what is stored must have survived the server.
    drop(running);
    let report = PerfdhcpReport::parse(&out).with_context(|| {
        format!(
            "perfdhcp printed no statistics; see {}",
            dir.join("perfdhcp.out").display()
        )
    })?;
    let leases = count_leases(server, &dir)?;
    Ok(Probe {
        rate,
        report,
        leases,
        server_cpu,
    })
}

fn start<'a>(env: &'a Env, server: Server, dir: &Path) -> Result<Running<'a>> {
    let ns = &env.link.server;
    match server {
        Server::Metalcastd => {
            let tftp_root = dir.join("tftp");
            fs::create_dir_all(&tftp_root)?;
            let sections = format!(
                "[tftp]\nroot = {tftp_root:?}\nbind = \"{SERVER_IP}:69\"\n\n\
                 [dhcp]\nmode = \"authoritative\"\ninterfaces = [\"{SERVER_IF}\"]\n\
                 unknown_nodes = \"discover\"\nlease_time_secs = {LEASE_SECS}\n\n\
                 [[dhcp.pools]]\nsubnet = \"{SUBNET}\"\nrange = [\"{POOL_FIRST}\", \"{POOL_LAST}\"]\n"
            );
            let config = appliance_config(dir, SERVER_IP, &sections)?;
            let appliance =
                Appliance::start(ns, &env.bins, dir, &config, &appliance_url(SERVER_IP))?;
            Ok(Running::Metalcastd(Box::new(appliance)))
        }
        Server::Dnsmasq => {
            let mut cmd = ns.command("dnsmasq");
            cmd.args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--port=0",
                "--no-ping",
            ])
            .args([&format!("--interface={SERVER_IF}"), "--bind-interfaces"])
            .arg(format!(
                "--dhcp-range={POOL_FIRST},{POOL_LAST},{NETMASK},{LEASE_SECS}"
            ))
            .arg(format!("--dhcp-lease-max={}", pool_size()))
            .arg(format!(
                "--dhcp-leasefile={}",
                dir.join("dnsmasq.leases").display()
            ))
            .arg("--log-facility=-");
            Ok(Running::Peer(Daemon::spawn(
                "dnsmasq",
                &mut cmd,
                &dir.join("dnsmasq.log"),
            )?))
        }
        Server::Kea => {
            let config = dir.join("kea-dhcp4.json");
            fs::write(
                &config,
                kea_config(&dir.join("kea-leases4.csv")).to_string(),
            )?;
            let mut cmd = ns.command("kea-dhcp4");
            // Kea's PID and lock files default to /run/kea; keep this run's to itself.
            cmd.arg("-c")
                .arg(&config)
                .env("KEA_PIDFILE_DIR", dir)
                .env("KEA_LOCKFILE_DIR", dir);
            Ok(Running::Peer(Daemon::spawn(
                "kea-dhcp4",
                &mut cmd,
                &dir.join("kea-dhcp4.log"),
            )?))
        }
    }
}

fn pool_size() -> u32 {
    u32::from(POOL_LAST) - u32::from(POOL_FIRST) + 1
}

/// Kea with the same pool and lease time, leases in a memfile CSV written as they change.
fn kea_config(lease_file: &Path) -> serde_json::Value {
    serde_json::json!({
        "Dhcp4": {
            "interfaces-config": { "interfaces": [SERVER_IF] },
            "lease-database": {
                "type": "memfile",
                "persist": true,
                "name": lease_file.display().to_string(),
                "lfc-interval": 3600
            },
            "valid-lifetime": LEASE_SECS,
            "subnet4": [{
                "id": 1,
                "subnet": SUBNET,
                "pools": [{ "pool": format!("{POOL_FIRST} - {POOL_LAST}") }]
            }]
        }
    })
}

/// One DORA at 1/s for 1 s: `Some` once the server answers it.
fn ready(link: &Link) -> Result<Option<()>> {
    let status = link
        .client
        .command("perfdhcp")
        .args(["-4", "-l", CLIENT_IF, "-r", "1", "-p", "1", "-b", READY_MAC])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running perfdhcp (Debian package kea-admin)")?;
    Ok(status.success().then_some(()))
}

/// Offers `rate` new-client DORA exchanges per second for [`PERIOD_SECS`]; returns the output.
fn perfdhcp(link: &Link, rate: u32, dir: &Path) -> Result<String> {
    let out_path = dir.join("perfdhcp.out");
    let out = fs::File::create(&out_path)?;
    let mut child = link
        .client
        .command("perfdhcp")
        .args(["-4", "-l", CLIENT_IF])
        .args([
            "-r",
            &rate.to_string(),
            "-R",
            &CLIENTS.to_string(),
            "-p",
            &PERIOD_SECS.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("running perfdhcp (Debian package kea-admin)")?;
    let status = wait_bounded(
        &mut child,
        "perfdhcp",
        Duration::from_secs(u64::from(PERIOD_SECS) + 30),
    )?;
    // 3 means some exchanges did not complete: a measurement, not a failure.
    if !matches!(status.code(), Some(0 | 3)) {
        bail!("perfdhcp failed ({status}); see {}", out_path.display());
    }
    Ok(fs::read_to_string(&out_path)?)
}

/// Leases the server's store holds once it has stopped.
fn count_leases(server: Server, dir: &Path) -> Result<u64> {
    match server {
        Server::Metalcastd => {
            // The store's file: `metalcast.db` in the data directory (docs/config.md).
            let db = dir.join("data").join("metalcast.db");
            let out = lab::run(
                Command::new("sqlite3")
                    .arg(&db)
                    .arg("SELECT count(*) FROM leases"),
            )
            .context("counting metalcastd's leases with sqlite3 (Debian package sqlite3)")?;
            let text = String::from_utf8_lossy(&out.stdout);
            text.trim()
                .parse()
                .with_context(|| format!("sqlite3 printed {text:?} for a count"))
        }
        Server::Dnsmasq => {
            let text = fs::read_to_string(dir.join("dnsmasq.leases")).unwrap_or_default();
            Ok(text.lines().filter(|l| !l.trim().is_empty()).count() as u64)
        }
        Server::Kea => {
            let text = fs::read_to_string(dir.join("kea-leases4.csv")).unwrap_or_default();
            Ok(kea_lease_count(&text))
        }
    }
}

/// Distinct addresses in a Kea memfile: it appends a row per change, after a header row.
fn kea_lease_count(csv: &str) -> u64 {
    let addresses: HashSet<&str> = csv
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').next())
        .filter(|a| a.parse::<Ipv4Addr>().is_ok())
        .collect();
    addresses.len() as u64
}

/// Sent and answered counts of one exchange step, from perfdhcp's final statistics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Exchange {
    sent: u64,
    received: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct PerfdhcpReport {
    discover_offer: Exchange,
    request_ack: Exchange,
}

impl PerfdhcpReport {
    /// Reads the `***Statistics for: DISCOVER-OFFER***` and `…REQUEST-ACK***` sections.
    fn parse(out: &str) -> Option<PerfdhcpReport> {
        let mut report = PerfdhcpReport::default();
        let (mut seen_do, mut seen_ra) = (false, false);
        let mut current: Option<&mut Exchange> = None;
        for line in out.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("***Statistics for: ") {
                current = match rest.trim_end_matches('*') {
                    "DISCOVER-OFFER" => {
                        seen_do = true;
                        Some(&mut report.discover_offer)
                    }
                    "REQUEST-ACK" => {
                        seen_ra = true;
                        Some(&mut report.request_ack)
                    }
                    _ => None,
                };
                continue;
            }
            if line.starts_with("***") {
                current = None;
                continue;
            }
            let Some(exchange) = current.as_deref_mut() else {
                continue;
            };
            if let Some(n) = line.strip_prefix("sent packets: ") {
                exchange.sent = n.trim().parse().ok()?;
            } else if let Some(n) = line.strip_prefix("received packets: ") {
                exchange.received = n.trim().parse().ok()?;
            }
        }
        (seen_do && seen_ra).then_some(report)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    /// More than [`MAX_LOST_PERCENT`] of the exchanges went unanswered.
    Lossy,
    /// perfdhcp could not send at the offered rate: the client, not the server, is the limit.
    ClientLimited,
}

struct Probe {
    rate: u32,
    report: PerfdhcpReport,
    leases: u64,
    /// CPU time the server used while perfdhcp ran.
    server_cpu: Duration,
}

impl Probe {
    /// Exchanges started (DISCOVERs sent) that got no ACK.
    fn unanswered(&self) -> u64 {
        let r = &self.report;
        r.discover_offer.sent.saturating_sub(r.request_ack.received)
    }

    /// Share of started exchanges that got no ACK.
    fn lost(&self) -> f64 {
        match self.report.discover_offer.sent {
            0 => 1.0,
            started => self.unanswered() as f64 / started as f64,
        }
    }

    fn verdict(&self) -> Verdict {
        let started = self.report.discover_offer.sent;
        let offered = f64::from(self.rate) * f64::from(PERIOD_SECS);
        if (started as f64) < offered * MIN_SENT_SHARE {
            Verdict::ClientLimited
        } else if self.unanswered() * 100 > started * MAX_LOST_PERCENT {
            Verdict::Lossy
        } else {
            Verdict::Pass
        }
    }

    /// Completed exchanges per second.
    fn completed_rate(&self) -> f64 {
        self.report.request_ack.received as f64 / f64::from(PERIOD_SECS)
    }

    /// Server CPU time per completed exchange, in microseconds.
    fn cpu_per_dora_us(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1e6 / self.report.request_ack.received.max(1) as f64
    }

    fn describe(&self) -> String {
        let r = &self.report;
        let verdict = match self.verdict() {
            Verdict::Pass => "pass",
            Verdict::Lossy => "too many lost",
            Verdict::ClientLimited => "perfdhcp could not send this fast",
        };
        format!(
            "{:>6}/s offered: DISCOVER {}→OFFER {}, REQUEST {}→ACK {}, {:.2}% lost, {} leases stored, server CPU {:.2}s: {verdict}",
            self.rate,
            r.discover_offer.sent,
            r.discover_offer.received,
            r.request_ack.sent,
            r.request_ack.received,
            self.lost() * 100.0,
            self.leases,
            self.server_cpu.as_secs_f64()
        )
    }

    /// Every ACKed client's lease survived the server; perfdhcp's random clients may repeat a
    /// MAC (same lease), hence the 1% slack.
    fn leases_persisted(&self) -> bool {
        self.leases as f64 >= self.report.request_ack.received as f64 * 0.99
    }
}

/// Finds the highest passing rate: doubles from `start` until a probe fails (halves while the
/// first ones fail), then bisects until the passing and failing rates are within `precision`
/// of each other. Bounded by `min` and `max`, so the number of probes is too.
#[derive(Debug, Clone, Copy)]
struct RateSearch {
    start: u32,
    min: u32,
    max: u32,
    precision: f64,
    /// Highest rate that passed.
    lo: Option<u32>,
    /// Lowest rate that failed.
    hi: Option<u32>,
}

impl RateSearch {
    fn next(&self) -> Option<u32> {
        match (self.lo, self.hi) {
            (None, None) => Some(self.start),
            (Some(lo), None) => (lo < self.max).then(|| lo.saturating_mul(2).min(self.max)),
            (None, Some(hi)) => (hi > self.min).then(|| (hi / 2).max(self.min)),
            (Some(lo), Some(hi)) => {
                let mid = lo + (hi - lo) / 2;
                (f64::from(hi) > f64::from(lo) * self.precision && mid > lo).then_some(mid)
            }
        }
    }

    fn record(&mut self, rate: u32, passed: bool) {
        if passed {
            self.lo = Some(self.lo.map_or(rate, |lo| lo.max(rate)));
        } else {
            self.hi = Some(self.hi.map_or(rate, |hi| hi.min(rate)));
        }
    }
}

/// The highest passing probe, if any passed.
fn best(probes: &[Probe]) -> Option<&Probe> {
    probes
        .iter()
        .filter(|p| p.verdict() == Verdict::Pass)
        .max_by_key(|p| p.rate)
}

/// Whether every probe at the next rate tried above `rate` found perfdhcp unable to send
/// that fast: the search stopped at the client's limit, not the server's.
fn client_limited_above(probes: &[Probe], rate: u32) -> bool {
    let Some(next) = probes.iter().map(|p| p.rate).filter(|&r| r > rate).min() else {
        return false;
    };
    probes
        .iter()
        .filter(|p| p.rate == next)
        .all(|p| p.verdict() == Verdict::ClientLimited)
}

fn report(results: &[(Server, Vec<Probe>)]) -> Result<()> {
    println!();
    println!(
        "{:<12} {:>22} {:>12} {:>22} {:>16}",
        "server",
        "max DORA/s (≤1% lost)",
        "completed/s",
        "leases stored / ACKed",
        "CPU µs per DORA"
    );
    let mut not_persisted = Vec::new();
    for (server, probes) in results {
        match best(probes) {
            Some(p) => {
                println!(
                    "{:<12} {:>22} {:>12.0} {:>22} {:>16.0}",
                    server.name(),
                    format!(
                        "{}{}",
                        p.rate,
                        if client_limited_above(probes, p.rate) {
                            " (perfdhcp-bound)"
                        } else {
                            ""
                        }
                    ),
                    p.completed_rate(),
                    format!("{} / {}", p.leases, p.report.request_ack.received),
                    p.cpu_per_dora_us()
                );
                if !p.leases_persisted() {
                    not_persisted.push(server.name());
                }
            }
            None => println!("{:<12} {:>22}", server.name(), format!("< {}", SEARCH.min)),
        }
    }
    let rate = |server: Server| {
        results
            .iter()
            .find(|(s, _)| *s == server)
            .and_then(|(_, p)| best(p))
            .map(|p| f64::from(p.rate))
    };
    let ours = rate(Server::Metalcastd);
    println!();
    println!(
        "metalcastd / dnsmasq:   {}  (goal ≥ 5×)",
        ratio(ours, rate(Server::Dnsmasq))
    );
    println!(
        "metalcastd / kea-dhcp4: {}  (goal ≥ 1×)",
        ratio(ours, rate(Server::Kea))
    );
    if !not_persisted.is_empty() {
        bail!(
            "{} stored fewer leases than it ACKed at its best rate: leases are not all persisted",
            not_persisted.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// perfdhcp 2.2.0's final statistics (against dnsmasq at 400/s).
    const OUTPUT: &str = "\
Running: perfdhcp -4 -l vc -r 400 -R 1000000 -p 5
Scenario: basic.
Multi-thread mode enabled.
***Rate statistics***
Rate: 370.556 4-way exchanges/second, expected rate: 400

***Malformed Packets***
Malformed packets: 0
***Statistics for: DISCOVER-OFFER***
sent packets: 1999
received packets: 1945
drops: 54
drops ratio: 2.70135 %
orphans: 0
rejected leases: 0
non unique addresses: 0

min delay: 0.016 ms
avg delay: 0.026 ms
collected packets: 0

***Statistics for: REQUEST-ACK***
sent packets: 1945
received packets: 1853
drops: 92
drops ratio: 4.730 %
orphans: 0
";

    #[test]
    fn parses_both_exchange_steps() {
        let report = PerfdhcpReport::parse(OUTPUT).expect("parses");
        assert_eq!(
            report.discover_offer,
            Exchange {
                sent: 1999,
                received: 1945
            }
        );
        assert_eq!(
            report.request_ack,
            Exchange {
                sent: 1945,
                received: 1853
            }
        );
    }

    #[test]
    fn output_without_final_statistics_is_refused() {
        assert_eq!(
            PerfdhcpReport::parse("Running: perfdhcp\nsent: 199/199; received: 199/199"),
            None
        );
        let only_do = OUTPUT
            .split("***Statistics for: REQUEST-ACK")
            .next()
            .unwrap_or_default();
        assert_eq!(PerfdhcpReport::parse(only_do), None);
        assert_eq!(PerfdhcpReport::parse(&OUTPUT.replace("1853", "many")), None);
    }

    fn probe(rate: u32, do_sent: u64, acks: u64, leases: u64) -> Probe {
        Probe {
            rate,
            report: PerfdhcpReport {
                discover_offer: Exchange {
                    sent: do_sent,
                    received: acks,
                },
                request_ack: Exchange {
                    sent: acks,
                    received: acks,
                },
            },
            leases,
            server_cpu: Duration::from_millis(600),
        }
    }

    #[test]
    fn cpu_per_dora_divides_by_acks() {
        assert!((probe(100, 300, 300, 300).cpu_per_dora_us() - 2000.0).abs() < 1e-6);
        assert!(probe(100, 300, 0, 0).cpu_per_dora_us().is_finite());
    }

    #[test]
    fn client_limited_only_when_every_probe_at_the_next_rate_was() {
        let period = u64::from(PERIOD_SECS);
        let ok = || probe(400, 400 * period, 400 * period, 0);
        let limited = || probe(800, 100 * period, 100 * period, 0);
        let lossy = probe(800, 800 * period, 400 * period, 0);
        let far_limited = probe(1600, 100 * period, 100 * period, 0);
        assert!(client_limited_above(&[ok(), limited(), limited()], 400));
        assert!(!client_limited_above(
            &[ok(), limited(), lossy, far_limited],
            400
        ));
        assert!(!client_limited_above(&[ok()], 400));
    }

    #[test]
    fn verdict_counts_loss_over_whole_dora_and_spots_a_slow_client() {
        let period = u64::from(PERIOD_SECS);
        assert_eq!(
            probe(1000, 1000 * period, 1000 * period, 0).verdict(),
            Verdict::Pass
        );
        let one_percent = 1000 * period / 100;
        assert_eq!(
            probe(1000, 1000 * period, 1000 * period - one_percent, 0).verdict(),
            Verdict::Pass
        );
        assert_eq!(
            probe(1000, 1000 * period, 1000 * period - one_percent - 1, 0).verdict(),
            Verdict::Lossy
        );
        assert_eq!(
            probe(1000, 500 * period, 500 * period, 0).verdict(),
            Verdict::ClientLimited
        );
        assert_eq!(probe(1000, 0, 0, 0).lost(), 1.0);
    }

    #[test]
    fn leases_persisted_allows_repeated_clients_only() {
        assert!(probe(100, 300, 300, 300).leases_persisted());
        assert!(probe(100, 300, 300, 297).leases_persisted());
        assert!(!probe(100, 300, 300, 200).leases_persisted());
        assert!(!probe(100, 300, 300, 0).leases_persisted());
    }

    /// Runs the search against a server that passes every rate up to `capacity`.
    fn run_search(capacity: u32) -> (Option<u32>, Vec<u32>) {
        let mut search = SEARCH;
        let mut tried = Vec::new();
        while let Some(rate) = search.next() {
            assert!(tried.len() < 30, "search does not end: {tried:?}");
            tried.push(rate);
            search.record(rate, rate <= capacity);
        }
        (search.lo, tried)
    }

    #[test]
    fn search_brackets_capacity_within_precision() {
        for capacity in [30, 199, 200, 437, 12_345, 50_000] {
            let (found, tried) = run_search(capacity);
            let found = found.expect("some rate passes");
            assert!(
                found <= capacity,
                "{capacity}: {found} passed above capacity"
            );
            assert!(
                f64::from(found) * SEARCH.precision >= f64::from(capacity),
                "{capacity}: only {found}; {tried:?}"
            );
            assert!(tried.len() <= 16, "{capacity}: {} probes", tried.len());
        }
    }

    #[test]
    fn search_stops_at_its_bounds() {
        let (found, tried) = run_search(u32::MAX);
        assert_eq!(found, Some(SEARCH.max));
        assert_eq!(tried.last(), Some(&SEARCH.max));
        let (found, tried) = run_search(0);
        assert_eq!(found, None);
        assert_eq!(tried.last(), Some(&SEARCH.min));
    }

    #[test]
    fn kea_leases_are_distinct_addresses_after_the_header() {
        let csv = "address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname,state,user_context\n\
                   10.81.0.1,00:0c:01:02:03:04,,86400,1795223704,1,0,0,,0,\n\
                   10.81.0.2,00:0c:01:02:03:05,,86400,1795223704,1,0,0,,0,\n\
                   10.81.0.1,00:0c:01:02:03:04,,86400,1795223705,1,0,0,,0,\n";
        assert_eq!(kea_lease_count(csv), 2);
        assert_eq!(kea_lease_count(""), 0);
    }
}
