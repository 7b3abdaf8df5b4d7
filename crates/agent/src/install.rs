//! Installing the node's image into the mounted target: the manifest checked against the
//! appliance's key, chunks fetched over HTTP by several fetchers at once (each fetch retried
//! while the appliance is away) or received from the plan's multicast session
//! ([`crate::mcast`]), the verified stream extracted by `metalcast-image`, and an extraction
//! cut short by the network continued from its first unwritten chunk.

use std::path::Path;
use std::time::{Duration, Instant};

use metalcast_image::{
    ChunkSource, ExtractError, ExtractOptions, ExtractProgress, ExtractReport, KeyError,
    MAX_CHUNK_LEN, ManifestError, SourceError, VerifiedManifest, VerifyingKey, extract,
    parse_and_verify, verifying_key,
};
use metalcast_proto::image::{ChunkRef, Digest, PublicKey};
use metalcast_proto::mcast::McastSession;
use metalcast_proto::{ImagePlan, Level, Phase};
use tracing::{error, info, warn};

use crate::appliance::{ApiError, Appliance, chain};
use crate::backoff::Backoff;
use crate::events::EventQueue;
use crate::mcast::{self, Link, McastError};

/// Requests in flight at once: enough to hide the round trip and the decompression.
const FETCHERS: usize = 4;
/// Stored bytes asked for in one request: the image's ~64 KiB chunks come a few dozen at a
/// time, so per-request work on the node (and on the appliance) is paid once per run.
const RUN_BYTES: u64 = 1 << 20;
/// Times an extraction cut short by the network is continued before the install gives up.
const MAX_RESUMES: usize = 5;
/// Shortest interval between two progress events.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "no {} on the kernel command line: refusing to install image {image} that cannot be verified",
        metalcast_proto::cmdline::KEY
    )]
    NoKey { image: String },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("fetching the manifest of {image}")]
    Fetch {
        image: String,
        #[source]
        source: ApiError,
    },
    #[error("the manifest of {image} does not verify")]
    Manifest {
        image: String,
        #[source]
        source: ManifestError,
    },
    #[error("the appliance sent manifest {got} for {image}, but the plan names {expected}")]
    WrongManifest {
        image: String,
        expected: Digest,
        got: Digest,
    },
    #[error("installing {image} stopped")]
    Extract {
        image: String,
        #[source]
        source: ExtractError,
    },
}

/// `NAME@VERSION`, as events and the console name an image.
pub fn label(image: &ImagePlan) -> String {
    format!("{}@{}", image.name, image.version)
}

/// The key manifests must be signed with, or why there is none.
pub fn trusted_key(
    key: Option<&PublicKey>,
    image: &ImagePlan,
) -> Result<VerifyingKey, InstallError> {
    let key = key.ok_or_else(|| InstallError::NoKey {
        image: label(image),
    })?;
    Ok(verifying_key(key)?)
}

/// Parses the manifest the appliance sent and checks its signature against `key` and its id
/// against the one the plan resolved: a validly signed manifest of another version is no
/// better than a forged one.
pub fn check_manifest(
    json: &[u8],
    key: &VerifyingKey,
    image: &ImagePlan,
) -> Result<VerifiedManifest, InstallError> {
    let manifest = parse_and_verify(json, key).map_err(|source| InstallError::Manifest {
        image: label(image),
        source,
    })?;
    if manifest.id() != image.manifest_id {
        return Err(InstallError::WrongManifest {
            image: label(image),
            expected: image.manifest_id,
            got: manifest.id(),
        });
    }
    Ok(manifest)
}

/// How one chunk fetch waits for the appliance: backoff from `initial` to `cap`, giving up
/// once the waits add up to `give_up`.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub cap: Duration,
    pub give_up: Duration,
}

impl RetryPolicy {
    /// A restarted appliance is back within seconds; a few minutes cover a slow reboot.
    pub const DEFAULT: Self = Self {
        initial: Duration::from_millis(500),
        cap: Duration::from_secs(10),
        give_up: Duration::from_secs(180),
    };
}

/// Chunks over HTTP. `fetch` runs on several of the extractor's threads at once; each call
/// retries on its own.
pub struct HttpChunks<'a> {
    api: &'a Appliance,
    policy: RetryPolicy,
    /// Where to say that a fetch went through after the appliance was away, and out of how
    /// many chunks: the operator sees the install resume rather than start over.
    report: Option<(&'a EventQueue, usize)>,
}

impl<'a> HttpChunks<'a> {
    pub fn new(api: &'a Appliance, policy: RetryPolicy) -> Self {
        Self {
            api,
            policy,
            report: None,
        }
    }

    pub fn reporting(mut self, events: &'a EventQueue, total_chunks: usize) -> Self {
        self.report = Some((events, total_chunks));
        self
    }
}

impl HttpChunks<'_> {
    /// Runs `call` until it succeeds or the policy gives up; says so in an event when it went
    /// through only after the appliance was away.
    fn retrying<T>(
        &self,
        index: usize,
        what: &str,
        mut call: impl FnMut() -> Result<T, ApiError>,
    ) -> Result<T, SourceError> {
        // The index seeds the jitter, so the fetchers do not return in lock step.
        let mut backoff = Backoff::new(self.policy.initial, self.policy.cap, index as u64 + 1);
        let started = Instant::now();
        let mut failed = false;
        let got = retry_for(
            what,
            &mut backoff,
            self.policy.give_up,
            &mut std::thread::sleep,
            || {
                let got = call();
                failed |= got.is_err();
                got
            },
        )?;
        if failed && let Some((events, total)) = self.report {
            event(
                events,
                Level::Warn,
                format!(
                    "resumed at chunk {index} of {total} after {:.0} s without the appliance; \
                     chunks already written are not fetched again",
                    started.elapsed().as_secs_f64()
                ),
            );
        }
        Ok(got)
    }
}

