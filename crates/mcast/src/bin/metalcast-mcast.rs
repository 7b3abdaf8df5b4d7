//! `metalcast-mcast`: send a file to a multicast group, receive it, or hash it — to check a
//! network with the protocol the appliance uses, without the appliance (docs/multicast.md).

use std::fs::{self, File, OpenOptions};
use std::io::{self, IsTerminal, Read};
use std::net::SocketAddrV4;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use metalcast_mcast::blocks::{self, BlockList, Geometry, Layout};
use metalcast_mcast::drive::{self, SendLoop};
use metalcast_mcast::receiver::{self, Fallback, Receiver, ReceiverConfig};
use metalcast_mcast::sender::{self, PeerState, Sender, SenderConfig};
use metalcast_mcast::udp::{Interface, McastSocket};

#[derive(Parser)]
#[command(
    name = "metalcast-mcast",
    version,
    about = "Multicast a file with erasure coding, or receive one"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the block list (per-block BLAKE3 hashes) of FILE, for receivers to check against.
    Hashes(HashesArgs),
    /// Send FILE to a multicast group until the receivers are done.
    Send(SendArgs),
    /// Receive a file from a multicast group into OUT, verifying every block.
    Receive(ReceiveArgs),
}

#[derive(Args)]
struct HashesArgs {
    /// The payload.
    file: PathBuf,
    /// Block size in bytes (every receiver must use the same list).
    #[arg(long, default_value_t = blocks::DEFAULT_BLOCK_SIZE)]
    block_size: u32,
    /// Where to write the list (default: standard output).
    #[arg(short, long)]
    output: Option<PathBuf>,
}

#[derive(Args)]
struct SendArgs {
    /// The payload.
    file: PathBuf,
    /// Multicast group and port, e.g. 239.1.2.3:5000.
    #[arg(long)]
    group: SocketAddrV4,
    /// Interface to send on.
    #[arg(long)]
    iface: String,
    /// Rate ceiling in Mbit/s on the wire (IPv4, UDP and Ethernet headers counted).
    #[arg(long)]
    rate_mbit: u64,
    /// Write the block list here for the receivers.
    #[arg(long)]
    hashes: Option<PathBuf>,
    /// Take the block list from this file (made from FILE, e.g. by `hashes`) instead of
    /// hashing FILE first, as the appliance takes it from the image manifest.
    #[arg(long, conflicts_with = "hashes")]
    block_list: Option<PathBuf>,
    /// Block size in bytes.
    #[arg(long, default_value_t = blocks::DEFAULT_BLOCK_SIZE)]
    block_size: u32,
    /// Symbol (packet payload) size in bytes; even. The default fills a 1500-byte MTU.
    #[arg(long, default_value_t = blocks::DEFAULT_SYMBOL_SIZE)]
    symbol_size: u16,
    /// Repair symbols each block can have (default: a power of two, half the block's symbols).
    #[arg(long)]
    repair: Option<u16>,
    /// Receivers that must be done (or sent to unicast) before the session ends on its own.
    #[arg(long, default_value_t = 1)]
    receivers: usize,
    /// End the session after this many seconds whatever happens.
    #[arg(long)]
    max_duration: Option<f64>,
    /// A receiver not done this many seconds after it joined is sent to unicast.
    #[arg(long, default_value_t = 600.0)]
    deadline: f64,
    /// Seconds the session stays up once nobody is left incomplete.
    #[arg(long, default_value_t = 1.0)]
    linger: f64,
    /// Session id, 16 hex digits (default: random).
    #[arg(long, value_parser = parse_hex_u64)]
    session: Option<u64>,
    /// Datagrams per sendmmsg call.
    #[arg(long, default_value_t = 64)]
    batch: usize,
}

#[derive(Args)]
struct ReceiveArgs {
    /// Where to write the payload; blocks already there that match the list are kept.
    out: PathBuf,
    /// Multicast group and port, e.g. 239.1.2.3:5000.
    #[arg(long)]
    group: SocketAddrV4,
    /// Interface to join the group on.
    #[arg(long)]
    iface: String,
    /// The block list (from `send --hashes` or `hashes`): the trusted source of what to accept.
    #[arg(long)]
    hashes: PathBuf,
    /// Accept only this session (16 hex digits; default: the first one announced for the list).
    #[arg(long, value_parser = parse_hex_u64)]
    session: Option<u64>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3600.0)]
    timeout: f64,
    /// The most this receiver can take, Mbit/s (e.g. its disk speed); 0 for no limit.
    #[arg(long, default_value_t = 0)]
    max_rate_mbit: u64,
}

