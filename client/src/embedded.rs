//! Embedded mode: coordinator and executors in one process, no etcd.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::execution::runtime_env::RuntimeEnv;
use medallion_coordinator::TaskRunner;
use medallion_executor::Executor;
use medallion_proto::{Task, TaskError, TaskResult};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Executors in this process: each task runs on its own tokio task, at most `slots` at once.
pub struct LocalExecutors {
    executor: Executor,
    slots: Arc<Semaphore>,
}

impl LocalExecutors {
    /// `memory_limit` is shared by all tasks; queries spill to disk beyond it.
    pub fn new(slots: usize, memory_limit: Option<usize>) -> anyhow::Result<Self> {
        Ok(Self {
            executor: Executor::new(memory_limit)?,
            slots: Arc::new(Semaphore::new(slots.max(1))),
        })
    }

    /// The runtime the tasks' queries share: the commits' share it too, so the memory limit
    /// bounds the whole process.
    pub fn runtime(&self) -> Arc<RuntimeEnv> {
        self.executor.runtime()
    }

    /// Deletes the spill files of the run's queries (see `Executor::remove_spill_files`).
    pub fn remove_spill_files(&self) {
        self.executor.remove_spill_files();
    }
}

#[async_trait]
impl TaskRunner for LocalExecutors {
    async fn run(&self, task: Task) -> Result<TaskResult, TaskError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|e| TaskError::transient(e.to_string()))?;
        // Nothing else runs this task while the run goes on: it is never abandoned.
        let mut result = self.executor.run(task, &CancellationToken::new()).await?;
        result.executor = "local".into();
        Ok(result)
    }
}