impl ChunkSource for HttpChunks<'_> {
    fn fetch(&self, index: usize, chunk: &ChunkRef) -> Result<Vec<u8>, SourceError> {
        let what = format!("fetching chunk {index} ({})", chunk.hash);
        self.retrying(index, &what, || self.api.chunk(&chunk.hash, MAX_CHUNK_LEN))
    }

    fn run_bytes(&self) -> u64 {
        RUN_BYTES
    }

    fn fetch_run(&self, first: usize, chunks: &[ChunkRef]) -> Result<Vec<u8>, SourceError> {
        let what = format!("fetching chunks {first} to {}", first + chunks.len() - 1);
        let hashes: Vec<Digest> = chunks.iter().map(|c| c.hash).collect();
        let total: u64 = chunks.iter().map(|c| c.stored_len).sum();
        // ureq refuses a body that reaches its limit, even exactly: allow one byte more, and
        // the extractor checks the length.
        self.retrying(first, &what, || self.api.chunks(&hashes, total + 1))
    }
}

/// Like [`crate::appliance::with_retry`], but gives up once the waits add up to `give_up`.
pub fn retry_for<T>(
    what: &str,
    backoff: &mut Backoff,
    give_up: Duration,
    sleep: &mut dyn FnMut(Duration),
    mut call: impl FnMut() -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let mut waited = Duration::ZERO;
    loop {
        match call() {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && waited < give_up => {
                let delay = backoff.next_delay().min(give_up - waited);
                warn!(
                    "{what}: {}; retrying in {:.1}s",
                    chain(&e),
                    delay.as_secs_f64()
                );
                sleep(delay);
                waited += delay;
            }
            Err(e) => return Err(e),
        }
    }
}

/// What to do after an extraction attempt failed.
#[derive(Debug, PartialEq, Eq)]
pub enum AfterFailure {
    /// The network cut it short: continue at this chunk.
    Resume(usize),
    /// Anything else (a chunk that does not verify, a write error, an appliance that stayed
    /// away too long or refuses): stop.
    Stop,
}

/// Whether an extraction started at chunk `start` that failed with `err`, reporting
/// `resume_chunk`, is worth continuing, after `resumes` earlier continuations. A resumed
/// extraction first reads the header chunk of the member it continues, before `start`; when
/// that fetch fails the extractor reports the header chunk, but everything before `start` is
/// still written, so the install continues at `start`, not further back.
pub fn after_failure(
    err: &ExtractError,
    start: usize,
    resume_chunk: usize,
    resumes: usize,
) -> AfterFailure {
    let network = match err {
        ExtractError::Fetch { source, .. } => source
            .downcast_ref::<ApiError>()
            .is_some_and(ApiError::is_retryable),
        _ => false,
    };
    if network && resumes < MAX_RESUMES {
        AfterFailure::Resume(resume_chunk.max(start))
    } else {
        AfterFailure::Stop
    }
}

/// Decides when a progress event is due and what it says.
pub struct Meter {
    last_at: Duration,
    last_bytes: u64,
}

impl Meter {
    /// Starts measuring at `now` (time since any fixed instant) with `bytes` already written.
    pub fn new(now: Duration, bytes: u64) -> Self {
        Self {
            last_at: now,
            last_bytes: bytes,
        }
    }

