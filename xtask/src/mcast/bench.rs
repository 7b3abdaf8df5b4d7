//! `cargo xtask bench mcast`: `metalcast-mcast` against Debian's udpcast (with and without its
//! FEC) and uftp, in the same run, on the same namespaces: the sender's link capped with
//! `tc tbf`, the same random loss (nftables) on every receiver link, every tool paced to the
//! cap, every receiver writing to the same sink. A tool's time runs from its sender's start
//! until the last receiver has everything (for uftp, whose receivers are daemons: until the
//! sender has heard every receiver complete).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use super::lan::{IFACE, Lan};
use super::{
    BLOCK_SIZE, Proc, build_tool, children_cpu, machine_cpu, make_block_list, softirq_threads_cpu,
    wait_all, write_payload,
};
use crate::lab;

#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// Payload size, MiB.
    #[arg(long = "mcast-size-mib", default_value_t = 1024)]
    pub size_mib: u64,
    /// Receiver counts to measure.
    #[arg(long = "mcast-receivers", value_delimiter = ',', default_values_t = [4, 16])]
    pub receivers: Vec<usize>,
    /// Loss on every receiver link, percent, to measure.
    #[arg(long = "mcast-loss", value_delimiter = ',', default_values_t = [0, 1, 5])]
    pub loss: Vec<u32>,
    /// The sender link's cap (tc tbf) and every tool's rate, Mbit/s. On 2 cores 500 Mbit/s
    /// is more than 16 receivers' packet work leaves room for, with any of the tools.
    #[arg(long = "mcast-cap-mbit", default_value_t = 200)]
    pub cap_mbit: u32,
    /// Bound on one tool's run, seconds: udpcast needs minutes for 16 receivers at 5% loss.
    #[arg(long = "mcast-timeout", default_value_t = 600)]
    pub timeout: u64,
    /// Run metalcast-mcast only, not the peers (to iterate on it).
    #[arg(long = "mcast-ours-only")]
    pub ours_only: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tool {
    Ours,
    Udpcast,
    UdpcastFec,
    Uftp,
}

const TOOLS: [Tool; 4] = [Tool::Ours, Tool::Udpcast, Tool::UdpcastFec, Tool::Uftp];

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Ours => "metalcast-mcast",
            Tool::Udpcast => "udpcast",
            Tool::UdpcastFec => "udpcast --fec 8x8/128",
            Tool::Uftp => "uftp",
        }
    }
}

const GROUP: &str = "239.79.2.1:5000";

/// One tool's run in one cell.
struct Outcome {
    secs: Option<f64>,
    cpu: f64,
    /// Datagrams the sender's tbf dropped (it was sent faster than the cap).
    qdisc_drops: u64,
    /// CPU the rest of the machine used meanwhile, in cores: the load the run competed with.
    others: f64,
    note: String,
}

impl Outcome {
    fn not_run(note: String) -> Outcome {
        Outcome {
            secs: None,
            cpu: 0.0,
            qdisc_drops: 0,
            others: 0.0,
            note,
        }
    }
}

struct Ctx<'a> {
    args: &'a BenchArgs,
    tool: PathBuf,
    dir: PathBuf,
    payload: PathBuf,
    list: PathBuf,
}

