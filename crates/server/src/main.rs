//! `metalcastd`: the provisioning appliance. See `docs/config.md` and `docs/api.md`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use metalcast_server::boot::Services;
use metalcast_server::config::Config;
use metalcast_server::http::{self, AppState, now_ms};
use metalcast_server::images::Images;
use metalcast_server::layouts::Layouts;
use metalcast_server::store::Store;
use metalcast_server::tftp_root;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

/// How long open HTTP connections (a kernel download, say) may take to finish at shutdown.
const HTTP_DRAIN: Duration = Duration::from_secs(10);
const MAX_TOKEN_NAME: usize = 64;
const PRUNE_EVENTS_EVERY: Duration = Duration::from_secs(3600);

#[derive(Parser)]
#[command(
    name = "metalcastd",
    version,
    about = "The metalcast bare-metal provisioning appliance"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the appliance: HTTP, and DHCP, TFTP and router advertisements as configured.
    Serve(ConfigArg),
    /// Manage admin API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Validate a configuration file and check the files it names.
    CheckConfig(ConfigArg),
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create an admin token and print it once; only its hash is stored.
    Create {
        /// A label for the token, e.g. who or what uses it.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Args)]
struct ConfigArg {
    /// Configuration file (TOML, see docs/config.md).
    #[arg(long, short, value_name = "FILE", env = "METALCASTD_CONFIG")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // A log that cannot be written (a full disk) must not take the process down:
        // the subscriber would report it with `eprintln!`, which panics.
        .log_internal_errors(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(c) => serve(&c.config).await,
            Command::Token {
                command: TokenCommand::Create { name, config },
            } => create_token(&name, &config.config).await,
            Command::CheckConfig(c) => check_config(&c.config),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Not `eprintln!`: with stderr on a full disk it would panic and hide the exit code.
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Path) -> Result<Config> {
    Config::load(path).with_context(|| format!("loading configuration {}", path.display()))
}

async fn serve(path: &Path) -> Result<()> {
    let config = load(path)?;
    for warning in config.check_files().context("checking configured files")? {
        tracing::warn!("{warning}");
    }
    if let Some(ipxe_dir) = &config.tftp_stage {
        let missing = tftp_root::stage(ipxe_dir, &config.tftp.root, &config.ipxe_files())
            .context("staging the iPXE builds for TFTP")?;
        for name in missing {
            tracing::warn!(
                "{name} is not in {}; those clients cannot boot",
                ipxe_dir.display()
            );
        }
    }
    let store = Store::open(&config.data_dir)
        .await
        .context("opening the store")?;
    let data_dir = config.data_dir.clone();
    let mut images = tokio::task::spawn_blocking(move || Images::open(&data_dir))
        .await
        .context("opening the image store")?
        .context("opening the image store")?;
    images.reserve = config.images_reserve;
    tracing::info!(
        "image store {}, manifests signed with key {}",
        images.store.root().display(),
        images.public_key()
    );
    let listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("binding HTTP to {}", config.http_listen))?;
    let http_addr = listener.local_addr().context("reading the HTTP address")?;
    let mut services = Services::start(&config, &store)
        .await
        .context("starting boot services")?;
    let mcast = metalcast_server::mcast::Sessions::start(config.mcast.clone(), store.clone());
    if let Some(keep) = config.events_keep {
        tokio::spawn(prune_events(store.clone(), keep));
    }
    let app = http::app(AppState {
        store,
        boot: config.boot.clone(),
        known_nodes: services.known_nodes.clone(),
        layouts: Layouts {
            dir: config.layouts_dir.clone(),
        },
        images,
        mcast,
    });
    let mut services_list = vec![format!("http on {http_addr}")];
    services_list.extend(services.started.iter().cloned());
    tracing::info!("metalcastd serving: {}", services_list.join("; "));

    let (stop_tx, mut stop_rx) = watch::channel(false);
    let mut http_task = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.changed().await;
            })
            .into_future(),
    );
    let outcome = tokio::select! {
        signal = shutdown_signal() => {
            let name = signal?;
            tracing::info!("{name} received, shutting down");
            Ok(())
        }
        failure = services.failure() => Err(anyhow::Error::new(failure)),
        ended = &mut http_task => match ended {
            Ok(Ok(())) => Err(anyhow::anyhow!("the HTTP server stopped")),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("HTTP server failed")),
            Err(e) => Err(anyhow::Error::new(e).context("HTTP server task failed")),
        },
    };
    let _ = stop_tx.send(true);
    if !http_task.is_finished()
        && tokio::time::timeout(HTTP_DRAIN, &mut http_task)
            .await
            .is_err()
    {
        tracing::warn!(
            "HTTP connections still open after {} s; closing them",
            HTTP_DRAIN.as_secs()
        );
        http_task.abort();
    }
    services.shutdown().await;
    tracing::info!("stopped");
    outcome
}

/// Removes events older than `keep` at start and then every hour, so the store does not
/// grow without end on an appliance that runs for years.
async fn prune_events(store: Store, keep: Duration) {
    let mut every = tokio::time::interval(PRUNE_EVENTS_EVERY);
    loop {
        every.tick().await;
        let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
        match store.prune_events(now_ms().saturating_sub(keep_ms)).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(
                removed,
                "removed events older than {} days",
                keep.as_secs() / 86_400
            ),
            Err(e) => {
                tracing::warn!(error = %e, "removing old events failed; trying again in an hour")
            }
        }
    }
}

/// Waits for SIGTERM or SIGINT and names it.
async fn shutdown_signal() -> Result<&'static str> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

async fn create_token(name: &str, path: &Path) -> Result<()> {
    if name.trim().is_empty() || name.len() > MAX_TOKEN_NAME || name.chars().any(char::is_control) {
        bail!("--name must be 1 to {MAX_TOKEN_NAME} printable characters");
    }
    let config = load(path)?;
    let store = Store::open(&config.data_dir)
        .await
        .context("opening the store")?;
    let token = store
        .create_admin_token(name, now_ms())
        .await
        .context("storing the token")?;
    eprintln!("admin token {name:?} created; it is shown only this once:");
    println!("{}", token.as_str());
    Ok(())
}

fn check_config(path: &Path) -> Result<()> {
    let config = load(path)?;
    let warnings = config.check_files().context("checking configured files")?;
    for warning in &warnings {
        eprintln!("warning: {warning}");
    }
    println!("{}: ok", path.display());
    println!("  data_dir   {}", config.data_dir.display());
    println!("  http       {}", config.http_listen);
    println!("  kernel     {}", config.boot.kernel.display());
    println!("  initramfs  {}", config.boot.initramfs.display());
    println!(
        "  tftp       {} (root {})",
        config.tftp.bind,
        config.tftp.root.display()
    );
    match &config.dhcp {
        Some(d) => println!(
            "  dhcp       {} on {}",
            format!("{:?}", d.mode).to_lowercase(),
            d.interfaces.join(", ")
        ),
        None => println!("  dhcp       off"),
    }
    match &config.ra {
        Some(ra) => println!(
            "  ra         on {} every {} s{}",
            ra.interfaces.join(", "),
            ra.interval.as_secs(),
            ra.prefix
                .map(|p| format!(", prefix {p}"))
                .unwrap_or_default()
        ),
        None => println!("  ra         off"),
    }
    Ok(())
}
