//! One run at a time per pipeline and lake.
//!
//! Two runs of a pipeline at once (a cron job overlapping a manual run, two terminals, two
//! coordinators in a split brain) would both find the same new source files. The run lease
//! makes the second one wait or refuse. It is the first line of defence only: bronze commits
//! on the version its ledger was read at (`CommitPlan::Append`), so even writers the lease does
//! not cover (two pipelines sharing a lake) cannot double rows.
//!
//! On a local lake the lease is an OS lock on `<lake>/_medallion/leases/<pipeline>.lock`: the
//! kernel releases it when its process exits or is killed, so a dead run never leaves a stale
//! lease behind. The file names its holder for the message the next run prints. In a cluster
//! the leader also takes an etcd lock per pipeline and lake before the run starts
//! (`runs::Runs`), so a second submit waits its turn there.
//!
//! ```no_run
//! # async fn f(pipeline: &medallion_pipeline::Pipeline) -> anyhow::Result<()> {
//! use medallion_coordinator::lease::RunLease;
//! let lease = RunLease::acquire(pipeline, "run-1", false).await?; // Err(LeaseHeld) if busy
//! // ... run ...
//! drop(lease);
//! # Ok(()) }
//! ```

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::Utc;
use medallion_pipeline::Pipeline;
use serde::{Deserialize, Serialize};

/// How often a waiting run looks at the lease again.
const POLL: Duration = Duration::from_millis(250);

/// Who holds a run lease, as written in the lease file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Holder {
    pub run_id: String,
    pub host: String,
    pub pid: u32,
    /// When the lease was taken (RFC 3339, UTC).
    pub since: String,
}

/// Another run holds the pipeline's lease.
#[derive(Debug)]
pub struct LeaseHeld {
    pub pipeline: String,
    pub lake: String,
    pub holder: Option<Holder>,
}

impl std::fmt::Display for LeaseHeld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pipeline '{}' is already running on lake {}",
            self.pipeline, self.lake
        )?;
        if let Some(h) = &self.holder {
            write!(
                f,
                ": run {} (pid {} on {}, since {})",
                h.run_id, h.pid, h.host, h.since
            )?;
        }
        write!(f, "; wait for it to end, or run with --wait")
    }
}

impl std::error::Error for LeaseHeld {}

/// A held run lease; dropping it releases it.
#[derive(Debug)]
pub struct RunLease {
    /// The locked lease file (`None` on object storage, see [`RunLease::acquire`]).
    file: Option<File>,
}

impl RunLease {
    /// Whether this lease keeps every other run of the pipeline out (a local lake); on
    /// object storage it is only a name.
    pub fn is_exclusive(&self) -> bool {
        self.file.is_some()
    }

    /// Takes the run lease of `pipeline` for `run_id`. Without `wait`, a lease another run
    /// holds is an error that downcasts to [`LeaseHeld`]; with it, this waits its turn.
    ///
    /// Lakes on object storage have no lock this can take yet: the run goes ahead with a
    /// warning, protected from doubling rows by bronze's commit check alone.
    pub async fn acquire(pipeline: &Pipeline, run_id: &str, wait: bool) -> Result<RunLease> {
        let Some(path) = lease_path(pipeline) else {
            tracing::warn!(
                lake = pipeline.lake_root,
                "no run lease on an object storage lake: runs of this pipeline are not kept apart"
            );
            return Ok(RunLease { file: None });
        };
        let mut waited = false;
        let mut unnamed = 0;
        loop {
            match try_lock(&path, run_id)? {
                Ok(file) => return Ok(RunLease { file: Some(file) }),
                // The holder may not have written its name yet: look again, to name it.
                Err(None) if !wait && unnamed < 3 => {
                    unnamed += 1;
                    tokio::time::sleep(POLL).await;
                }
                Err(holder) if !wait => {
                    return Err(LeaseHeld {
                        pipeline: pipeline.name().to_string(),
                        lake: pipeline.lake_root.clone(),
                        holder,
                    }
                    .into());
                }
                Err(holder) => {
                    if !waited {
                        tracing::info!(
                            holder = holder.map(|h| h.run_id).unwrap_or_default(),
                            "another run of the pipeline holds the lease; waiting"
                        );
                        waited = true;
                    }
                    tokio::time::sleep(POLL).await;
                }
            }
        }
    }
}

/// `<lake>/_medallion/leases/<pipeline>.lock` for a local lake.
fn lease_path(pipeline: &Pipeline) -> Option<PathBuf> {
    let root = medallion_lake::local_dir(&pipeline.lake_root)?;
    Some(
        root.join("_medallion")
            .join("leases")
            .join(format!("{}.lock", pipeline.name())),
    )
}

/// Locks the lease file and writes `run_id` into it as the holder; `Ok(Err(holder))` when
/// another process holds it.
fn try_lock(path: &std::path::Path, run_id: &str) -> Result<Result<File, Option<Holder>>> {
    let dir = path.parent().context("lease file has a directory")?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the lease directory {}", dir.display()))?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("cannot open the run lease {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Ok(Err(serde_json::from_str(&text).ok()));
        }
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock the run lease {}", path.display()));
        }
    }
    let holder = Holder {
        run_id: run_id.to_string(),
        host: medallion_cluster::hostname().unwrap_or_default(),
        pid: std::process::id(),
        since: Utc::now().to_rfc3339(),
    };
    file.set_len(0)?;
    file.rewind()?;
    file.write_all(serde_json::to_string(&holder)?.as_bytes())?;
    file.flush()?;
    Ok(Ok(file))
}