pub fn bench(args: BenchArgs) -> Result<()> {
    ensure_peers()?;
    let dir = lab::run_dir("mcast-bench")?;
    let payload = dir.join("payload.bin");
    let written = write_payload(&payload, args.size_mib << 20)?;
    let tool = build_tool()?;
    let list = make_block_list(&tool, &written)?;
    let ctx = Ctx {
        args: &args,
        tool,
        dir: dir.clone(),
        payload,
        list,
    };
    println!(
        "bench: {} MiB, sender link capped at {} Mbit/s (tbf), every tool paced to the cap",
        args.size_mib, args.cap_mbit
    );
    let mut table = String::new();
    let _ = writeln!(
        table,
        "| receivers | loss | metalcast-mcast | goodput / cap | udpcast | udpcast FEC | uftp | udpcast ÷ ours | udpcast FEC ÷ ours | uftp ÷ ours | CPU s (ours / udpcast / FEC / uftp) | other load, cores |"
    );
    let _ = writeln!(table, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut notes = Vec::new();
    let table_path = dir.join("multicast.md");
    for &n in &args.receivers {
        let lan = Lan::create(n)?;
        lan.cap_sender(args.cap_mbit)?;
        for &loss in &args.loss {
            lan.set_loss(loss)?;
            let mut outcomes = Vec::new();
            for tool in TOOLS {
                if args.ours_only && tool != Tool::Ours {
                    outcomes.push(Outcome::not_run(String::new()));
                    continue;
                }
                let outcome = run_cell(&ctx, &lan, tool, loss)
                    .unwrap_or_else(|e| Outcome::not_run(format!("{e:#}")));
                println!(
                    "bench: N={n:<2} loss={loss}% {:<22} {} (CPU {:.1} s, tbf drops {}, other load {:.2} cores){}",
                    tool.name(),
                    secs(outcome.secs),
                    outcome.cpu,
                    outcome.qdisc_drops,
                    outcome.others,
                    if outcome.note.is_empty() {
                        String::new()
                    } else {
                        format!(" — {}", outcome.note)
                    }
                );
                if !outcome.note.is_empty() {
                    notes.push(format!(
                        "N={n}, {loss}% loss, {}: {}",
                        tool.name(),
                        outcome.note
                    ));
                }
                outcomes.push(outcome);
            }
            let ours = outcomes[0].secs;
            let goodput = ours.map_or("n/a".to_string(), |s| {
                let bits = (args.size_mib << 20) as f64 * 8.0;
                format!("{:.2}", bits / s / (f64::from(args.cap_mbit) * 1e6))
            });
            let others = outcomes.iter().map(|o| o.others).fold(0.0, f64::max);
            let _ = writeln!(
                table,
                "| {n} | {loss}% | {} | {goodput} | {} | {} | {} | {} | {} | {} | {} | {others:.2} |",
                secs(ours),
                secs(outcomes[1].secs),
                secs(outcomes[2].secs),
                secs(outcomes[3].secs),
                ratio(outcomes[1].secs, ours),
                ratio(outcomes[2].secs, ours),
                ratio(outcomes[3].secs, ours),
                outcomes
                    .iter()
                    .map(|o| format!("{:.0}", o.cpu))
                    .collect::<Vec<_>>()
                    .join(" / "),
            );
            // Row by row, so that an interrupted run keeps what it measured.
            fs::write(&table_path, &table)
                .with_context(|| format!("writing {}", table_path.display()))?;
        }
    }
    println!("\n{table}");
    for note in &notes {
        println!("note: {note}");
    }
    println!("bench: table written to {}", table_path.display());
    Ok(())
}

fn secs(s: Option<f64>) -> String {
    s.map_or("failed".to_string(), |s| format!("{s:.1} s"))
}

/// `a / b` as "1.52×", or "n/a".
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "n/a".to_string(),
    }
}

/// Installs udpcast and uftp from Debian if they are missing.
fn ensure_peers() -> Result<()> {
    let missing = ["udp-sender", "udp-receiver", "uftp", "uftpd"]
        .iter()
        .any(|b| !Path::new("/usr/bin").join(b).exists());
    if missing {
        println!("bench: installing udpcast and uftp");
        lab::run(Command::new("apt-get").args(["install", "-y", "-q", "udpcast", "uftp"]))?;
    }
    Ok(())
}

/// Runs one tool once on `lan`. Logs are kept under `logs/`.
fn run_cell(ctx: &Ctx, lan: &Lan, tool: Tool, loss: u32) -> Result<Outcome> {
    let out = ctx.dir.join("out");
    if out.exists() {
        fs::remove_dir_all(&out)?;
    }
    fs::create_dir_all(&out)?;
    let logs = ctx.dir.join("logs").join(format!(
        "n{}-loss{loss}-{}",
        lan.receivers.len(),
        tool.name()
            .split(|c: char| c.is_whitespace() || c == '/')
            .collect::<Vec<_>>()
            .join("")
    ));
    fs::create_dir_all(&logs)?;
    let cpu_before = children_cpu()?;
    let machine_before = machine_cpu()?;
    let softirq_before = softirq_threads_cpu()?;
    let run_started = Instant::now();
    let drops_before = lan.sender_drops()?;
    let result = match tool {
        Tool::Ours => run_ours(ctx, lan, &logs),
        Tool::Udpcast => run_udpcast(ctx, lan, &logs, false),
        Tool::UdpcastFec => run_udpcast(ctx, lan, &logs, true),
        Tool::Uftp => run_uftp(ctx, lan, &out, &logs),
    };
    let ours = children_cpu()? - cpu_before;
    let wall = run_started.elapsed().as_secs_f64();
    let softirq = softirq_threads_cpu()? - softirq_before;
    let others = (machine_cpu()? - machine_before)
        .saturating_sub(ours)
        .saturating_sub(softirq);
    let cpu = ours.as_secs_f64();
    let others = others.as_secs_f64() / wall.max(1e-3);
    let qdisc_drops = lan.sender_drops()? - drops_before;
    fs::remove_dir_all(&out)?;
    Ok(match result {
        Ok(secs) => Outcome {
            secs: Some(secs),
            cpu,
            qdisc_drops,
            others,
            note: String::new(),
        },
        Err(e) => Outcome {
            secs: None,
            cpu,
            qdisc_drops,
            others,
            note: format!("{e:#}"),
        },
    })
}

