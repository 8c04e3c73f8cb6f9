//! The `pgshift` binary: command line, logging, runtime, signals.

use clap::Parser;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

use pgshift::cli;
use pgshift::config::{Config, LogFormat};
use pgshift::proxy::Proxy;

/// jemalloc serves the 128-byte-aligned allocations every client holds (its task, its socket's
/// registration) from size classes, where glibc's malloc splits larger chunks: about 0.2 kB less
/// per idle client. A `#[global_allocator]` is a static by Rust's design; it holds no state of ours.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use pgshift::upgrade::listen::Bind;
use pgshift::upgrade::new::Predecessor;
use pgshift::upgrade::old::Handed;
use pgshift::upgrade::spawn::Launch;
use pgshift::upgrade::{sd_notify, UpgradeError};

/// The command line. Its help text is a manual page: see `pgshift::cli` for the sections.
#[derive(Parser, Debug)]
#[command(
    name = "pgshift",
    version,
    about = cli::ABOUT,
    long_about = cli::LONG_ABOUT,
    before_help = cli::BEFORE_HELP,
    after_help = cli::AFTER_HELP,
    after_long_help = cli::AFTER_LONG_HELP,
    help_template = cli::HELP_TEMPLATE,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, short = 'c', default_value = "proxy.toml", value_name = "PATH")]
    config: PathBuf,
    /// Validate the configuration (file + environment) and exit: 0 if valid, 2 listing every problem.
    #[arg(long)]
    check_config: bool,
    /// With --check-config: also print the effective configuration as TOML, secrets redacted.
    #[arg(long, requires = "check_config")]
    print: bool,
    /// Instead of running the proxy: a health check, or a PgBouncer config conversion.
    #[command(subcommand)]
    command: Option<cli::Command>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(command) = cli.command {
        return cli::run(command);
    }
    // Before any thread starts (it edits the environment): a process started by a binary
    // upgrade takes the handover socket it inherited.
    let inherited = match pgshift::upgrade::spawn::take_inherited() {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("pgshift: upgrade: {e}");
            return ExitCode::from(2);
        }
    };
    let launch = Launch::of_this_process();
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgshift: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log.format);
    if cli.check_config {
        if let Err(problems) = pgshift::proxy::check(&config) {
            eprintln!("pgshift: invalid configuration:\n  - {}", problems.join("\n  - "));
            return ExitCode::from(2);
        }
        if cli.print {
            print!("{}", config.redacted_toml());
        }
        eprintln!("pgshift: configuration {} is valid", cli.config.display());
        return ExitCode::SUCCESS;
    }
    let workers = match config.proxy.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // One worker needs no work-stealing scheduler: a current-thread runtime polls every task on
    // the thread that owns its sockets, with no cross-thread wake-ups.
    let mut builder = match workers {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pgshift: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(config, cli.config, launch, inherited))
}

/// Logs to standard error: `PGSHIFT_LOG` (or `RUST_LOG`) filters; colour only on a terminal, so
/// files and log collectors get plain text; `json` writes one object per line.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter =
        std::env::var("PGSHIFT_LOG").or_else(|_| std::env::var("RUST_LOG")).unwrap_or_else(|_| "info".to_string());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
    }
}

/// Starts the proxy: fresh, or taking over from the process that started this one.
async fn start(config: Config, path: PathBuf, inherited: Option<OwnedFd>) -> Result<Arc<Proxy>, String> {
    let predecessor = match inherited {
        Some(fd) => Some(Predecessor::greet(fd).await.map_err(|e| format!("upgrade: {e}"))?),
        None => None,
    };
    let bind = if predecessor.is_some() { Bind::Upgrade } else { Bind::Fresh };
    let proxy = Arc::new(Proxy::start_as(config, Some(path), bind).await.map_err(|e| e.to_string())?);
    if let Some(p) = predecessor {
        // The old process went away meanwhile: it keeps its clients; we serve new ones.
        if let Err(e) = p.ready(&proxy.shared).await {
            tracing::warn!("upgrade: cannot take clients from the old process: {e}");
        }
    }
    sd_notify::ready(bind == Bind::Upgrade);
    Ok(proxy)
}

/// The running upgrade's outcome, or never when none runs.
async fn upgrade_done(task: &mut Option<JoinHandle<Result<Handed, UpgradeError>>>) -> Result<Handed, UpgradeError> {
    match task {
        Some(t) => t.await.unwrap_or(Err(UpgradeError::Closed)),
        None => std::future::pending().await,
    }
}

async fn serve(config: Config, path: PathBuf, launch: Launch, inherited: Option<OwnedFd>) -> ExitCode {
    let shutdown_timeout = config.proxy.shutdown_timeout.0;
    let proxy = match start(config, path, inherited).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pgshift: {e}");
            return ExitCode::from(2);
        }
    };
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut hup), Ok(mut term), Ok(mut int), Ok(mut usr2)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::user_defined2()),
    ) else {
        eprintln!("pgshift: cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    let mut upgrade: Option<JoinHandle<Result<Handed, UpgradeError>>> = None;
    loop {
        tokio::select! {
            _ = usr2.recv() => {
                if upgrade.is_some() {
                    tracing::warn!("SIGUSR2: {}", UpgradeError::InProgress);
                } else {
                    tracing::info!(exe = %launch.exe.display(), "SIGUSR2: binary upgrade: starting the new process");
                    upgrade = Some(tokio::spawn(pgshift::upgrade::old::run(proxy.clone(), launch.clone())));
                }
            }
            done = upgrade_done(&mut upgrade) => {
                upgrade = None;
                match done {
                    Ok(h) => {
                        tracing::info!(handed_over = h.clients, closed = h.closed, "upgrade complete: exiting");
                        proxy.stop().await;
                        proxy.shared.fleet.left(Duration::from_secs(2)).await;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        return ExitCode::SUCCESS;
                    }
                    Err(e) => tracing::error!("upgrade abandoned, this process keeps serving: {e}"),
                }
            }
            _ = hup.recv() => {
                if let Err(problems) = proxy.reload() {
                    tracing::error!("reload refused, the previous configuration stays in force:\n  - {}", problems.join("\n  - "));
                }
            }
            _ = term.recv() => {
                if let Some(u) = upgrade.take() {
                    u.abort();
                    proxy.shared.handover.close();
                }
                tracing::info!("SIGTERM: draining (shutdown_timeout {:?})", shutdown_timeout);
                let clean = proxy.drain(shutdown_timeout).await;
                if !clean {
                    tracing::warn!("shutdown_timeout reached with clients still connected; closing them");
                }
                proxy.stop().await;
                proxy.shared.fleet.left(Duration::from_secs(2)).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                return ExitCode::SUCCESS;
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: exiting now");
                proxy.stop().await;
                return ExitCode::SUCCESS;
            }
        }
    }
}
