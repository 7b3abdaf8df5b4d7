//! `cargo xtask e2e mcast` and `cargo xtask bench mcast`: the multicast protocol
//! (`metalcast-mcast`, docs/multicast.md) between plain processes in network namespaces on a
//! bridge, with random loss from nftables and the sender's link capped by `tc tbf`.

mod bench;
mod e2e;
mod lan;

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

pub use bench::{BenchArgs, bench};
pub use e2e::scenario;

use crate::lab;
use crate::workspace;

/// Builds the `metalcast-mcast` tool (release) and returns its path.
fn build_tool() -> Result<PathBuf> {
    println!("mcast: building metalcast-mcast (release)");
    lab::run(
        Command::new(env!("CARGO"))
            .current_dir(workspace::root())
            .args(["build", "--release", "--quiet", "-p", "metalcast-mcast"])
            .stderr(Stdio::inherit()),
    )?;
    Ok(workspace::target_dir()
        .join("release")
        .join("metalcast-mcast"))
}

/// Block size of the block lists the harness checks (the tool's default).
const BLOCK_SIZE: usize = 1 << 20;

/// A test payload file and its hashes, computed while it was written. The file is removed
/// on drop: a gigabyte left behind per run is too much for a shared disk.
struct Payload {
    path: PathBuf,
    length: u64,
    /// BLAKE3 of the whole payload.
    hash: blake3::Hash,
    /// BLAKE3 of each [`BLOCK_SIZE`] block.
    blocks: Vec<blake3::Hash>,
}

impl Drop for Payload {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Writes `size` pseudo-random bytes (BLAKE3 in XOF mode: fast, and never compressible) to
/// `path`.
fn write_payload(path: &Path, size: u64) -> Result<Payload> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::with_capacity(BLOCK_SIZE, file);
    let mut xof = blake3::Hasher::new_derive_key("metalcast mcast test payload").finalize_xof();
    let mut hasher = blake3::Hasher::new();
    let mut blocks = Vec::new();
    let mut buf = vec![0u8; BLOCK_SIZE];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        xof.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        blocks.push(blake3::hash(&buf[..n]));
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(Payload {
        path: path.to_path_buf(),
        length: size,
        hash: hasher.finalize(),
        blocks,
    })
}

/// Makes the block list with the tool and checks it against the harness's own hashes: the
/// receivers verify every block against this list, so it must not come from the code under
/// test alone.
fn make_block_list(tool: &Path, payload: &Payload) -> Result<PathBuf> {
    let list = payload.path.with_extension("hashes");
    lab::run(
        Command::new(tool)
            .arg("hashes")
            .arg(&payload.path)
            .args(["--block-size", &BLOCK_SIZE.to_string()])
            .arg("-o")
            .arg(&list),
    )?;
    let text = fs::read_to_string(&list).with_context(|| format!("reading {}", list.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.by_ref().take(3).collect();
    let expected = [
        "metalcast-mcast block-list 1".to_string(),
        format!("length {}", payload.length),
        format!("block-size {BLOCK_SIZE}"),
    ];
    ensure!(
        header == expected,
        "{} does not start as the payload's block list: {header:?}",
        list.display()
    );
    let hashes: Vec<&str> = lines.collect();
    ensure!(
        hashes.len() == payload.blocks.len()
            && hashes
                .iter()
                .zip(&payload.blocks)
                .all(|(line, h)| *line == h.to_hex().as_str()),
        "{} does not list the payload's block hashes",
        list.display()
    );
    Ok(list)
}

/// BLAKE3 of a file's content.
fn hash_file(path: &Path) -> Result<blake3::Hash> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            return Ok(hasher.finalize());
        }
        hasher.update(&buf[..n]);
    }
}

