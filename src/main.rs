//! The `wearlink` command: `serve`, `migrate`, `project create`, `token create`, `token revoke`.
//! Every command reads the same `WEARLINK_*` environment, so all act on the same database.

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use wearlink::store::Role;
use wearlink::{projects, Config, Services};

/// glibc's malloc took a sixth of the server's CPU under load (many small, short-lived
/// allocations across threads); mimalloc does the same work in a fraction of it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "wearlink", version, about = "Wearable-connection gateway for FHIR health platforms")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service (migrations are applied first).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Projects: `project create NAME` prints {"projectId", "adminToken"}.
    Project {
        #[command(subcommand)]
        command: ProjectCommand,
    },
    /// API tokens: `token create --project ID --role admin|member` prints {"projectId", "role", "token"};
    /// `token revoke` revokes the token given on stdin.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum ProjectCommand {
    Create { name: String },
}

#[derive(Subcommand)]
enum TokenCommand {
    Create {
        #[arg(long)]
        project: String,
        #[arg(long, value_enum, default_value = "member")]
        role: RoleArg,
    },
    /// Revokes the token read from stdin (not an argument: it would show in the process list and
    /// the shell's history); prints {"revoked": true|false}.
    Revoke,
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Admin,
    Member,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::from_env()?;
    init_tracing(config.log_json, matches!(cli.command, Command::Serve));
    match cli.command {
        Command::Serve => serve(config).await,
        Command::Migrate => {
            Services::start(config).await?;
            eprintln!("migrations applied");
            Ok(())
        }
        Command::Project { command: ProjectCommand::Create { name } } => {
            let services = Services::start(config).await?;
            let (project_id, admin_token) = projects::create_project(&services, &name).await?;
            println!("{}", serde_json::json!({ "projectId": project_id, "adminToken": admin_token }));
            Ok(())
        }
        Command::Token { command: TokenCommand::Create { project, role } } => {
            let services = Services::start(config).await?;
            let role = match role {
                RoleArg::Admin => Role::Admin,
                RoleArg::Member => Role::Member,
            };
            let token = projects::create_token(&services, &project, role).await?;
            println!("{}", serde_json::json!({ "projectId": project, "role": role.as_str(), "token": token }));
            Ok(())
        }
        Command::Token { command: TokenCommand::Revoke } => {
            let mut token = String::new();
            std::io::stdin().read_line(&mut token)?;
            let services = Services::start(config).await?;
            let revoked = projects::revoke_token(&services, token.trim()).await?;
            println!("{}", serde_json::json!({ "revoked": revoked }));
            Ok(())
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let bind = config.bind;
    let services = Services::start(config).await?;
    services.spawn_state_sweeper(Duration::from_secs(60));
    services.spawn_every(Duration::from_secs(600), |services| async move {
        if let Err(e) = wearlink::connect_sessions::sweep(&services).await {
            tracing::warn!(error = %e, "sweeping ended connect sessions failed");
        }
    });
    // Webhook subscriptions that expire (Oura's) are renewed a day ahead; hourly passes leave
    // room for a provider outage. Renewing is idempotent at the provider, so two instances
    // renewing the same subscription in one pass cost a call, not a subscription.
    services.spawn_every(Duration::from_secs(3600), |services| async move {
        match wearlink::webhooks::renew_subscriptions(&services, Duration::from_secs(24 * 3600)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(renewed = n, "webhook subscriptions renewed"),
            Err(e) => tracing::warn!(error = %e, "renewing webhook subscriptions failed"),
        }
    });
    if services.config.retention.is_some() {
        services.spawn_every(Duration::from_secs(3600), |services| async move {
            match services.prune_finished(wearlink::time::now_ms()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(pruned = n, "records of finished work past the retention deleted"),
                Err(e) => tracing::warn!(error = %e, "pruning finished work failed"),
            }
        });
    }
    wearlink::connections::spawn_workers(&services, services.config.refresh_interval);
    // The job queue's worker: webhook events, backfills, resyncs and reconciliation in one lane,
    // deliveries of outbound events in another.
    let worker = wearlink::sync::spawn_worker(&services);

    // SIGTERM (an orchestrator stopping the instance) or Ctrl-C: both listeners stop accepting
    // at once and finish the requests they have; see `stop`.
    let (stopping, stop_signal) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stopping.send(true);
    });
    let signalled = |mut signal: watch::Receiver<bool>| async move {
        let _ = signal.wait_for(|stopping| *stopping).await;
    };
    let mut metrics_server = None;
    if let Some(metrics_bind) = services.config.metrics_bind {
        let listener = tokio::net::TcpListener::bind(metrics_bind).await?;
        tracing::info!(address = %listener.local_addr()?, "metrics listening");
        let router = wearlink::http::metrics_router(Arc::clone(&services));
        let served = axum::serve(listener, router).with_graceful_shutdown(signalled(stop_signal.clone()));
        metrics_server = Some(tokio::spawn(served.into_future()));
    }
    let listener = tokio::net::TcpListener::bind(bind).await?;
    tracing::info!(address = %listener.local_addr()?, base_url = %services.config.base_url, "wearlink listening");
    let served = axum::serve(listener, wearlink::http::router(Arc::clone(&services)))
        .with_graceful_shutdown(signalled(stop_signal.clone()));
    let mut server = tokio::spawn(served.into_future());
    // Biased: once the signal is in, the listener ends too (its drain may already be done).
    let draining = tokio::select! {
        biased;
        () = signalled(stop_signal.clone()) => Some(server),
        ended = &mut server => {
            ended??;
            if !*stop_signal.borrow() {
                anyhow::bail!("the listener stopped by itself");
            }
            None
        }
    };
    stop(&services, draining, metrics_server, worker).await;
    Ok(())
}

