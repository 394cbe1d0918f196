//! Run state in etcd, shared by every coordinator of a cluster. Layout:
//! `medallion_cluster::etcd`.

use anyhow::{Context, Result};
use async_trait::async_trait;
use etcd_client::{Client, Compare, CompareOp, DeleteOptions, GetOptions, LockOptions, Txn, TxnOp};
use medallion_cluster::{KeptLease, Keys, Leases};
use medallion_proto::{Deployment, RunRecord, TaskRecord};
use prost::Message;

use super::{PipelineLock, RunStore};
use medallion_pipeline::report::TableReport;

/// A pipeline's run lock in etcd: the lock key lives under a lease of its own.
struct EtcdLock {
    etcd: Client,
    lease: Option<KeptLease>,
}

impl Drop for EtcdLock {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            let etcd = self.etcd.clone();
            // Revoking deletes the lock key now; if it fails, the lease expires on its own.
            tokio::spawn(async move { lease.revoke(&etcd).await });
        }
    }
}

/// Run state in etcd.
pub struct EtcdRunStore {
    etcd: Client,
    leases: Leases,
    keys: Keys,
    /// Seconds a dead leader's run locks outlive it.
    lock_ttl: i64,
}

impl EtcdRunStore {
    pub fn new(etcd: Client, leases: Leases, keys: Keys, lock_ttl: i64) -> Self {
        Self {
            etcd,
            leases,
            keys,
            lock_ttl,
        }
    }
}

#[async_trait]
impl RunStore for EtcdRunStore {
    /// The lock lives under a lease of its own, so a leader that dies releases it when the
    /// lease runs out.
    async fn lock_pipeline(&self, pipeline: &str, lake: &str) -> Result<PipelineLock> {
        let lease = self.leases.grant(self.lock_ttl).await?;
        let lock = EtcdLock {
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
        Ok(PipelineLock::new(lock))
    }

    async fn put_run(&self, record: &RunRecord) -> Result<()> {
        let id = record.info.as_ref().map_or("", |i| i.run_id.as_str());
        self.etcd
            .clone()
            .put(self.keys.run(id), record.encode_to_vec(), None)
            .await
            .with_context(|| format!("saving run {id} in etcd"))?;
        Ok(())
    }

    async fn run(&self, run_id: &str) -> Result<Option<RunRecord>> {
        let got = self.etcd.clone().get(self.keys.run(run_id), None).await?;
        got.kvs()
            .first()
            .map(|kv| RunRecord::decode(kv.value()).context("unreadable run record"))
            .transpose()
    }

    async fn runs(&self) -> Result<Vec<RunRecord>> {
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

    async fn put_table(&self, run_id: &str, report: &TableReport) -> Result<()> {
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

    async fn tables(&self, run_id: &str) -> Result<Vec<TableReport>> {
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

    async fn put_task(&self, run_id: &str, record: &TaskRecord) -> Result<()> {
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

    async fn delete_run(&self, run_id: &str) -> Result<()> {
        let prefix = || Some(DeleteOptions::new().with_prefix());
        let task_prefix = self.keys.task(run_id, "");
        let txn = Txn::new().and_then([
            TxnOp::delete(self.keys.run(run_id), None),
            TxnOp::delete(self.keys.tables(run_id), prefix()),
            TxnOp::delete(task_prefix, prefix()),
        ]);
        self.etcd
            .clone()
            .txn(txn)
            .await
            .with_context(|| format!("forgetting run {run_id} in etcd"))?;
        Ok(())
    }

    async fn put_deployment(&self, deployment: &Deployment) -> Result<()> {
        let name = &deployment.name;
        let spec = deployment.pipeline.clone().unwrap_or_default();
        let txn = Txn::new().and_then([
            TxnOp::put(
                self.keys.spec_version(name, deployment.version),
                spec.encode_to_vec(),
                None,
            ),
            TxnOp::put(self.keys.deployment(name), deployment.encode_to_vec(), None),
        ]);
        self.etcd
            .clone()
            .txn(txn)
            .await
            .with_context(|| format!("saving the deployment of {name} in etcd"))?;
        Ok(())
    }

    async fn deployments(&self) -> Result<Vec<Deployment>> {
        let options = GetOptions::new().with_prefix();
        let got = self
            .etcd
            .clone()
            .get(self.keys.deployments(), Some(options))
            .await?;
        Ok(got
            .kvs()
            .iter()
            .filter_map(|kv| Deployment::decode(kv.value()).ok())
            .collect())
    }

    async fn delete_deployment(&self, name: &str) -> Result<()> {
        self.etcd
            .clone()
            .delete(self.keys.deployment(name), None)
            .await?;
        Ok(())
    }

    /// A compare-and-swap on the deployment's bytes: the cursor and the run land together.
    async fn schedule_run(
        &self,
        before: &Deployment,
        after: &Deployment,
        run: &RunRecord,
    ) -> Result<bool> {
        let key = self.keys.deployment(&before.name);
        let id = run.info.as_ref().map_or("", |i| i.run_id.as_str());
        let txn = Txn::new()
            .when([Compare::value(
                key.clone(),
                CompareOp::Equal,
                before.encode_to_vec(),
            )])
            .and_then([
                TxnOp::put(self.keys.run(id), run.encode_to_vec(), None),
                TxnOp::put(key, after.encode_to_vec(), None),
            ]);
        let done = self
            .etcd
            .clone()
            .txn(txn)
            .await
            .with_context(|| format!("saving scheduled run {id} in etcd"))?;
        Ok(done.succeeded())
    }
}
