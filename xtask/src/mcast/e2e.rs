//! `cargo xtask e2e mcast`: a sender and 8 receivers, plain processes in their own
//! namespaces on a bridge, 5% random loss on every receiver link. One receiver joins 5 s
//! after the start, one is killed mid-way and restarted on the same output file (it resumes:
//! blocks already there that match the block list are kept). All 8 must finish with the
//! payload, byte for byte.

use std::fs;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use super::lan::{IFACE, Lan};
use super::{Proc, build_tool, hash_file, make_block_list, wait_all, write_payload};
use crate::e2e::{Ctx, Report};
use crate::lab;

/// Payload size, random loss on every receiver link, and the sender's rate ceiling.
const SIZE_MIB: u64 = 256;
const LOSS_PERCENT: u32 = 5;
const RATE_MBIT: u64 = 400;

const RECEIVERS: usize = 8;
/// Starts this long after the sender.
const LATE: usize = 7;
const LATE_AFTER: Duration = Duration::from_secs(5);
/// Killed once it reports this many verified blocks (of 256), and started again at once. Its
/// progress, not a time, decides: on a loaded machine the transfer may be slower.
const RESTARTED: usize = 6;
const KILL_AT_BLOCKS: u32 = 32;
/// Bound on the whole transfer.
const TIMEOUT: Duration = Duration::from_secs(300);
const GROUP: &str = "239.79.1.1:5000";

pub fn scenario(_ctx: &Ctx, report: &mut Report) -> Result<()> {
    let tool = build_tool()?;
    let dir = lab::run_dir("mcast-e2e")?;
    let payload = dir.join("payload.bin");
    let written = write_payload(&payload, SIZE_MIB << 20)?;
    let expected = written.hash;
    let list = make_block_list(&tool, &written)?;
    let lan = Lan::create(RECEIVERS)?;
    lan.set_loss(LOSS_PERCENT)?;
    println!(
        "e2e: mcast: {} MiB to {RECEIVERS} receivers at {}% loss, {} Mbit/s ceiling",
        SIZE_MIB, LOSS_PERCENT, RATE_MBIT
    );

    let receiver = |i: usize, run: u32| -> Result<Proc> {
        let mut cmd = lan.receivers[i].command(&tool);
        cmd.arg("receive")
            .arg(dir.join(format!("r{i}.bin")))
            .args(["--group", GROUP, "--iface", IFACE, "--hashes"])
            .arg(&list)
            .args(["--timeout", &TIMEOUT.as_secs().to_string()]);
        Proc::spawn(
            &format!("receiver {i}"),
            &mut cmd,
            &dir.join(format!("r{i}.{run}.log")),
        )
    };
    let mut receivers: Vec<Option<Proc>> = (0..RECEIVERS)
        .map(|i| (i != LATE).then(|| receiver(i, 1)).transpose())
        .collect::<Result<_>>()?;
    // Let the receivers' group joins reach the bridge before the first packet.
    sleep(Duration::from_millis(300));
    let mut cmd = lan.sender.command(&tool);
    cmd.arg("send")
        .arg(&payload)
        .args(["--group", GROUP, "--iface", IFACE])
        .args(["--rate-mbit", &RATE_MBIT.to_string()])
        .args(["--receivers", &RECEIVERS.to_string()])
        .args(["--max-duration", &TIMEOUT.as_secs().to_string()]);
    let started = Instant::now();
    let mut sender = Proc::spawn("sender", &mut cmd, &dir.join("sender.log"))?;

    let mut killed = receivers[RESTARTED].take().context("receiver to kill")?;
    while blocks_verified(&killed.log_text()) < KILL_AT_BLOCKS
        && killed.poll()?.is_none()
        && started.elapsed() < TIMEOUT
    {
        sleep(Duration::from_millis(50));
    }
    let killed_done = killed.poll()?.is_some();
    killed.kill();
    receivers[RESTARTED] = Some(receiver(RESTARTED, 2)?);
    sleep(LATE_AFTER.saturating_sub(started.elapsed()));
    receivers[LATE] = Some(receiver(LATE, 1)?);

    let mut all: Vec<&mut Proc> = receivers.iter_mut().flatten().collect();
    all.push(&mut sender);
    let finished = wait_all(&mut all, TIMEOUT);
    println!("e2e: transfer took {:.1}s", started.elapsed().as_secs_f64());

    report.check("every process finished in time", finished);
    for (i, slot) in receivers.iter_mut().enumerate() {
        let outcome = match slot {
            Some(p) => verify(p, &dir.join(format!("r{i}.bin")), expected),
            None => Err(anyhow::anyhow!("never started")),
        };
        let what = match i {
            LATE => " (joined 5 s late)",
            RESTARTED => " (killed and restarted)",
            _ => "",
        };
        report.check(&format!("receiver {i}{what} has the payload"), outcome);
    }
    report.check(
        "the restarted receiver kept the blocks it had verified",
        match &receivers[RESTARTED] {
            Some(p) => kept_blocks(p, killed_done),
            None => Err(anyhow::anyhow!("never restarted")),
        },
    );
    report.check(
        "the sender ended with every receiver done",
        sender.check_success(),
    );
    Ok(())
}

/// The receiver exited 0 and its output is the payload; the output is removed once checked
/// (eight copies of the payload are not worth keeping on a shared disk).
fn verify(p: &mut Proc, out: &std::path::Path, expected: blake3::Hash) -> Result<()> {
    p.check_success()?;
    let got = hash_file(out)?;
    ensure!(
        got == expected,
        "{} has BLAKE3 {got}, the payload {expected}",
        out.display()
    );
    fs::remove_file(out).with_context(|| format!("removing {}", out.display()))
}

/// The most verified blocks a receiver's progress lines ("receiving have=N …") report.
fn blocks_verified(log: &str) -> u32 {
    log.lines()
        .filter_map(|l| {
            l.split_once(" have=")?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .max()
        .unwrap_or(0)
}

/// The second run says how many blocks it kept ("resumed: kept N verified blocks").
fn kept_blocks(p: &Proc, first_run_finished: bool) -> Result<()> {
    ensure!(
        !first_run_finished,
        "the first run had already finished when it was to be killed: nothing to resume"
    );
    let log = p.log_text();
    let kept = log
        .lines()
        .find_map(|l| l.strip_prefix("resumed: kept "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u32>().ok())
        .context("the restarted receiver did not report resuming")?;
    ensure!(kept > 0, "it kept no block");
    println!("e2e: the restarted receiver kept {kept} verified blocks");
    Ok(())
}
