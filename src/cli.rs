//! The `switchboard` command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{self, Settings};
use crate::db;
use crate::startup::{shutdown_signal, Application};

#[derive(Debug, Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Actor-based message-processing engine for chatbots"
)]
pub struct Cli {
    /// Configuration file (TOML). Keys can be overridden with SWITCHBOARD__SECTION__KEY.
    #[arg(long, global = true, default_value = "config.toml")]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the engine (embedded PostgreSQL unless database.url is set) until SIGTERM/SIGINT.
    Serve,
    /// Apply, revert or list database migrations.
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
    },
    /// Drive a server with a load scenario and check the invariants after.
    Load(Box<crate::load::LoadArgs>),
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum MigrateAction {
    /// Apply every pending migration.
    Run,
    /// Revert the newest applied migration.
    Revert,
    /// List migrations and whether each is applied.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Print the effective configuration (secrets redacted); non-zero exit on errors.
    Check,
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // An explicitly named file must exist; the default may be absent (defaults apply).
    let required = cli.config != std::path::Path::new("config.toml");
    let loaded = config::load(&cli.config, required)?;
    match cli.command {
        Command::Config {
            action: ConfigAction::Check,
        } => {
            let source = match &loaded.file {
                Some(f) => f.display().to_string(),
                None => "built-in defaults (no file)".into(),
            };
            println!("# configuration OK — from {source}");
            if !loaded.env_keys.is_empty() {
                println!("# overridden by the environment: {}", loaded.env_keys.join(", "));
            }
            print!("{}", config::render_redacted(&loaded.settings));
            Ok(())
        }
        Command::Serve => serve(loaded.settings).await,
        Command::Load(args) => load(loaded.settings, *args).await,
        Command::Migrate { action } => migrate(loaded.settings, action).await,
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    // The exporter's client blocks: built (and stopped) off the runtime.
    let telemetry = settings.telemetry.clone();
    let exporter = tokio::task::spawn_blocking(move || crate::telemetry::Exporter::build(&telemetry))
        .await?
        .context("starting the trace exporter")?;
    crate::telemetry::install(&settings.log, exporter.as_ref());
    let app = Application::build(settings).await.context("starting switchboard")?;
    let stopped = app.run_until_stopped(shutdown_signal()).await;
    if let Some(exporter) = exporter {
        // The spans of the last work go out before the process ends.
        tokio::task::spawn_blocking(move || exporter.shutdown()).await?;
    }
    stopped.context("stopping switchboard")?;
    Ok(())
}

async fn load(settings: Settings, args: crate::load::LoadArgs) -> anyhow::Result<()> {
    // The harness talks to the server; only warnings of its own server show.
    let mut log = settings.log.clone();
    log.level = "warn".into();
    crate::telemetry::init(&log);
    let mut args = args;
    args.server_settings = settings.database.embedded.server_settings.clone();
    args.outbox_sends = Some((settings.outbox.batch, settings.outbox.concurrency));
    // Ctrl-C (or SIGTERM) tears the harness's own servers and database down.
    let report = crate::load::run_until(args, shutdown_signal()).await?;
    print!("{}", report.table());
    if !report.invariant_violations.is_empty() {
        anyhow::bail!("{} invariant(s) violated", report.invariant_violations.len());
    }
    Ok(())
}

async fn migrate(settings: Settings, action: MigrateAction) -> anyhow::Result<()> {
    crate::telemetry::init(&settings.log);
    // With the embedded database, `open` starts the cluster and applies
    // pending migrations; with a URL nothing is applied until asked.
    let (url, handle) = match &settings.database.url {
        Some(url) => (url.clone(), None),
        None => {
            let s = settings.database.embedded.clone();
            let pg = tokio::task::spawn_blocking(move || db::EmbeddedPostgres::start(&s, &[])).await??;
            db::create_database_if_missing(pg.url_for("postgres").expose(), db::embedded::DATABASE).await?;
            (pg.url(), Some(pg))
        }
    };
    let result = match action {
        MigrateAction::Run => db::migrations::run_pending(url.expose()).await.map(|applied| {
            if applied.is_empty() {
                println!("no pending migrations");
            }
            for v in applied {
                println!("applied {v}");
            }
        }),
        MigrateAction::Revert => db::migrations::revert_last(url.expose())
            .await
            .map(|v| println!("reverted {v}")),
        MigrateAction::Status => db::migrations::status(url.expose()).await.map(|all| {
            for m in all {
                println!("{} {}", if m.applied { "[x]" } else { "[ ]" }, m.version);
            }
        }),
    };
    if let Some(mut pg) = handle {
        tokio::task::spawn_blocking(move || pg.stop()).await??;
    }
    Ok(result?)
}