/// A process whose exit status matters (`lab::Daemon` is for servers stopped at the end);
/// killed on drop.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    exited: Option<(ExitStatus, Instant)>,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Proc> {
        Ok(Proc {
            name: name.to_string(),
            child: lab::spawn_logged(name, cmd, log)?,
            log: log.to_path_buf(),
            exited: None,
        })
    }

    /// Notes the exit (and its time) if the process has ended.
    fn poll(&mut self) -> Result<Option<(ExitStatus, Instant)>> {
        if self.exited.is_none()
            && let Some(status) = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.name))?
        {
            self.exited = Some((status, Instant::now()));
        }
        Ok(self.exited)
    }

    /// SIGKILL, as a crash would.
    fn kill(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            if let Ok(status) = self.child.wait() {
                self.exited = Some((status, Instant::now()));
            }
        }
    }

    fn log_text(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Succeeds if the process exited with status 0.
    fn check_success(&mut self) -> Result<()> {
        match self.poll()? {
            Some((status, _)) if status.success() => Ok(()),
            Some((status, _)) => bail!(
                "{} exited with {status}; see {}",
                self.name,
                self.log.display()
            ),
            None => bail!("{} is still running", self.name),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until every process in `procs` has exited; kills the rest after `timeout`.
fn wait_all(procs: &mut [&mut Proc], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut running = 0;
        for p in procs.iter_mut() {
            if p.poll()?.is_none() {
                running += 1;
            }
        }
        if running == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            for p in procs.iter_mut() {
                p.kill();
            }
            bail!(
                "{running} process(es) still running after {}s; killed",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Clock ticks per second of the times in /proc.
fn clock_ticks() -> Result<f64> {
    let out = lab::run(Command::new("getconf").arg("CLK_TCK"))?;
    let per_sec: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("getconf CLK_TCK")?;
    Ok(per_sec.max(1) as f64)
}

/// The sum of some fields of a /proc/PID/stat line, counted from field 3 (the first after the
/// command name).
fn stat_ticks(stat: &str, fields: std::ops::Range<usize>) -> Result<u64> {
    let (_, rest) = stat.rsplit_once(')').context("parsing /proc/PID/stat")?;
    let all: Vec<&str> = rest.split_whitespace().collect();
    Ok(all
        .get(fields)
        .context("parsing /proc/PID/stat")?
        .iter()
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .sum())
}

/// CPU time (user + system) of this process's reaped children so far: the difference of two
/// readings is what the processes of one run used, with the kernel's packet work done in
/// their context.
fn children_cpu() -> Result<Duration> {
    let stat = fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    // cutime and cstime are fields 16 and 17 (proc(5)).
    let ticks = stat_ticks(&stat, 13..15)?;
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks()?))
}

/// CPU time of the kernel's softirq threads (`ksoftirqd/N`): packet work deferred to them is
/// a run's own as much as anyone's, so it is not counted as load from elsewhere.
fn softirq_threads_cpu() -> Result<Duration> {
    let mut ticks = 0;
    for entry in fs::read_dir("/proc").context("listing /proc")? {
        let path = entry.context("listing /proc")?.path();
        // Processes come and go while /proc is read.
        let is_softirq =
            fs::read_to_string(path.join("comm")).is_ok_and(|comm| comm.starts_with("ksoftirqd/"));
        if let Ok(stat) = fs::read_to_string(path.join("stat"))
            && is_softirq
        {
            // utime and stime are fields 14 and 15.
            ticks += stat_ticks(&stat, 11..13)?;
        }
    }
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks()?))
}

/// CPU time the whole machine has spent busy since boot: with [`children_cpu`], what
/// everything else on the machine used during a run. Interrupt time counts too, since a
/// process's system time includes the softirq work done while it ran.
fn machine_cpu() -> Result<Duration> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let cpu = stat
        .lines()
        .find_map(|l| l.strip_prefix("cpu "))
        .context("no cpu line in /proc/stat")?;
    let f: Vec<u64> = cpu
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (proc(5)).
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| f.get(i).copied().unwrap_or(0))
        .sum::<u64>();
    Ok(Duration::from_secs_f64(busy as f64 / clock_ticks()?))
}