    /// The progress line if one is due at `now`: `written 120.0 MiB of 800.0 MiB (15%), 42.1 MB/s`,
    /// the rate over the interval since the last line.
    pub fn tick(&mut self, now: Duration, p: &ExtractProgress) -> Option<String> {
        let elapsed = now.saturating_sub(self.last_at);
        if elapsed < PROGRESS_EVERY {
            return None;
        }
        let rate = p.stream_bytes.saturating_sub(self.last_bytes) as f64 / elapsed.as_secs_f64();
        self.last_at = now;
        self.last_bytes = p.stream_bytes;
        Some(progress_line(p, rate))
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

fn progress_line(p: &ExtractProgress, bytes_per_sec: f64) -> String {
    let percent = if p.total_bytes == 0 {
        100
    } else {
        (u128::from(p.stream_bytes) * 100 / u128::from(p.total_bytes)) as u64
    };
    format!(
        "written {:.1} MiB of {:.1} MiB ({percent}%), {:.1} MB/s",
        mib(p.stream_bytes),
        mib(p.total_bytes),
        bytes_per_sec / 1e6
    )
}

/// Image events: on the console and, through the queue, to the appliance.
pub(crate) fn event(events: &EventQueue, level: Level, message: String) {
    match level {
        Level::Error => error!("{message}"),
        Level::Warn => warn!("{message}"),
        _ => info!("{message}"),
    }
    events.record(Phase::Image, level, message);
}

/// Fetches, verifies and extracts `image` into `target`. Every failure is also an error event.
pub fn install_image(
    api: &Appliance,
    events: &EventQueue,
    key: Option<&PublicKey>,
    image: &ImagePlan,
    target: &Path,
) -> Result<(), InstallError> {
    install_image_with(api, events, key, image, target, RetryPolicy::DEFAULT)
}

fn install_image_with(
    api: &Appliance,
    events: &EventQueue,
    key: Option<&PublicKey>,
    image: &ImagePlan,
    target: &Path,
    policy: RetryPolicy,
) -> Result<(), InstallError> {
    let result = install_inner(api, events, key, image, target, policy);
    if let Err(e) = &result {
        event(events, Level::Error, chain(e));
    }
    result
}

fn install_inner(
    api: &Appliance,
    events: &EventQueue,
    key: Option<&PublicKey>,
    image: &ImagePlan,
    target: &Path,
    policy: RetryPolicy,
) -> Result<(), InstallError> {
    let mac = api.mac();
    install_via(api, events, key, image, target, policy, &|session| {
        mcast::udp_link(session, mac)
    })
}

/// Opens the way to a multicast session's group: the boot NIC's sockets (tests connect a
/// sender in process).
type OpenLink<'a> = &'a dyn Fn(&McastSession) -> Result<Box<dyn Link>, McastError>;

fn install_via(
    api: &Appliance,
    events: &EventQueue,
    key: Option<&PublicKey>,
    image: &ImagePlan,
    target: &Path,
    policy: RetryPolicy,
    open_link: OpenLink<'_>,
) -> Result<(), InstallError> {
    let name = label(image);
    let key = trusted_key(key, image)?;
    let mut backoff = Backoff::new(policy.initial, policy.cap, 1);
    let json = retry_for(
        "fetching the manifest",
        &mut backoff,
        policy.give_up,
        &mut std::thread::sleep,
        || api.manifest(&image.name, &image.version),
    )
    .map_err(|source| InstallError::Fetch {
        image: name.clone(),
        source,
    })?;
    let manifest = check_manifest(&json, &key, image)?;
    let m = manifest.manifest();
    let total_chunks = m.chunks.len();
    event(
        events,
        Level::Info,
        format!(
            "installing {name}: {total_chunks} chunks, {:.1} MiB",
            mib(m.size)
        ),
    );

    let http = HttpChunks::new(api, policy).reporting(events, total_chunks);
    let started = Instant::now();
    let unicast =
        |source: &HttpChunks<'_>| extract_resuming(source, &manifest, target, events, started);
    let extracted = match &image.mcast {
        None => unicast(&http),
        Some(session) => {
            let ready = mcast::prepare(api, policy, session, m, target)
                .and_then(|prepared| Ok((prepared, open_link(session)?)));
            match ready {
                Ok((prepared, mut link)) => {
                    let who = mcast::Receiving {
                        events,
                        image: &name,
                        id: api.mac().to_u64(),
                    };
                    mcast::receive(prepared, link.as_mut(), &who, http, |source| {
                        extract_resuming(source, &manifest, target, events, started)
                    })
                }
                Err(e) => {
                    event(events, Level::Warn, mcast::not_used_text(&e));
                    unicast(&http)
                }
            }
        }
    };
    let report = extracted.map_err(|source| InstallError::Extract {
        image: name.clone(),
        source,
    })?;
    let secs = started.elapsed().as_secs_f64();
    event(
        events,
        Level::Info,
        format!(
            "installed {name}: {:.1} MiB in {secs:.1} s ({:.1} MB/s), {} members",
            mib(m.size),
            m.size as f64 / secs.max(1e-3) / 1e6,
            report.unpack.members
        ),
    );
    Ok(())
}

/// Extracts the whole image from `source`, continuing an extraction the network cut short
/// from its first unwritten chunk.
fn extract_resuming<S: ChunkSource>(
    source: &S,
    manifest: &VerifiedManifest,
    target: &Path,
    events: &EventQueue,
    started: Instant,
) -> Result<ExtractReport, ExtractError> {
    let m = manifest.manifest();
    let total_chunks = m.chunks.len();
    let mut start = 0;
    let mut resumes = 0;
    loop {
        let mut resume_chunk = start;
        // A resumed run reports from where it starts parsing, not from zero.
        let from = m.chunks.get(start).map_or(m.size, |c| c.entry_start);
        let mut meter = Meter::new(started.elapsed(), from);
        let opts = ExtractOptions {
            start_chunk: start,
            fetchers: FETCHERS,
            ..ExtractOptions::default()
        };
        let result = extract(source, manifest, target, &opts, &mut |p| {
            resume_chunk = p.resume_chunk;
            if let Some(line) = meter.tick(started.elapsed(), p) {
                event(events, Level::Info, line);
            }
        });
        let e = match result {
            Ok(report) => return Ok(report),
            Err(e) => e,
        };
        match after_failure(&e, start, resume_chunk, resumes) {
            AfterFailure::Resume(k) => {
                resumes += 1;
                event(
                    events,
                    Level::Warn,
                    format!("{}; resuming at chunk {k} of {total_chunks}", chain(&e)),
                );
                start = k;
            }
            AfterFailure::Stop => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::fs;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use metalcast_image::{
        DEFAULT_CHUNKING, ImageMeta, ImportOptions, SigningKey, Store, import_dir, sign_manifest,
    };
    use metalcast_proto::image::{FORMAT_VERSION, Manifest, OsFamily};

    use super::*;
    use crate::appliance::tests::FakeAppliance;

    fn signed(key: &SigningKey) -> (ImagePlan, Vec<u8>) {
        let data = b"not really a tar stream".to_vec();
        let manifest = Manifest {
            format: FORMAT_VERSION,
            name: "debian".into(),
            version: "12.5".into(),
            parent: None,
            created_ms: 1,
            os_family: OsFamily::Debian,
            kernel: None,
            initrd: None,
            size: data.len() as u64,
            chunking: DEFAULT_CHUNKING,
            chunks: vec![ChunkRef {
                hash: Digest(*blake3::hash(&data).as_bytes()),
                offset: 0,
                len: data.len() as u64,
                stored_len: 10,
                entry_start: 0,
            }],
        };
        let s = sign_manifest(manifest, key).unwrap();
        let plan = ImagePlan {
            name: "debian".into(),
            version: "12.5".into(),
            manifest_id: s.id,
            mcast: None,
        };
        (plan, serde_json::to_vec(&s).unwrap())
    }

    #[test]
    fn a_manifest_signed_by_the_key_and_named_by_the_plan_passes() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let (plan, json) = signed(&key);
        let public = PublicKey(key.verifying_key().to_bytes());
        let trusted = trusted_key(Some(&public), &plan).unwrap();
        let m = check_manifest(&json, &trusted, &plan).unwrap();
        assert_eq!(m.id(), plan.manifest_id);
    }

    #[test]
    fn wrong_key_wrong_id_tampering_and_no_key_are_refused() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let (plan, json) = signed(&key);
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert!(matches!(
            check_manifest(&json, &other, &plan),
            Err(InstallError::Manifest {
                source: ManifestError::Key { .. },
                ..
            })
        ));

        let mut elsewhere = plan.clone();
        elsewhere.manifest_id = Digest([9; 32]);
        let err = check_manifest(&json, &key.verifying_key(), &elsewhere).unwrap_err();
        assert!(matches!(err, InstallError::WrongManifest { .. }), "{err}");

        let text = String::from_utf8(json).unwrap().replace("12.5", "12.6");
        assert!(matches!(
            check_manifest(text.as_bytes(), &key.verifying_key(), &plan),
            Err(InstallError::Manifest {
                source: ManifestError::Id { .. },
                ..
            })
        ));
        assert!(matches!(
            check_manifest(b"{", &key.verifying_key(), &plan),
            Err(InstallError::Manifest { .. })
        ));

        let err = trusted_key(None, &plan).unwrap_err();
        assert!(err.to_string().contains("metalcast.key"), "{err}");
        assert!(err.to_string().contains("debian@12.5"), "{err}");
    }

    fn chunk_ref() -> ChunkRef {
        ChunkRef {
            hash: Digest([0xab; 32]),
            offset: 0,
            len: 5,
            stored_len: 5,
            entry_start: 0,
        }
    }

    const FAST: RetryPolicy = RetryPolicy {
        initial: Duration::from_millis(20),
        cap: Duration::from_millis(100),
        give_up: Duration::from_secs(10),
    };

    #[test]
    fn chunk_fetches_retry_through_errors_and_a_server_that_goes_away() {
        let fake = FakeAppliance::start(vec![
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nfirst",
        ]);
        let api = fake.client();
        let source = HttpChunks::new(&api, FAST);
        assert_eq!(source.fetch(3, &chunk_ref()).unwrap(), b"first");
        let seen: Vec<String> = fake.requests.try_iter().collect();
        assert_eq!(seen.len(), 2);
        assert!(
            seen[0].starts_with(&format!(
                "GET /api/v1/chunks/{} HTTP/1.1\r\n",
                "ab".repeat(32)
            )),
            "{}",
            seen[0]
        );

        // The script is done: nobody listens on the port any more. The fetch keeps trying
        // until the appliance is back on the same port.
        let addr = fake.addr();
        let back = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            FakeAppliance::start_on(
                addr,
                vec!["HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nsecond"],
            )
        });
        assert_eq!(source.fetch(4, &chunk_ref()).unwrap(), b"second");
        drop(back.join().unwrap());
    }