fn parse_hex_u64(s: &str) -> Result<u64, String> {
    match u64::from_str_radix(s, 16) {
        Ok(0) => Err("session id 0 is reserved".into()),
        Ok(v) => Ok(v),
        Err(e) => Err(format!("not 16 hex digits: {e}")),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(io::stderr)
        // A log that cannot be written (a full disk) must not take the process down:
        // the subscriber would report it with `eprintln!`, which panics.
        .log_internal_errors(false)
        .with_ansi(io::stderr().is_terminal())
        .init();
    let outcome = match Cli::parse().command {
        Command::Hashes(args) => hashes(args).map(|()| ExitCode::SUCCESS),
        Command::Send(args) => send(args),
        Command::Receive(args) => receive(args),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("metalcast-mcast: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn block_list(path: &Path, block_size: u32) -> Result<BlockList> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    BlockList::from_reader(io::BufReader::with_capacity(1 << 20, file), block_size)
        .with_context(|| format!("hashing {}", path.display()))
}

fn write_list(list: &BlockList, path: &Path) -> Result<()> {
    fs::write(path, list.to_text()).with_context(|| format!("writing {}", path.display()))
}

fn hashes(args: HashesArgs) -> Result<()> {
    let list = block_list(&args.file, args.block_size)?;
    match args.output {
        Some(path) => write_list(&list, &path),
        None => {
            print!("{}", list.to_text());
            Ok(())
        }
    }
}

/// 64 random bits from the kernel, never 0.
fn random_id() -> Result<u64> {
    let mut b = [0u8; 8];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom")?;
    Ok(u64::from_ne_bytes(b).max(1))
}

fn seconds(s: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("{what}: {s} is not a duration"))
}

fn read_list(path: &Path) -> Result<BlockList> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    BlockList::parse_text(&text).with_context(|| format!("parsing {}", path.display()))
}

fn send(args: SendArgs) -> Result<ExitCode> {
    let list = match &args.block_list {
        Some(path) => {
            let list = read_list(path)?;
            let len = fs::metadata(&args.file)
                .with_context(|| format!("reading {}", args.file.display()))?
                .len();
            if len != list.geometry().length() {
                bail!(
                    "{} holds {len} bytes but {} describes {}",
                    args.file.display(),
                    path.display(),
                    list.geometry().length()
                );
            }
            list
        }
        None => block_list(&args.file, args.block_size)?,
    };
    if let Some(path) = &args.hashes {
        write_list(&list, path)?;
    }
    let geometry = *list.geometry();
    let layout = match args.repair {
        Some(r) => Layout::new(geometry, args.symbol_size, r),
        None => {
            let k = (geometry.block_size() as usize).div_ceil(usize::from(args.symbol_size.max(2)));
            Layout::new(geometry, args.symbol_size, blocks::default_repair(k))
        }
    }
    .context("choosing the coding")?;
    let session = match args.session {
        Some(s) => s,
        None => random_id()?,
    };
    let mut config = SenderConfig::new(session, args.rate_mbit.saturating_mul(1_000_000));
    config.expected_receivers = args.receivers;
    config.max_duration = args
        .max_duration
        .map(|s| seconds(s, "--max-duration"))
        .transpose()?;
    config.deadline = seconds(args.deadline, "--deadline")?;
    config.linger = seconds(args.linger, "--linger")?;
    let iface = Interface::by_name(&args.iface)?;
    let socket = McastSocket::sender(&iface, args.group, 0)?;
    let file =
        File::open(&args.file).with_context(|| format!("opening {}", args.file.display()))?;
    let start = Instant::now();
    let mut sender = Sender::new(config, layout, *list.manifest_hash(), file, start);
    println!("session {session:016x}");
    tracing::info!(
        blocks = geometry.block_count(),
        bytes = geometry.length(),
        symbol = layout.symbol_size(),
        repair = layout.repair_count(),
        from = %socket.local_addr()?,
        group = %args.group,
        "sending"
    );
    let stop = AtomicBool::new(false);
    let options = SendLoop {
        batch: args.batch,
        ..SendLoop::default()
    };
    let mut failed = None;
    drive::run_sender(&mut sender, &socket, options, &stop, |s, e| {
        let secs = start.elapsed().as_secs_f64();
        match e {
            sender::Event::ReceiverJoined { id, addr } => {
                tracing::info!(receiver = format!("{id:016x}"), %addr, secs, "joined");
            }
            sender::Event::ReceiverDone { id } => {
                tracing::info!(receiver = format!("{id:016x}"), secs, "done");
            }
            sender::Event::ReceiverLeft { id } => {
                tracing::info!(receiver = format!("{id:016x}"), secs, "left");
            }
            sender::Event::GoUnicast { id, addr, reason } => {
                tracing::warn!(receiver = format!("{id:016x}"), %addr, ?reason, secs, "sent to unicast");
            }
            sender::Event::Slowed { rate, receiver } => {
                tracing::info!(receiver = format!("{receiver:016x}"), rate, secs, "slowed for overload");
            }
            sender::Event::SourceFailed(e) => failed = Some(e),
            sender::Event::Finished => {
                tracing::info!(rate = s.rate(), secs, "session ended");
            }
        }
        },
        // The loop logs its own progress line every second.
        |_| {},
    )
    .context("sending")?;
    if let Some(e) = failed {
        return Err(anyhow::Error::new(e).context(format!("reading {}", args.file.display())));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let stats = sender.stats();
    let count = |st: PeerState| sender.receivers().filter(|r| r.state == st).count();
    let (done, unicast) = (count(PeerState::Done), count(PeerState::Unicast));
    let one_copy: u64 = (0..geometry.block_count())
        .map(|b| layout.source_symbols(b) as u64)
        .sum();
    let symbols = stats.source_symbols + stats.repair_symbols;
    println!(
        "sent {} bytes in {elapsed:.2} s: {} packets, {symbols} symbols = {:.3} × the payload's {one_copy} ({} source, {} repair, {} for NACKs), {} passes",
        geometry.length(),
        stats.packets,
        symbols as f64 / one_copy.max(1) as f64,
        stats.source_symbols,
        stats.repair_symbols,
        stats.nack_symbols,
        stats.passes,
    );
    println!(
        "receivers: {done} done, {unicast} sent to unicast, {} left",
        count(PeerState::Left)
    );
    Ok(if unicast == 0 && done >= args.receivers {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// Opens OUT for writing at block offsets without truncating it. Returns whether it is a
/// regular file of the payload's length already, whose blocks may be kept (an interrupted
/// run's): anything else holds nothing worth hashing.
fn open_output(path: &Path, length: u64) -> Result<(File, bool)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let meta = file.metadata()?;
    let resumable = meta.is_file() && meta.len() == length && length > 0;
    if meta.is_file() && meta.len() != length {
        file.set_len(length)
            .with_context(|| format!("sizing {}", path.display()))?;
    }
    Ok((file, resumable))
}

/// Offers every block already in `file` to the receiver; returns how many it kept.
fn resume(rx: &mut Receiver, file: &File, geometry: &Geometry) -> Result<u32> {
    let mut buf = Vec::new();
    let mut kept = 0;
    let now = Instant::now();
    for b in 0..geometry.block_count() {
        buf.resize(geometry.block_len(b), 0);
        if file
            .read_exact_at(&mut buf, geometry.block_offset(b))
            .is_ok()
            && rx.offer_existing(now, b, &buf)
        {
            kept += 1;
        }
    }
    Ok(kept)
}

fn receive(args: ReceiveArgs) -> Result<ExitCode> {
    let list = read_list(&args.hashes)?;
    let geometry = *list.geometry();
    let (file, resumable) = open_output(&args.out, geometry.length())?;
    let mut config = ReceiverConfig::new(random_id()?);
    config.session = args.session;
    config.max_rate = args.max_rate_mbit.saturating_mul(1_000_000);
    let iface = Interface::by_name(&args.iface)?;
    let group = McastSocket::group(&iface, args.group)?;
    let status = McastSocket::unicast(&iface)?;
    let start = Instant::now();
    let mut rx = Receiver::new(config, list, start);
    if resumable {
        let kept = resume(&mut rx, &file, &geometry)?;
        if kept > 0 {
            println!(
                "resumed: kept {kept} verified blocks of {}",
                args.out.display()
            );
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let timeout = seconds(args.timeout, "--timeout")?;
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(timeout);
            stop.store(true, Ordering::Relaxed);
        });
    }
    let mut outcome = None;
    let mut joined_at = None;
    drive::run_receiver(&mut rx, &group, &status, &stop, |e| {
        match e {
            receiver::Event::Joined { session } => {
                joined_at = Some(start.elapsed().as_secs_f64());
                tracing::info!(session = format!("{session:016x}"), "joined");
            }
            receiver::Event::Block { offset, data, .. } => file.write_all_at(&data, offset)?,
            receiver::Event::Complete => outcome = Some(Ok(())),
            receiver::Event::Fallback(why) => outcome = Some(Err(why)),
        }
        Ok(())
    })
    .with_context(|| format!("receiving into {}", args.out.display()))?;
    let elapsed = start.elapsed().as_secs_f64();
    let s = rx.stats();
    let (have, total) = rx.progress();
    let d = &s.dropped;
    println!(
        "received {have}/{total} blocks in {elapsed:.2} s (joined at {:.2} s): {} packets, {} symbols, {} duplicates, {} blocks rebuilt, {} hash mismatches",
        joined_at.unwrap_or(0.0),
        s.packets,
        s.symbols,
        s.duplicates,
        s.blocks,
        s.hash_mismatches
    );
    println!(
        "dropped {}: {} truncated, {} bad checksum, {} wrong session, {} wrong manifest, {} replayed, {} other",
        d.total(),
        d.truncated,
        d.bad_checksum,
        d.wrong_session,
        d.wrong_manifest,
        d.replayed,
        d.total() - d.truncated - d.bad_checksum - d.wrong_session - d.wrong_manifest - d.replayed
    );
    match outcome {
        Some(Ok(())) => Ok(ExitCode::SUCCESS),
        Some(Err(why)) => {
            let why = match why {
                Fallback::Told(reason) => {
                    format!("the sender sent this receiver to unicast ({reason:?})")
                }
                Fallback::SessionEnded => "the session ended first".to_string(),
                Fallback::SenderLost => "the sender went silent".to_string(),
                Fallback::Abandoned => format!("gave up after {} s", args.timeout),
            };
            eprintln!("metalcast-mcast: incomplete: {why}; fetch the missing blocks by unicast");
            Ok(ExitCode::from(2))
        }
        None => bail!("receiver stopped without an outcome"),
    }
}