/// Socket buffer size the peers are told to use (the kernel caps it at `net.core.rmem_max`;
/// ours asks for more with `SO_RCVBUFFORCE`): a small default would cost them loss that is
/// not the link's.
const PEER_BUFFER: usize = 8 << 20;

/// The pause between starting the receivers and the sender, the same for every tool: their
/// IGMP joins reach the bridge.
const SETTLE: Duration = Duration::from_millis(500);

/// Seconds from `started` until the last of `receivers` exited successfully.
fn last_exit(receivers: &mut [Proc], started: Instant) -> Result<f64> {
    let mut last = started;
    for r in receivers.iter_mut() {
        r.check_success()?;
        if let Some((_, at)) = r.poll()? {
            last = last.max(at);
        }
    }
    Ok((last - started).as_secs_f64())
}

/// Where every receiver of every tool writes: 16 copies of a 1 GiB payload per run are more
/// than a shared disk (or its page cache) should take, and writing to a disk would measure the
/// disk. The data is checked all the same: ours verifies every block against the block list
/// that [`make_block_list`] checked; udpcast and uftp are reliable protocols that report each
/// receiver's completion.
const SINK: &str = "/dev/null";

fn run_ours(ctx: &Ctx, lan: &Lan, logs: &Path) -> Result<f64> {
    let timeout = ctx.args.timeout;
    let mut receivers = Vec::new();
    for (i, host) in lan.receivers.iter().enumerate() {
        let mut cmd = host.command(&ctx.tool);
        cmd.args(["receive", SINK])
            .args(["--group", GROUP, "--iface", IFACE, "--hashes"])
            .arg(&ctx.list)
            .args(["--timeout", &timeout.to_string()]);
        receivers.push(Proc::spawn(
            &format!("receiver {i}"),
            &mut cmd,
            &logs.join(format!("r{i}.log")),
        )?);
    }
    sleep(SETTLE);
    let mut cmd = lan.sender.command(&ctx.tool);
    // The block list is made beforehand, as the appliance has it in the image manifest.
    cmd.arg("send")
        .arg(&ctx.payload)
        .arg("--block-list")
        .arg(&ctx.list)
        .args(["--group", GROUP, "--iface", IFACE])
        .args(["--rate-mbit", &ctx.args.cap_mbit.to_string()])
        .args(["--receivers", &lan.receivers.len().to_string()])
        .args(["--max-duration", &timeout.to_string()]);
    let started = Instant::now();
    let mut sender = Proc::spawn("sender", &mut cmd, &logs.join("sender.log"))?;
    let mut all: Vec<&mut Proc> = receivers.iter_mut().collect();
    all.push(&mut sender);
    wait_all(&mut all, Duration::from_secs(timeout + 10))?;
    let secs = last_exit(&mut receivers, started)?;
    // Exit status 0 already means every block was verified; the summary line says so too.
    let blocks = (ctx.args.size_mib << 20).div_ceil(BLOCK_SIZE as u64);
    let complete = format!("received {blocks}/{blocks} blocks");
    for r in &receivers {
        ensure!(
            r.log_text().lines().any(|l| l.starts_with(&complete)),
            "{} did not report {complete}",
            r.name
        );
    }
    sender.check_success()?;
    let log = sender.log_text();
    if let Some(line) = log.lines().find(|l| l.starts_with("sent ")) {
        println!("bench:   {line}");
    }
    Ok(secs)
}

