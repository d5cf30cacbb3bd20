//! What a run drives: the harness's own server, its `serve` processes, or
//! the `--target` servers; started before the sending, stopped after it,
//! and stopped by their guards however the run ends.

use std::time::Duration;

use super::args::{LoadArgs, Route};
use super::client::Target;
use super::fake_graph::FakeGraph;
use super::own_server::OwnServer;
use super::procs::Processes;
use super::run_dir::RunDir;
use crate::config::Secret;

/// The servers of one run, and what stops them.
pub(super) enum Servers {
    /// No `--target`, one process: inside this process.
    Own(OwnServer),
    /// No `--target`, several processes or a fault: `serve` children on one
    /// embedded database. `procs` is declared first so it is dropped first:
    /// the cluster stops before its folder goes. Boxed: the larger variant.
    Processes { procs: Box<Processes>, dir: RunDir },
    /// `--target`: running elsewhere, nothing to start or stop.
    Elsewhere,
}

impl Servers {
    /// Starts what the flags ask for; returns once it answers.
    pub(super) async fn start(args: &LoadArgs) -> anyhow::Result<Self> {
        if args.target.is_some() {
            return Ok(Self::Elsewhere);
        }
        if !args.wants_processes() {
            return Ok(Self::Own(OwnServer::start(args).await?));
        }
        let dir = RunDir::create()?;
        let bin = match &args.serve_bin {
            Some(b) => b.clone(),
            None => std::env::current_exe()?,
        };
        let procs = Processes::start(
            args.processes.max(1),
            &bin,
            args.scenario,
            args.numbers as usize,
            args.send_rate,
            dir.path(),
            super::procs::Cluster {
                server_settings: &args.cluster_settings(),
                via_proxy: args.db_path_faults(),
                in_namespace: args.db_black_hole_at.is_some(),
                // Short, so a killed process's claims return soon; on a slow
                // path, long enough for a commit's few round trips.
                outbox_lease_ms: args.db_delay_ms.map_or(3_000, |d| (d.max * 40).max(3_000)),
            },
        )
        .await?;
        procs
            .graph
            .set_latency_range(args.send_latency_ms.min(), args.send_latency_ms.max());
        Ok(Self::Processes {
            procs: Box::new(procs),
            dir,
        })
    }

    /// Where the requests go, and the credentials they carry.
    pub(super) fn target(&self, args: &LoadArgs) -> Target {
        match self {
            Self::Own(o) => Target {
                bases: vec![o.base.clone()],
                app_secret: Some(o.app_secret.clone()),
                api_token: None,
                by_phone: false,
            },
            Self::Processes { procs, .. } => Target {
                bases: procs.bases(),
                app_secret: Some(procs.app_secret.clone()),
                api_token: None,
                by_phone: args.route == Route::Phone,
            },
            Self::Elsewhere => Target {
                bases: args.target_bases(),
                app_secret: args.app_secret.clone().map(Secret::new),
                api_token: args.api_token.clone().map(Secret::new),
                by_phone: args.route == Route::Phone,
            },
        }
    }

    /// The report's name for them.
    pub(super) fn describe(&self, args: &LoadArgs, target: &Target) -> String {
        match self {
            Self::Own(_) => "own server (embedded PostgreSQL)".into(),
            Self::Processes { .. } => format!(
                "{} serve processes, {} routing (embedded PostgreSQL)",
                target.bases.len(),
                if target.by_phone { "by-phone" } else { "random" }
            ),
            Self::Elsewhere => args.target.clone().unwrap_or_default(),
        }
    }

    /// The processes, for the faults (none but with processes).
    pub(super) fn processes_mut(&mut self) -> Option<&mut Processes> {
        match self {
            Self::Processes { procs, .. } => Some(procs),
            _ => None,
        }
    }

    /// The database to check the invariants on: the harness's own, or
    /// `--database-url` with `--target`.
    pub(super) fn database_url(&self, args: &LoadArgs) -> Option<String> {
        match self {
            Self::Own(o) => Some(o.db_url.expose().to_string()),
            Self::Processes { procs, .. } => Some(procs.db.url().expose().to_string()),
            Self::Elsewhere => args.database_url.clone(),
        }
    }

    /// Where the run's costs are read from (see `cost`).
    pub(super) fn cost_sources(&self) -> super::cost::Sources {
        match self {
            Self::Own(o) => super::cost::Sources {
                server_pids: Vec::new(),
                pg_data_dir: Some(o.data_dir()),
                in_process: true,
            },
            Self::Processes { procs, .. } => super::cost::Sources {
                server_pids: procs.pids(),
                pg_data_dir: Some(procs.data_dir()),
                in_process: false,
            },
            Self::Elsewhere => super::cost::Sources::default(),
        }
    }

    /// The fake send API the replies went to (none with `--target`).
    pub(super) fn graph(&self) -> Option<&FakeGraph> {
        match self {
            Self::Own(o) => Some(&o.graph),
            Self::Processes { procs, .. } => Some(&procs.graph),
            Self::Elsewhere => None,
        }
    }

    /// Waits, at most `limit` a step, until every message accepted is
    /// applied and every reply sent; `false` when not (or not known:
    /// `--target`).
    pub(super) async fn drain(&self, limit: Duration) -> bool {
        match self {
            Self::Own(o) => o.drain(limit).await,
            Self::Processes { procs, .. } => procs.drain(limit).await,
            Self::Elsewhere => false,
        }
    }

    /// Stops them in order (servers, then database, then folder).
    pub(super) async fn stop(self) {
        match self {
            Self::Own(own) => own.stop().await,
            Self::Processes { procs, dir } => {
                procs.stop().await;
                drop(dir);
            }
            Self::Elsewhere => {}
        }
    }
}
