//! `cargo xtask bench tftp`: 50 parallel `curl tftp://` fetches (blksize 1468) of one 30 MB
//! file, from `metalcastd` and from tftpd-hpa serving the same directory, one server at a
//! time, alternating, twice each. Every fetched copy is compared with the source: a run whose
//! transfers are wrong fails instead of counting.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use super::{Link, Running, appliance_config, appliance_url, fresh_dir, ratio, wait_bounded};
use crate::lab::{self, Appliance, Binaries, Daemon, wait_for};

const SERVER_CIDR: &str = "10.79.0.1/24";
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 1);
const CLIENT_CIDR: &str = "10.79.0.2/24";

const FILE: &str = "bench.bin";
/// Fetched before each run until it arrives: the server is up.
const READY_FILE: &str = "ready.txt";
const FILE_BYTES: usize = 30_000_000;
const FETCHES: usize = 50;
const BLKSIZE: &str = "1468";
const ROUNDS: usize = 2;
/// Far beyond any run seen; bounds a server that stalls transfers.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    TftpdHpa,
    Metalcastd,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::TftpdHpa => "tftpd-hpa",
            Server::Metalcastd => "metalcastd",
        }
    }
}

pub fn run() -> Result<()> {
    let bins = lab::build_binaries()?;
    let dir = lab::run_dir("bench-tftp")?;
    let root = dir.join("root");
    fs::create_dir_all(&root)?;
    let data = pseudo_random(FILE_BYTES);
    fs::write(root.join(FILE), &data)?;
    fs::write(root.join(READY_FILE), b"ready\n")?;
    let link = Link::create(SERVER_CIDR, CLIENT_CIDR)?;
    let env = Env {
        link,
        bins,
        dir,
        root,
        data,
    };
    println!(
        "bench tftp: {FETCHES} parallel curl fetches of a {} MB file, blksize {BLKSIZE}, {ROUNDS} runs per server",
        FILE_BYTES / 1_000_000
    );
    let mut runs: Vec<(Server, Vec<f64>)> = vec![
        (Server::TftpdHpa, Vec::new()),
        (Server::Metalcastd, Vec::new()),
    ];
    for round in 1..=ROUNDS {
        for (server, rates) in &mut runs {
            let took = measure(&env, *server)?;
            let rate = throughput(took);
            println!(
                "bench tftp: {:<10} run {round}: {:.2}s, {rate:.1} MB/s",
                server.name(),
                took.as_secs_f64()
            );
            rates.push(rate);
        }
    }
    println!();
    println!(
        "{:<12} {:>10} {:>8}   runs (MB/s)",
        "server", "best MB/s", "spread"
    );
    for (server, rates) in &runs {
        let (best, worst) = extremes(rates);
        let list: Vec<String> = rates.iter().map(|r| format!("{r:.1}")).collect();
        println!(
            "{:<12} {best:>10.1} {:>7.1}%   {}",
            server.name(),
            (best - worst) / best * 100.0,
            list.join(", ")
        );
    }
    let best = |server: Server| {
        runs.iter()
            .find(|(s, _)| *s == server)
            .map(|(_, rates)| extremes(rates).0)
    };
    println!();
    println!(
        "metalcastd / tftpd-hpa: {}  (goal ≥ 1×)",
        ratio(best(Server::Metalcastd), best(Server::TftpdHpa))
    );
    Ok(())
}

struct Env {
    link: Link,
    bins: Binaries,
    dir: PathBuf,
    root: PathBuf,
    data: Vec<u8>,
}

fn start<'a>(env: &'a Env, server: Server, dir: &Path) -> Result<Running<'a>> {
    let ns = &env.link.server;
    match server {
        Server::TftpdHpa => {
            let mut cmd = ns.command("in.tftpd");
            cmd.args(["--foreground", "--secure"])
                .arg(&env.root)
                .args(["--address", &format!("{SERVER_IP}:69")]);
            Ok(Running::Peer(Daemon::spawn(
                "in.tftpd",
                &mut cmd,
                &dir.join("tftpd-hpa.log"),
            )?))
        }
        Server::Metalcastd => {
            // No [dhcp]: the appliance then runs no DHCP service, and nothing here asks for one.
            let sections = format!("[tftp]\nroot = {:?}\nbind = \"{SERVER_IP}:69\"\n", env.root);
            let config = appliance_config(dir, SERVER_IP, &sections)?;
            let appliance =
                Appliance::start(ns, &env.bins, dir, &config, &appliance_url(SERVER_IP))?;
            Ok(Running::Metalcastd(Box::new(appliance)))
        }
    }
}