fn run_udpcast(ctx: &Ctx, lan: &Lan, logs: &Path, fec: bool) -> Result<f64> {
    let timeout = ctx.args.timeout.to_string();
    let mut receivers = Vec::new();
    for (i, host) in lan.receivers.iter().enumerate() {
        let mut cmd = host.command("udp-receiver");
        cmd.args(["--file", SINK])
            .args(["--interface", IFACE, "--nokbd"])
            .args(["--rcvbuf", &PEER_BUFFER.to_string()])
            .args(["--start-timeout", &timeout, "--receive-timeout", "30"]);
        receivers.push(Proc::spawn(
            &format!("udp-receiver {i}"),
            &mut cmd,
            &logs.join(format!("r{i}.log")),
        )?);
    }
    sleep(SETTLE);
    let mut cmd = lan.sender.command("udp-sender");
    cmd.arg("--file")
        .arg(&ctx.payload)
        .args(["--interface", IFACE, "--nokbd", "--full-duplex"])
        .args(["--min-receivers", &lan.receivers.len().to_string()])
        // Without it a receiver whose one HELLO was lost waits forever (it asked before the
        // sender was up).
        .args(["--rexmit-hello-interval", "200"])
        .args(["--max-bitrate", &format!("{}m", ctx.args.cap_mbit)]);
    if fec {
        cmd.args(["--fec", "8x8/128"]);
    }
    let started = Instant::now();
    let mut sender = Proc::spawn("udp-sender", &mut cmd, &logs.join("sender.log"))?;
    let mut all: Vec<&mut Proc> = receivers.iter_mut().collect();
    all.push(&mut sender);
    wait_all(&mut all, Duration::from_secs(ctx.args.timeout))?;
    let secs = last_exit(&mut receivers, started)?;
    sender.check_success()?;
    Ok(secs)
}

/// uftp's `-R` for a wire rate of `cap_mbit`. uftp paces 1418-byte datagrams (its log says
/// "Wait between packets: 22687 ns" at 500000 Kbps) and counts no IP, UDP or Ethernet header:
/// told the cap itself it overruns the tbf by 3% and loses the excess there.
fn uftp_rate_kbit(cap_mbit: u32) -> u64 {
    u64::from(cap_mbit) * 1000 * 1418 / (1418 + 42)
}

fn run_uftp(ctx: &Ctx, lan: &Lan, out: &Path, logs: &Path) -> Result<f64> {
    let name = ctx.payload.file_name().context("payload has a file name")?;
    let mut ids = Vec::new();
    let mut daemons = Vec::new();
    for (i, host) in lan.receivers.iter().enumerate() {
        // uftpd writes into a directory: the file it will write is made a link to the sink.
        let dest = out.join(format!("r{i}"));
        fs::create_dir_all(&dest)?;
        std::os::unix::fs::symlink(SINK, dest.join(name))?;
        let id = format!("0x{:08x}", u32::from(host.addr));
        let mut cmd = host.command("uftpd");
        cmd.args(["-d", "-I", IFACE, "-U", &id])
            .args(["-B", &PEER_BUFFER.to_string(), "-D"])
            .arg(&dest);
        daemons.push(Proc::spawn(
            &format!("uftpd {i}"),
            &mut cmd,
            &logs.join(format!("r{i}.log")),
        )?);
        ids.push(id);
    }
    sleep(SETTLE);
    for d in &mut daemons {
        if d.poll()?.is_some() {
            bail!("{} exited at start; see its log", d.name);
        }
    }
    let mut cmd = lan.sender.command("uftp");
    cmd.current_dir(ctx.payload.parent().context("payload has a directory")?)
        .args(["-I", IFACE])
        .args(["-R", &uftp_rate_kbit(ctx.args.cap_mbit).to_string()])
        .args(["-B", &PEER_BUFFER.to_string()])
        .args(["-b", "1400", "-H", &ids.join(",")])
        .arg(name);
    let started = Instant::now();
    let mut sender = Proc::spawn("uftp", &mut cmd, &logs.join("sender.log"))?;
    wait_all(&mut [&mut sender], Duration::from_secs(ctx.args.timeout))?;
    sender.check_success()?;
    let secs = sender
        .poll()?
        .map_or(0.0, |(_, at)| (at - started).as_secs_f64());
    for d in &mut daemons {
        d.kill();
    }
    // uftp's summary has one "Host: … Status: Completed" line per receiver that has the file.
    let log = sender.log_text();
    let completed = log
        .lines()
        .filter(|l| l.starts_with("Host:") && l.contains("Status: Completed"))
        .count();
    ensure!(
        completed == lan.receivers.len(),
        "uftp reports {completed} of {} receivers completed",
        lan.receivers.len()
    );
    Ok(secs)
}
