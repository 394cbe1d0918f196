//! Embedded mode: coordinator and executors in one process, no etcd.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::execution::runtime_env::RuntimeEnv;
use medallion_coordinator::TaskRunner;
use medallion_executor::Executor;
use medallion_proto::task::Work;
use medallion_proto::{Task, TaskError, TaskResult};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Executors in this process: each task runs on its own tokio task, at most `slots` at once.
pub struct LocalExecutors {
    executor: Executor,
    slots: Arc<Semaphore>,
    total: u32,
}

impl LocalExecutors {
    /// `memory_limit` is shared by all tasks; queries spill to disk beyond it.
    pub fn new(slots: usize, memory_limit: Option<usize>) -> anyhow::Result<Self> {
        let total = slots.max(1);
        Ok(Self {
            executor: Executor::new(memory_limit)?,
            slots: Arc::new(Semaphore::new(total)),
            total: total as u32,
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
        // A gold query already runs on every core (a partition per CPU), so it takes every
        // slot: two at once would gain no CPU and split the memory pool, and each would spill
        // what the other holds (both gold tables of the e-commerce example at 20M orders:
        // 21 s side by side under a 1 GiB pool, 11 s one after the other).
        let permits = match task.work {
            Some(Work::Aggregate(_)) => self.total,
            _ => 1,
        };
        let _slots = self
            .slots
            .acquire_many(permits)
            .await
            .map_err(|e| TaskError::transient(e.to_string()))?;
        // Nothing else runs this task while the run goes on: it is never abandoned.
        let mut result = self.executor.run(task, &CancellationToken::new()).await?;
        result.executor = "local".into();
        Ok(result)
    }
}
