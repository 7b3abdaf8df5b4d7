//! `cargo xtask bench …`: `metalcastd`'s boot services against the tools an operator would
//! otherwise run, in the same run, on the same machine, over a veth pair between two network
//! namespaces made here. See `docs/benchmarks.md`.

use std::fmt::Write as _;
use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;

use crate::lab::{self, Appliance, Daemon, Netns};
use crate::mcast;

mod boot;
mod deploy;
mod dhcp;
mod tftp;

#[derive(Clone, Copy, ValueEnum)]
pub enum Target {
    /// perfdhcp against metalcastd, dnsmasq and kea-dhcp4: highest DORA/s with at most 1% lost.
    Dhcp,
    /// 50 parallel `curl tftp://` fetches of a 30 MB file from metalcastd and from tftpd-hpa.
    Tftp,
    /// Power-on → agent registered, BIOS and UEFI, with and without router advertisements.
    Boot,
    /// Unicast deploy of the Debian image into a VM against `curl | zstd -d | tar -x` there.
    Deploy,
    /// Multicast against udpcast and uftp: capped link, 4 and 16 receivers, 0/1/5% loss.
    Mcast,
}

#[derive(clap::Args)]
pub struct Args {
    #[arg(value_enum)]
    pub target: Target,
    #[command(flatten)]
    pub mcast: mcast::BenchArgs,
}

pub fn run(args: Args) -> Result<()> {
    let removed = lab::clean_stale()?;
    if removed > 0 {
        println!("bench: removed {removed} stale lab namespace(s)");
    }
    // Other work on the machine skews every figure; say how busy it was.
    println!("bench: load average {}", load_average());
    match args.target {
        Target::Dhcp => dhcp::run(),
        Target::Tftp => tftp::run(),
        Target::Boot => boot::run(),
        Target::Deploy => deploy::run(),
        Target::Mcast => mcast::bench(args.mcast),
    }
}

/// The 1, 5 and 15 minute load averages and the CPU count.
fn load_average() -> String {
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let averages: Vec<&str> = load.split_whitespace().take(3).collect();
    format!("{} ({cpus} CPUs)", averages.join(" "))
}

/// The server side of the benchmark link.
pub const SERVER_IF: &str = "bench-srv";
/// The client side, where the load generator runs.
pub const CLIENT_IF: &str = "bench-cli";

/// A server namespace and a client namespace joined by a veth pair; both removed on drop.
pub struct Link {
    pub server: Netns,
    pub client: Netns,
}

impl Link {
    /// `server_cidr` and `client_cidr` are `addr/prefix` on the same subnet.
    pub fn create(server_cidr: &str, client_cidr: &str) -> Result<Link> {
        let server = Netns::create("bsrv")?;
        let client = Netns::create("bcli")?;
        server.ip(&[
            "link",
            "add",
            SERVER_IF,
            "type",
            "veth",
            "peer",
            "name",
            CLIENT_IF,
            "netns",
            &client.name,
        ])?;
        server.ip(&["addr", "add", server_cidr, "brd", "+", "dev", SERVER_IF])?;
        client.ip(&["addr", "add", client_cidr, "brd", "+", "dev", CLIENT_IF])?;
        server.ip(&["link", "set", SERVER_IF, "up"])?;
        client.ip(&["link", "set", CLIENT_IF, "up"])?;
        Ok(Link { server, client })
    }
}

/// A server under test, stopped on drop.
pub enum Running<'a> {
    Metalcastd(Box<Appliance<'a>>),
    /// dnsmasq, kea-dhcp4, tftpd-hpa.
    Peer(Daemon),
}

impl Running<'_> {
    pub fn check_alive(&mut self) -> Result<()> {
        match self {
            Running::Metalcastd(appliance) => appliance.check_alive(),
            Running::Peer(daemon) => daemon.check_alive(),
        }
    }
}

/// Removes `dir` if it exists and makes it again, empty.
pub fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// A `metalcastd` configuration for a benchmark run in `dir`: its store under `dir/data`,
/// HTTP on `ip:8080`, and stand-in boot files (no benchmark boots a node), followed by
/// `sections` (the `[dhcp]` and `[tftp]` the benchmark exercises).
pub fn appliance_config(dir: &Path, ip: Ipv4Addr, sections: &str) -> Result<String> {
    let boot = dir.join("boot");
    fs::create_dir_all(&boot)?;
    let kernel = boot.join("vmlinuz");
    let initramfs = boot.join("initramfs.cpio.zst");
    fs::write(&kernel, b"benchmark stand-in kernel\n")?;
    fs::write(&initramfs, b"benchmark stand-in initramfs\n")?;
    let mut cfg = String::new();
    let _ = writeln!(cfg, "data_dir = {:?}", dir.join("data"));
    let _ = writeln!(cfg, "\n[http]\nlisten = \"{ip}:8080\"");
    let _ = writeln!(
        cfg,
        "\n[boot]\nkernel = {kernel:?}\ninitramfs = {initramfs:?}\n"
    );
    cfg.push_str(sections);
    Ok(cfg)
}

/// The URL `lab::Appliance` probes for health.
pub fn appliance_url(ip: Ipv4Addr) -> String {
    format!("http://{ip}:8080")
}

/// Waits for `child` to exit; kills it and fails once `timeout` has passed.
pub fn wait_bounded(child: &mut Child, what: &str, timeout: Duration) -> Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for {what}"))?
        {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} still running after {}s; killed", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// CPU time (user + system, with reaped children) the processes in `ns` have used so far.
/// The server namespace holds only the server under test, so a difference of two readings is
/// what the server spent in between. Not for servers that fork per client and let children
/// go unreaped (tftpd-hpa): their time is then counted nowhere.
pub fn cpu_time(ns: &Netns) -> Result<Duration> {
    let out = lab::run(Command::new("ip").args(["netns", "pids", &ns.name]))?;
    let mut ticks = 0;
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        // A process may exit between the listing and the read; its parent has its time once
        // it reaps it.
        if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
            ticks += stat_ticks(&stat).with_context(|| format!("reading /proc/{pid}/stat"))?;
        }
    }
    let out = lab::run(Command::new("getconf").arg("CLK_TCK"))?;
    let per_sec: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("getconf CLK_TCK")?;
    Ok(Duration::from_secs_f64(
        ticks as f64 / per_sec.max(1) as f64,
    ))
}

/// utime + stime + cutime + cstime of a `/proc/PID/stat` line, in clock ticks. The fields
/// are counted from after the command name, which may itself hold spaces and parentheses.
fn stat_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts at field 3 (state); utime is field 14, cstime field 17 (proc(5)).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields
        .get(11..15)?
        .iter()
        .map(|f| f.parse::<u64>().ok())
        .sum()
}

/// `a / b` as "3.2×", or "n/a" when there is nothing to divide.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "n/a".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_sums_own_and_children_time() {
        let stat = "1540 (tokio (rt) x) S 1 1540 1540 0 -1 4194560 1962 0 0 0 250 111 7 3 20 0 5 0 \
                    3135 1103626240 4150 18446744073709551615";
        assert_eq!(stat_ticks(stat), Some(250 + 111 + 7 + 3));
        assert_eq!(stat_ticks("1540 (short) S 1 2 3"), None);
        assert_eq!(stat_ticks("no parenthesis"), None);
    }

    #[test]
    fn ratio_needs_both_sides() {
        assert_eq!(ratio(Some(3.0), Some(2.0)), "1.50×");
        assert_eq!(ratio(None, Some(2.0)), "n/a");
        assert_eq!(ratio(Some(3.0), Some(0.0)), "n/a");
    }
}