    #[test]
    fn chunk_fetches_give_up_on_refusals_at_once_and_on_outages_in_time() {
        let fake = FakeAppliance::start(vec![
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ]);
        let api = fake.client();
        let source = HttpChunks::new(&api, FAST);
        let err = source.fetch(0, &chunk_ref()).unwrap_err();
        let api_err = err.downcast_ref::<ApiError>().unwrap();
        assert!(matches!(api_err, ApiError::Status { status: 404, .. }));

        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30), 5);
        let mut slept = Vec::new();
        let mut calls = 0;
        let got: Result<(), _> = retry_for(
            "test",
            &mut backoff,
            Duration::from_secs(60),
            &mut |d| slept.push(d),
            || {
                calls += 1;
                Err(ApiError::Unreachable(ureq::Error::ConnectionFailed))
            },
        );
        assert!(matches!(got, Err(ApiError::Unreachable(_))));
        let total: Duration = slept.iter().sum();
        assert_eq!(total, Duration::from_secs(60), "{slept:?}");
        assert_eq!(calls, slept.len() + 1);
        assert!(slept.windows(2).take(3).all(|w| w[1] > w[0]), "{slept:?}");
    }

    fn fetch_error(source: SourceError) -> ExtractError {
        ExtractError::Fetch {
            index: 7,
            hash: Digest([1; 32]),
            source,
        }
    }

    #[test]
    fn only_network_failures_resume_and_only_a_few_times() {
        let away = || {
            fetch_error(Box::new(ApiError::Unreachable(
                ureq::Error::ConnectionFailed,
            )))
        };
        assert_eq!(after_failure(&away(), 0, 7, 0), AfterFailure::Resume(7));
        assert_eq!(
            after_failure(&away(), 4, 9, MAX_RESUMES - 1),
            AfterFailure::Resume(9)
        );
        assert_eq!(
            after_failure(&away(), 4, 9, MAX_RESUMES),
            AfterFailure::Stop
        );
        // A resumed run that lost the header chunk of its member (0) before reaching its
        // start (4): chunks up to 4 are still written.
        assert_eq!(after_failure(&away(), 4, 0, 1), AfterFailure::Resume(4));
        let missing = fetch_error(Box::new(ApiError::Status {
            status: 404,
            message: String::new(),
        }));
        assert_eq!(after_failure(&missing, 0, 7, 0), AfterFailure::Stop);
        let corrupt = ExtractError::Corrupt {
            index: 7,
            hash: Digest([1; 32]),
            why: "content hashes to …".into(),
        };
        assert_eq!(after_failure(&corrupt, 0, 7, 0), AfterFailure::Stop);
        assert_eq!(
            after_failure(&fetch_error("a panicking source".into()), 0, 7, 0),
            AfterFailure::Stop
        );
    }

    #[test]
    fn progress_lines_at_most_every_second_with_the_interval_rate() {
        let p = |bytes| ExtractProgress {
            stream_bytes: bytes,
            total_bytes: 800 << 20,
            resume_chunk: 0,
        };
        let mut meter = Meter::new(Duration::from_secs(10), 0);
        assert_eq!(meter.tick(Duration::from_millis(10_500), &p(1 << 20)), None);
        assert_eq!(
            meter
                .tick(Duration::from_secs(12), &p(120 << 20))
                .as_deref(),
            Some("written 120.0 MiB of 800.0 MiB (15%), 62.9 MB/s")
        );
        assert_eq!(
            meter.tick(Duration::from_millis(12_999), &p(121 << 20)),
            None
        );
        assert_eq!(
            meter
                .tick(Duration::from_secs(14), &p(800 << 20))
                .as_deref(),
            Some("written 800.0 MiB of 800.0 MiB (100%), 356.5 MB/s")
        );
    }

    /// An appliance serving one image by path, that goes away for `outage` after
    /// `down_after` chunk requests (connections closed unanswered) and can serve one chunk
    /// corrupted.
    struct ImageServer {
        url: String,
        chunk_gets: Arc<Mutex<Vec<String>>>,
        events: Arc<Mutex<Vec<String>>>,
    }

    struct Script {
        manifest: Vec<u8>,
        chunks: HashMap<String, Vec<u8>>,
        /// Chunk hashes in manifest order.
        order: Vec<String>,
        down_after: usize,
        outage: Duration,
        /// A chunk served with one bit flipped.
        corrupt: Option<String>,
        /// The multicast session's block list, served at [`BLOCK_LIST`].
        block_list: Option<Vec<u8>>,
        /// The next this many chunk requests are closed unanswered.
        refuse_chunks: AtomicUsize,
    }

    const BLOCK_LIST: &str = "/api/v1/mcast/sessions/123456789abcdef0/blocks";

    impl ImageServer {
        fn start(script: Script) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let chunk_gets = Arc::new(Mutex::new(Vec::new()));
            let events = Arc::new(Mutex::new(Vec::new()));
            let (gets, evs) = (chunk_gets.clone(), events.clone());
            let script = Arc::new(script);
            let down_since: Arc<Mutex<Option<Instant>>> = Arc::default();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    let (script, gets, evs, down_since) = (
                        script.clone(),
                        gets.clone(),
                        evs.clone(),
                        down_since.clone(),
                    );
                    std::thread::spawn(move || {
                        answer(stream, &script, &gets, &evs, &down_since);
                    });
                }
            });
            Self {
                url,
                chunk_gets,
                events,
            }
        }

        fn client(&self) -> Appliance {
            Appliance::new(&crate::cmdline::BootParams {
                url: self.url.clone(),
                token: "tok".into(),
                mac: "52:54:00:12:34:56".parse().unwrap(),
                key: None,
                consoles: Vec::new(),
            })
        }
    }

    fn answer(
        mut stream: TcpStream,
        script: &Script,
        gets: &Mutex<Vec<String>>,
        events: &Mutex<Vec<String>>,
        down_since: &Mutex<Option<Instant>>,
    ) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let length = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_string())
            })
            .map_or(0, |v| v.parse().unwrap());
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let path = head.split(' ').nth(1).unwrap().to_string();
        let reply = |status: &str, body: &[u8]| {
            let mut out = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            out.extend_from_slice(body);
            out
        };
        let response = if path.ends_with("/events") {
            let e: metalcast_proto::EventReport = serde_json::from_slice(&body).unwrap();
            events.lock().unwrap().push(e.message);
            reply("204 No Content", b"")
        } else if path == "/api/v1/images/debian/1/manifest" {
            reply("200 OK", &script.manifest)
        } else if let (BLOCK_LIST, Some(list)) = (path.as_str(), &script.block_list) {
            reply("200 OK", list)
        } else if let Some(wanted) = chunk_request(&path, &body) {
            let refuse =
                script
                    .refuse_chunks
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            if refuse.is_ok() {
                return;
            }
            // The outage starts at the first request that begins at or past `down_after` and
            // refuses only such requests (fetchers race; one for earlier chunks may come
            // later), so the resume point is at or after `down_after`.
            let first = wanted
                .iter()
                .filter_map(|w| script.order.iter().position(|h| h == w))
                .min()
                .unwrap_or(0);
            if first >= script.down_after {
                let since = *down_since.lock().unwrap().get_or_insert_with(Instant::now);
                if since.elapsed() < script.outage {
                    // Gone: the connection closes without an answer.
                    return;
                }
            }
            let mut out = Vec::new();
            for hash in &wanted {
                gets.lock().unwrap().push(hash.clone());
                let Some(stored) = script.chunks.get(hash) else {
                    return drop(stream.write_all(&reply("404 Not Found", b"")));
                };
                let mut stored = stored.clone();
                if script.corrupt.as_deref() == Some(hash.as_str()) {
                    let middle = stored.len() / 2;
                    stored[middle] ^= 0x40;
                }
                out.extend(stored);
            }
            reply("200 OK", &out)
        } else {
            reply("404 Not Found", b"")
        };
        let _ = stream.write_all(&response);
    }

    /// The chunks a request asks for: one by `GET /chunks/{hash}`, a run by
    /// `POST /chunks/fetch`.
    fn chunk_request(path: &str, body: &[u8]) -> Option<Vec<String>> {
        if path == "/api/v1/chunks/fetch" {
            let list: metalcast_proto::image::ChunkList = serde_json::from_slice(body).unwrap();
            return Some(list.chunks.iter().map(ToString::to_string).collect());
        }
        let hash = path.strip_prefix("/api/v1/chunks/")?;
        Some(vec![hash.to_string()])
    }

    /// Pseudo-random bytes: incompressible enough to make many chunks.
    fn noise(len: usize, mut x: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// A tree imported into a store, and everything the server needs to serve it.
    fn image(dir: &Path, key: &SigningKey) -> (ImagePlan, Script, usize) {
        let tree = dir.join("tree");
        fs::create_dir_all(tree.join("etc")).unwrap();
        // Several of the agent's runs of chunks.
        fs::write(tree.join("big"), noise(3 << 20, 1)).unwrap();
        fs::write(tree.join("etc/small"), b"node\n").unwrap();
        fs::write(tree.join("other"), noise(300 << 10, 2)).unwrap();
        let store = Store::open(dir.join("store")).unwrap();
        let meta = ImageMeta {
            name: "debian".into(),
            version: "1".into(),
            parent: None,
            created_ms: 1,
            os_family: OsFamily::Debian,
            kernel: None,
            initrd: None,
        };
        let report = import_dir(
            &store,
            &tree,
            &meta,
            key,
            &ImportOptions::default(),
            &mut |_| {},
        )
        .unwrap();
        let chunks: HashMap<String, Vec<u8>> = report
            .manifest
            .manifest
            .chunks
            .iter()
            .map(|c| (c.hash.to_string(), store.get(&c.hash).unwrap()))
            .collect();
        let plan = ImagePlan {
            name: "debian".into(),
            version: "1".into(),
            manifest_id: report.manifest_id,
            mcast: None,
        };
        let order = report
            .manifest
            .manifest
            .chunks
            .iter()
            .map(|c| c.hash.to_string())
            .collect();
        let script = Script {
            manifest: serde_json::to_vec(&report.manifest).unwrap(),
            chunks,
            order,
            down_after: usize::MAX,
            outage: Duration::ZERO,
            corrupt: None,
            block_list: None,
            refuse_chunks: AtomicUsize::new(0),
        };
        (plan, script, report.chunks_total)
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("metalcast-install-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("target")).unwrap();
        dir
    }

    const SHORT: RetryPolicy = RetryPolicy {
        initial: Duration::from_millis(20),
        cap: Duration::from_millis(50),
        give_up: Duration::from_millis(150),
    };

    #[test]
    fn an_outage_mid_stream_resumes_where_it_stopped_and_the_tree_arrives_whole() {
        let dir = scratch("resume");
        let key = SigningKey::from_bytes(&[3; 32]);
        let (plan, mut script, n) = image(&dir, &key);
        assert!(n >= 8, "{n} chunks");
        script.down_after = 3;
        script.outage = Duration::from_millis(400);
        let server = ImageServer::start(script);
        let api = server.client();
        let events = EventQueue::start(api.clone(), Backoff::new(SHORT.initial, SHORT.cap, 1));
        let public = PublicKey(key.verifying_key().to_bytes());
        let target = dir.join("target");
        install_inner(&api, &events, Some(&public), &plan, &target, SHORT).unwrap();
        events.flush();

        for f in ["big", "etc/small", "other"] {
            assert_eq!(
                fs::read(dir.join("tree").join(f)).unwrap(),
                fs::read(target.join(f)).unwrap(),
                "{f}"
            );
        }
        let events = server.events.lock().unwrap().clone();
        assert!(
            events[0].starts_with(&format!("installing debian@1: {n} chunks, ")),
            "{events:?}"
        );
        let resumes: Vec<&String> = events
            .iter()
            .filter(|e| e.contains("resuming at chunk"))
            .collect();
        assert!(!resumes.is_empty(), "{events:?}");
        let at: Vec<usize> = resumes
            .iter()
            .map(|e| {
                let rest = e.split("resuming at chunk ").nth(1).unwrap();
                assert!(rest.ends_with(&format!(" of {n}")), "{e}");
                rest.split(' ').next().unwrap().parse().unwrap()
            })
            .collect();
        assert!(at[0] >= 3 && at[0] < n, "{at:?}");
        assert!(at.iter().all(|k| *k == at[0]), "{at:?}");
        assert!(
            events.last().unwrap().starts_with("installed debian@1: "),
            "{events:?}"
        );
        // Not started over: the chunks before the resume point were fetched once.
        let gets = server.chunk_gets.lock().unwrap().clone();
        assert!(gets.len() < 2 * n, "{} fetches for {n} chunks", gets.len());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_chunk_stops_the_install_naming_it() {
        let dir = scratch("corrupt");
        let key = SigningKey::from_bytes(&[3; 32]);
        let (plan, mut script, _) = image(&dir, &key);
        let manifest: metalcast_proto::image::SignedManifest =
            serde_json::from_slice(&script.manifest).unwrap();
        let bad = manifest.manifest.chunks[2].hash.to_string();
        script.corrupt = Some(bad.clone());
        let server = ImageServer::start(script);
        let api = server.client();
        let events = EventQueue::start(api.clone(), Backoff::new(SHORT.initial, SHORT.cap, 1));
        let public = PublicKey(key.verifying_key().to_bytes());
        let err = install_image_with(
            &api,
            &events,
            Some(&public),
            &plan,
            &dir.join("target"),
            SHORT,
        )
        .unwrap_err();
        events.flush();
        assert!(
            matches!(
                &err,
                InstallError::Extract {
                    source: ExtractError::Corrupt { index: 2, .. },
                    ..
                }
            ),
            "{err:?}"
        );
        let events = server.events.lock().unwrap().clone();
        let last = events.last().unwrap();
        assert!(
            last.contains(&format!("chunk 2 ({bad}) failed verification")),
            "{last}"
        );
        assert!(!events.iter().any(|e| e.contains("resuming")), "{events:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The version's stored chunk stream: what a multicast session sends.
    fn stored_stream(script: &Script) -> Vec<u8> {
        script
            .order
            .iter()
            .flat_map(|h| script.chunks[h].iter().copied())
            .collect()
    }

    fn session_for(list: &metalcast_mcast::BlockList) -> McastSession {
        McastSession {
            id: metalcast_proto::mcast::SessionId(0x1234_5678_9abc_def0),
            group: "239.77.0.1:5000".parse().unwrap(),
            manifest_hash: metalcast_proto::mcast::ManifestHash(*list.manifest_hash()),
            length: list.geometry().length(),
            block_size: list.geometry().block_size(),
            block_list: BLOCK_LIST.into(),
        }
    }

    /// Opens `link` once.
    fn hand_over(
        link: mcast::tests::ChannelLink,
    ) -> impl Fn(&McastSession) -> Result<Box<dyn Link>, McastError> {
        let link = Mutex::new(Some(link));
        move |_| Ok(Box::new(link.lock().unwrap().take().expect("one session")))
    }

    fn assert_same_tree(dir: &Path) {
        for f in ["big", "etc/small", "other"] {
            assert_eq!(
                fs::read(dir.join("tree").join(f)).unwrap(),
                fs::read(dir.join("target").join(f)).unwrap(),
                "{f}"
            );
        }
        assert!(!dir.join("target").join(mcast::SPOOL_NAME).exists());
    }

    /// Installs `plan` from a fake appliance answering with `script`, receiving multicast
    /// through `open_link`; returns the appliance with what it saw.
    fn install_from(
        script: Script,
        key: &SigningKey,
        plan: &ImagePlan,
        target: &Path,
        open_link: OpenLink<'_>,
    ) -> ImageServer {
        let server = ImageServer::start(script);
        let api = server.client();
        let events = EventQueue::start(api.clone(), Backoff::new(SHORT.initial, SHORT.cap, 1));
        let public = PublicKey(key.verifying_key().to_bytes());
        install_via(&api, &events, Some(&public), plan, target, SHORT, open_link).unwrap();
        events.flush();
        server
    }

    /// Blocks of 16 KiB: a chunk (16 to 256 KiB) spans several.
    const BLOCK: u32 = 16 * 1024;

    #[test]
    fn a_late_joiner_on_a_lossy_session_gets_every_chunk_by_multicast() {
        let dir = scratch("mcast");
        let key = SigningKey::from_bytes(&[3; 32]);
        let (mut plan, mut script, _) = image(&dir, &key);
        let (list, link, sender) = mcast::tests::fake_session(
            stored_stream(&script),
            BLOCK,
            40_000_000,
            mcast::tests::Script {
                join_after: 300,
                lose_every: Some(10),
                close_after_blocks: None,
            },
        );
        let blocks = list.geometry().block_count();
        plan.mcast = Some(session_for(&list));
        script.block_list = Some(list.to_text().into_bytes());
        let server = install_from(script, &key, &plan, &dir.join("target"), &hand_over(link));

        assert_same_tree(&dir);
        assert!(server.chunk_gets.lock().unwrap().is_empty());
        let events = server.events.lock().unwrap().clone();
        let joined = format!(
            "multicast: joined session 123456789abcdef0 (239.77.0.1:5000) for debian@1, {blocks} blocks"
        );
        let at = |prefix: &str| events.iter().position(|e| e.starts_with(prefix));
        let (joined, all) = (
            at(&joined),
            at(&format!("multicast: all {blocks} blocks in ")),
        );
        assert!(joined.is_some() && all > joined, "{events:?}");
        assert!(at("installed debian@1: ") > all, "{events:?}");
        assert!(
            !events.iter().any(|e| e.contains("falling back")),
            "{events:?}"
        );
        let sent = sender.join().unwrap();
        assert!(
            sent.iter().any(|e| e.starts_with("ReceiverDone")),
            "{sent:?}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_session_that_ends_early_leaves_only_the_rest_to_http() {
        let dir = scratch("mcast-early");
        let key = SigningKey::from_bytes(&[3; 32]);
        let (mut plan, mut script, _) = image(&dir, &key);
        let entries = script.order.len();
        let (list, link, sender) = mcast::tests::fake_session(
            stored_stream(&script),
            BLOCK,
            10_000_000,
            mcast::tests::Script {
                join_after: 0,
                lose_every: None,
                close_after_blocks: Some(24),
            },
        );
        let blocks = list.geometry().block_count();
        plan.mcast = Some(session_for(&list));
        script.block_list = Some(list.to_text().into_bytes());
        let server = install_from(script, &key, &plan, &dir.join("target"), &hand_over(link));

        assert_same_tree(&dir);
        let events = server.events.lock().unwrap().clone();
        let fell = events
            .iter()
            .find_map(|e| e.strip_prefix("multicast: falling back to unicast after "))
            .unwrap_or_else(|| panic!("{events:?}"));
        assert!(
            fell.ends_with(&format!(
                " of {blocks} blocks: the session ended; the rest comes over HTTP"
            )),
            "{fell}"
        );
        let got: u32 = fell.split(' ').next().unwrap().parse().unwrap();
        assert!((24..blocks).contains(&got), "{got} of {blocks}");
        // 24 blocks in a row hold at least one whole chunk: it came from the session.
        let gets = server.chunk_gets.lock().unwrap().len();
        assert!(
            gets > 0 && gets < entries,
            "{gets} of {entries} chunks over HTTP"
        );
        assert!(events.last().unwrap().starts_with("installed debian@1: "));
        sender.join().unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn after_a_session_ended_early_an_http_outage_resumes_as_in_unicast() {
        let dir = scratch("mcast-outage");
        let key = SigningKey::from_bytes(&[3; 32]);
        let (mut plan, mut script, _) = image(&dir, &key);
        let (list, link, sender) = mcast::tests::fake_session(
            stored_stream(&script),
            BLOCK,
            10_000_000,
            mcast::tests::Script {
                join_after: 0,
                lose_every: None,
                close_after_blocks: Some(24),
            },
        );
        plan.mcast = Some(session_for(&list));
        script.block_list = Some(list.to_text().into_bytes());
        // Connections closed unanswered: a fetch tries 5 or 6 times within SHORT's give-up,
        // so 4 fetchers absorb at most 20 before one gives up, and 21 allow at most 4
        // resumes.
        script.refuse_chunks = AtomicUsize::new(21);
        let server = install_from(script, &key, &plan, &dir.join("target"), &hand_over(link));

        assert_same_tree(&dir);
        let events = server.events.lock().unwrap().clone();
        let at = |part: &str| events.iter().position(|e| e.contains(part));
        let fell = at("multicast: falling back to unicast after ");
        assert!(fell.is_some(), "{events:?}");
        assert!(at("resuming at chunk ") > fell, "{events:?}");
        assert!(events.last().unwrap().starts_with("installed debian@1: "));
        sender.join().unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_block_list_that_is_not_the_sessions_is_refused_and_http_does_it_all() {
        let dir = scratch("mcast-refused");
        let key = SigningKey::from_bytes(&[3; 32]);
        let (mut plan, mut script, _) = image(&dir, &key);
        let entries = script.order.len();
        let list = metalcast_mcast::BlockList::from_bytes(&stored_stream(&script), BLOCK).unwrap();
        let mut session = session_for(&list);
        session.manifest_hash = metalcast_proto::mcast::ManifestHash([0xee; 32]);
        plan.mcast = Some(session);
        script.block_list = Some(list.to_text().into_bytes());
        let never = |_: &McastSession| -> Result<Box<dyn Link>, McastError> {
            panic!("no session to join")
        };
        let server = install_from(script, &key, &plan, &dir.join("target"), &never);

        assert_same_tree(&dir);
        let events = server.events.lock().unwrap().clone();
        assert_eq!(
            events[1],
            format!(
                "multicast: not used: the block list hashes to {}, but the session's manifest \
                 hash is {}; the whole image comes over HTTP",
                metalcast_proto::mcast::ManifestHash(*list.manifest_hash()),
                "ee".repeat(32)
            )
        );
        assert_eq!(server.chunk_gets.lock().unwrap().len(), entries);
        fs::remove_dir_all(&dir).unwrap();
    }
}
