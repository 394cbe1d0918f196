//! Run state: what a new leader needs to resume the runs of the old one, and what
//! `medallion runs` / `status` show.
//!
//! [`RunStore`] is the contract; [`EtcdRunStore`] keeps the state in etcd for a cluster and
//! [`MemoryRunStore`] in this process, for unit tests of everything that drives runs.

mod etcd;
mod memory;

pub use etcd::EtcdRunStore;
pub use memory::MemoryRunStore;

use std::future::Future;
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use medallion_proto::{Deployment, RunRecord, TaskRecord};

use medallion_pipeline::report::TableReport;

/// Where the runs of a cluster are kept.
///
/// Writes must be durable when they return: a leader that dies right after resumes from what
/// was written. Callers retry failed writes with [`persist`].
#[async_trait]
pub trait RunStore: Send + Sync {
    /// Waits for the run lock of `pipeline` on `lake` and takes it: one run at a time per
    /// pipeline and lake, whichever coordinator runs it. A lock whose holder died must be
    /// released on its own (a lease that runs out).
    async fn lock_pipeline(&self, pipeline: &str, lake: &str) -> Result<PipelineLock>;
    async fn put_run(&self, record: &RunRecord) -> Result<()>;
    async fn run(&self, run_id: &str) -> Result<Option<RunRecord>>;
    /// Every run, in no particular order.
    async fn runs(&self) -> Result<Vec<RunRecord>>;
    /// Saves a finished table's report, replacing one saved before for the same table.
    async fn put_table(&self, run_id: &str, report: &TableReport) -> Result<()>;
    /// The table reports saved for a run, in no particular order.
    async fn tables(&self, run_id: &str) -> Result<Vec<TableReport>>;
    async fn put_task(&self, run_id: &str, record: &TaskRecord) -> Result<()>;
    /// Forgets a run: its record, table reports and task records.
    async fn delete_run(&self, run_id: &str) -> Result<()>;
    /// Saves a deployed pipeline, and its spec under its version (versions are kept).
    async fn put_deployment(&self, deployment: &Deployment) -> Result<()>;
    /// Every deployed pipeline.
    async fn deployments(&self) -> Result<Vec<Deployment>>;
    async fn delete_deployment(&self, name: &str) -> Result<()>;
    /// Saves `run` and `after` (the deployment with its cursor moved past the run's interval)
    /// in one transaction, if the deployment is still `before`. False when it changed in
    /// the meantime (a deploy, a pause, another leader): nothing is written.
    async fn schedule_run(
        &self,
        before: &Deployment,
        after: &Deployment,
        run: &RunRecord,
    ) -> Result<bool>;
}

/// A pipeline's run lock, released when dropped (see [`RunStore::lock_pipeline`]).
pub struct PipelineLock {
    _guard: Box<dyn Send + Sync>,
}

impl PipelineLock {
    /// A lock held as long as `guard` lives.
    pub fn new(guard: impl Send + Sync + 'static) -> Self {
        Self {
            _guard: Box::new(guard),
        }
    }
}

/// Retries a write until the store takes it: run state must not be lost to an etcd restart.
pub async fn persist<F, Fut>(what: &str, write: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let backoff =
        medallion_cluster::retry::forever(Duration::from_millis(100), Duration::from_secs(2));
    medallion_cluster::retry::until_ok(what, backoff, write).await
}