/// Starts `server`, times [`FETCHES`] parallel fetches, stops it and checks every copy.
fn measure(env: &Env, server: Server) -> Result<Duration> {
    let dir = env.dir.join(server.name());
    fresh_dir(&dir)?;
    let mut running = start(env, server, &dir)?;
    let logs = || format!("see the logs in {}", dir.display());
    wait_for(
        &format!("{} to serve {READY_FILE}", server.name()),
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            running.check_alive()?;
            let ok = curl(env, READY_FILE, Path::new("/dev/null"))
                .status()
                .is_ok_and(|s| s.success());
            Ok(ok.then_some(()))
        },
    )
    .with_context(logs)?;

    let fetched = dir.join("fetched");
    fs::create_dir_all(&fetched)?;
    let outputs: Vec<PathBuf> = (0..FETCHES)
        .map(|i| fetched.join(format!("{i}.bin")))
        .collect();
    let started = Instant::now();
    let mut children: Vec<Child> = Vec::with_capacity(FETCHES);
    for out in &outputs {
        let child = curl(env, FILE, out).spawn().context("running curl")?;
        children.push(child);
    }
    let deadline = started + RUN_TIMEOUT;
    let mut failures = Vec::new();
    for (i, child) in children.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let status = wait_bounded(child, &format!("curl fetch {i}"), left)?;
        if !status.success() {
            failures.push(format!("fetch {i}: curl {status}"));
        }
    }
    let took = started.elapsed();
    running.check_alive().with_context(logs)?;
    drop(running);
    ensure!(
        failures.is_empty(),
        "{}: {} of {FETCHES} fetches failed: {}",
        server.name(),
        failures.len(),
        failures.join("; ")
    );
    for (i, out) in outputs.iter().enumerate() {
        let got = fs::read(out).with_context(|| format!("reading {}", out.display()))?;
        if got != env.data {
            let first_diff = got.iter().zip(&env.data).position(|(a, b)| a != b);
            bail!(
                "{}: fetch {i} is wrong: {} bytes (want {}), first differing byte at {:?}",
                server.name(),
                got.len(),
                env.data.len(),
                first_diff
            );
        }
    }
    fs::remove_dir_all(&fetched)?;
    Ok(took)
}

/// `curl tftp://SERVER/name` from the client namespace into `out`.
fn curl(env: &Env, name: &str, out: &Path) -> std::process::Command {
    let mut cmd = env.link.client.command("curl");
    cmd.args([
        "-sS",
        "--max-time",
        &RUN_TIMEOUT.as_secs().to_string(),
        "--tftp-blksize",
        BLKSIZE,
        "-o",
    ])
    .arg(out)
    .arg(format!("tftp://{SERVER_IP}/{name}"))
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    cmd
}

/// Aggregate MB/s (10^6 bytes) of all fetches over `took`.
fn throughput(took: Duration) -> f64 {
    (FETCHES * FILE_BYTES) as f64 / 1e6 / took.as_secs_f64().max(1e-9)
}

/// Best and worst of the runs.
fn extremes(rates: &[f64]) -> (f64, f64) {
    let best = rates.iter().copied().fold(0.0, f64::max);
    let worst = rates.iter().copied().fold(f64::INFINITY, f64::min);
    (best, worst.min(best))
}

/// Deterministic bytes that no layer can compress or deduplicate (xorshift64*).
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_random_is_repeatable_and_not_flat() {
        let a = pseudo_random(4099);
        assert_eq!(a.len(), 4099);
        assert_eq!(a, pseudo_random(4099));
        let zeros = a.iter().filter(|&&b| b == 0).count();
        assert!(zeros < 100, "{zeros} zero bytes in 4099");
        assert_ne!(a[..8], a[8..16]);
    }

    #[test]
    fn throughput_is_all_bytes_over_wall_clock() {
        let mbps = throughput(Duration::from_secs(10));
        assert!((mbps - (FETCHES * FILE_BYTES) as f64 / 1e7).abs() < 1e-6);
    }

    #[test]
    fn extremes_of_runs() {
        assert_eq!(extremes(&[10.0, 12.5]), (12.5, 10.0));
        assert_eq!(extremes(&[7.0]), (7.0, 7.0));
    }
}