/// The rest of a graceful shutdown, bounded by `WEARLINK_SHUTDOWN_GRACE_SECS` (well inside
/// Kubernetes' default 30 s grace period): requests in flight are answered (each webhook's 200
/// only after its group commit, `batch.rs`, so what was acknowledged is stored), the worker
/// claims nothing more and lets its running jobs finish, periodic passes (token refresh) finish
/// and start no more, then whatever is still running is cut
/// and every job lease of this instance released, so another instance takes those jobs at once.
/// A request cut here was never acknowledged: its sender tries again.
async fn stop(
    services: &Services,
    server: Option<JoinHandle<std::io::Result<()>>>,
    metrics_server: Option<JoinHandle<std::io::Result<()>>>,
    worker: wearlink::sync::Worker,
) {
    let grace = services.config.shutdown_grace;
    tracing::info!(grace_secs = grace.as_secs_f64(), "stopping: finishing requests and running jobs");
    let deadline = tokio::time::Instant::now() + grace;
    let drained = async {
        if let Some(mut server) = server {
            if tokio::time::timeout_at(deadline, &mut server).await.is_err() {
                tracing::warn!("stopping: requests still in flight at the end of the grace period are cut");
                server.abort();
            }
        }
        if let Some(metrics) = metrics_server {
            let _ = tokio::time::timeout_at(deadline, metrics).await;
        }
    };
    // The periodic passes too: a refresh cut between the provider's answer and its write would
    // lose the rotated refresh token.
    let passes = async {
        if !services.stop_passes(deadline).await {
            tracing::warn!("stopping: periodic passes (refresh, revocation, sweeps) still running are cut");
        }
    };
    let (_, released, ()) = tokio::join!(drained, worker.stop(deadline), passes);
    match released {
        Ok(released) => tracing::info!(released, "stopped; job leases released"),
        Err(e) => tracing::warn!(error = %e, "stopped; releasing job leases failed, they run out instead"),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            term.recv().await;
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
}

/// Logs go to stderr so CLI commands keep stdout for their JSON; a server's JSON log goes to
/// stdout, one object a line, where container runtimes and log collectors expect it.
fn init_tracing(json: bool, serving: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json && serving {
        builder.json().with_writer(std::io::stdout).init();
    } else if json {
        builder.json().with_writer(std::io::stderr).init();
    } else {
        // Colours only on a terminal: redirected to a file or a collector, escape codes are noise.
        builder.with_writer(std::io::stderr).with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init();
    }
}
