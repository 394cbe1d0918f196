//! Run state in this process: for unit tests, and for anything that needs runs without a
//! cluster.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use anyhow::{Result, bail};
use async_trait::async_trait;
use medallion_proto::{Deployment, RunRecord, TaskRecord};

use super::{PipelineLock, RunStore};
use medallion_pipeline::report::TableReport;

/// Run state in memory. [`MemoryRunStore::fail_writes`] makes writes fail, as an etcd that is
/// down does.
#[derive(Default)]
pub struct MemoryRunStore {
    state: Mutex<State>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

#[derive(Default)]
struct State {
    runs: BTreeMap<String, RunRecord>,
    tables: BTreeMap<(String, String), TableReport>,
    tasks: BTreeMap<(String, String), TaskRecord>,
    deployments: BTreeMap<String, Deployment>,
    failing_writes: usize,
    writes: usize,
}

impl MemoryRunStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The next `n` writes fail.
    pub fn fail_writes(&self, n: usize) {
        self.state().failing_writes = n;
    }

    /// Writes that succeeded so far.
    pub fn writes(&self) -> usize {
        self.state().writes
    }

    /// The task records saved for a run, by task id.
    pub fn tasks(&self, run_id: &str) -> Vec<TaskRecord> {
        let state = self.state();
        state
            .tasks
            .iter()
            .filter(|((run, _), _)| run == run_id)
            .map(|(_, t)| t.clone())
            .collect()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("memory run store")
    }

    fn write(&self, apply: impl FnOnce(&mut State)) -> Result<()> {
        let mut state = self.state();
        if state.failing_writes > 0 {
            state.failing_writes -= 1;
            bail!("the run store is unavailable");
        }
        state.writes += 1;
        apply(&mut state);
        Ok(())
    }
}

#[async_trait]
impl RunStore for MemoryRunStore {
    async fn lock_pipeline(&self, pipeline: &str, lake: &str) -> Result<PipelineLock> {
        let lock = self
            .locks
            .lock()
            .expect("memory locks")
            .entry(format!("{pipeline}\n{lake}"))
            .or_default()
            .clone();
        Ok(PipelineLock::new(lock.lock_owned().await))
    }

    async fn put_run(&self, record: &RunRecord) -> Result<()> {
        let id = record
            .info
            .as_ref()
            .map(|i| i.run_id.clone())
            .unwrap_or_default();
        self.write(|s| {
            s.runs.insert(id, record.clone());
        })
    }

    async fn run(&self, run_id: &str) -> Result<Option<RunRecord>> {
        Ok(self.state().runs.get(run_id).cloned())
    }

    async fn runs(&self) -> Result<Vec<RunRecord>> {
        Ok(self.state().runs.values().cloned().collect())
    }

    async fn put_table(&self, run_id: &str, report: &TableReport) -> Result<()> {
        let key = (run_id.to_string(), report.table.clone());
        self.write(|s| {
            s.tables.insert(key, report.clone());
        })
    }

    async fn tables(&self, run_id: &str) -> Result<Vec<TableReport>> {
        let state = self.state();
        Ok(state
            .tables
            .iter()
            .filter(|((run, _), _)| run == run_id)
            .map(|(_, t)| t.clone())
            .collect())
    }

    async fn put_task(&self, run_id: &str, record: &TaskRecord) -> Result<()> {
        let key = (run_id.to_string(), record.task_id.clone());
        self.write(|s| {
            s.tasks.insert(key, record.clone());
        })
    }

    async fn delete_run(&self, run_id: &str) -> Result<()> {
        self.write(|s| {
            s.runs.remove(run_id);
            s.tables.retain(|(run, _), _| run != run_id);
            s.tasks.retain(|(run, _), _| run != run_id);
        })
    }

    async fn put_deployment(&self, deployment: &Deployment) -> Result<()> {
        self.write(|s| {
            s.deployments
                .insert(deployment.name.clone(), deployment.clone());
        })
    }

    async fn deployments(&self) -> Result<Vec<Deployment>> {
        Ok(self.state().deployments.values().cloned().collect())
    }

    async fn delete_deployment(&self, name: &str) -> Result<()> {
        self.write(|s| {
            s.deployments.remove(name);
        })
    }

    async fn schedule_run(
        &self,
        before: &Deployment,
        after: &Deployment,
        run: &RunRecord,
    ) -> Result<bool> {
        let mut applied = false;
        self.write(|s| {
            if s.deployments.get(&before.name) == Some(before) {
                s.deployments.insert(after.name.clone(), after.clone());
                let id = run.info.as_ref().map(|i| i.run_id.clone());
                s.runs.insert(id.unwrap_or_default(), run.clone());
                applied = true;
            }
        })?;
        Ok(applied)
    }
}
