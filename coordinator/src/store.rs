//! Run state in etcd: what a new leader needs to resume the runs of the old one, and what
//! `medallion runs` / `status` show. Layout: `medallion_cluster::etcd`.

use std::time::Duration;

use anyhow::{Context, Result};
use etcd_client::{Client, GetOptions, LockOptions};
use medallion_cluster::{KeptLease, Keys};
use medallion_proto::{RunRecord, TaskRecord};
use prost::Message;

use crate::report::TableReport;

/// A pipeline's run lock in etcd, released when dropped (see [`RunStore::lock_pipeline`]).
pub struct PipelineLock {
    etcd: Client,
    lease: Option<KeptLease>,
}

impl Drop for PipelineLock {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            let etcd = self.etcd.clone();
            // Revoking deletes the lock key now; if it fails, the lease expires on its own.
            tokio::spawn(async move { lease.revoke(&etcd).await });
        }
    }
}

#[derive(Clone)]
pub struct RunStore {
    etcd: Client,
    keys: Keys,
}

impl RunStore {
    pub fn new(etcd: Client, keys: Keys) -> Self {
        Self { etcd, keys }
    }

    /// Waits for the run lock of `pipeline` on `lake` and takes it: across the cluster, one
    /// run at a time per pipeline and lake. The lock lives under a lease of its own (`ttl`
    /// seconds), so a leader that dies releases it when the lease runs out.
    pub async fn lock_pipeline(
        &self,
        pipeline: &str,
        lake: &str,
        ttl: i64,
    ) -> Result<PipelineLock> {
        let lease = KeptLease::grant(&self.etcd, ttl).await?;
        let lock = PipelineLock {
            etcd: self.etcd.clone(),
            lease: Some(lease),
        };
        let id = lock.lease.as_ref().map_or(0, KeptLease::id);
        self.etcd
            .clone()
            .lock(
                self.keys.run_lock(pipeline, lake),
                Some(LockOptions::new().with_lease(id)),
            )
            .await
            .with_context(|| format!("taking the run lock of pipeline '{pipeline}' in etcd"))?;
        Ok(lock)
    }

    pub async fn put_run(&self, record: &RunRecord) -> Result<()> {
        let id = record.info.as_ref().map_or("", |i| i.run_id.as_str());
        self.etcd
            .clone()
            .put(self.keys.run(id), record.encode_to_vec(), None)
            .await
            .with_context(|| format!("saving run {id} in etcd"))?;
        Ok(())
    }

    pub async fn run(&self, run_id: &str) -> Result<Option<RunRecord>> {
        let got = self.etcd.clone().get(self.keys.run(run_id), None).await?;
        got.kvs()
            .first()
            .map(|kv| RunRecord::decode(kv.value()).context("unreadable run record"))
            .transpose()
    }

    pub async fn runs(&self) -> Result<Vec<RunRecord>> {
        let got = self
            .etcd
            .clone()
            .get(self.keys.runs(), Some(GetOptions::new().with_prefix()))
            .await?;
        Ok(got
            .kvs()
            .iter()
            .filter_map(|kv| RunRecord::decode(kv.value()).ok())
            .collect())
    }

    pub async fn put_table(&self, run_id: &str, report: &TableReport) -> Result<()> {
        self.etcd
            .clone()
            .put(
                self.keys.table(run_id, &report.table),
                serde_json::to_vec(report)?,
                None,
            )
            .await?;
        Ok(())
    }

    /// The table reports saved for a run, in no particular order.
    pub async fn tables(&self, run_id: &str) -> Result<Vec<TableReport>> {
        let got = self
            .etcd
            .clone()
            .get(
                self.keys.tables(run_id),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        Ok(got
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect())
    }

    pub async fn put_task(&self, run_id: &str, record: &TaskRecord) -> Result<()> {
        self.etcd
            .clone()
            .put(
                self.keys.task(run_id, &record.task_id),
                record.encode_to_vec(),
                None,
            )
            .await?;
        Ok(())
    }
}

/// Retries a write until etcd takes it: run state must not be lost to an etcd restart.
pub async fn persist<F, Fut>(what: &str, write: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut delay = Duration::from_millis(100);
    let mut warned = false;
    loop {
        match write().await {
            Ok(()) => {
                if warned {
                    tracing::info!(what, "saved in etcd after all");
                }
                return;
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(
                        what,
                        error = format!("{e:#}"),
                        "cannot save in etcd; retrying"
                    );
                    warned = true;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}
