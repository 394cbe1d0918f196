//! The executor's gRPC service: tasks pushed by the leader coordinator, run on this process's
//! slots, with a drain for graceful shutdown.

use std::sync::{Arc, Mutex};

use medallion_proto::executor_server::Executor as ExecutorRpc;
use medallion_proto::{Task, TaskResult};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::Executor;

/// Serves `RunTask` with at most `slots` tasks at once.
#[derive(Clone)]
pub struct ExecutorService {
    executor: Executor,
    slots: Arc<Semaphore>,
    total: u32,
    draining: CancellationToken,
    /// Fires for the tasks running when the registration was lost (see [`Self::abandon_running`]).
    abandon: Arc<Mutex<CancellationToken>>,
}

impl ExecutorService {
    pub fn new(executor: Executor, slots: usize) -> Self {
        let total = slots.max(1) as u32;
        Self {
            executor,
            slots: Arc::new(Semaphore::new(total as usize)),
            total,
            draining: CancellationToken::new(),
            abandon: Arc::default(),
        }
    }

    /// Stops the tasks running now and deletes what they wrote. For an executor whose etcd
    /// registration expired: the leader has declared it lost and given its tasks to others,
    /// so going on would only write files nobody commits.
    pub fn abandon_running(&self) {
        let running = std::mem::take(&mut *self.abandon.lock().unwrap_or_else(|e| e.into_inner()));
        running.cancel();
    }

    /// Deletes this process's spill files (see [`Executor::remove_spill_files`]).
    pub fn remove_spill_files(&self) {
        self.executor.remove_spill_files();
    }

    /// Stops taking tasks and resolves once the running ones have finished.
    pub async fn drain(&self) {
        self.draining.cancel();
        let _ = self.slots.acquire_many(self.total).await;
    }

    /// Tasks running now.
    pub fn running(&self) -> usize {
        self.total as usize - self.slots.available_permits()
    }
}

#[tonic::async_trait]
impl ExecutorRpc for ExecutorService {
    async fn run_task(&self, request: Request<Task>) -> Result<Response<TaskResult>, Status> {
        if self.draining.is_cancelled() {
            return Err(Status::unavailable("executor is shutting down"));
        }
        let Ok(_slot) = self.slots.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted(
                "every slot of this executor is busy",
            ));
        };
        let abandon = self
            .abandon
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let result = self.executor.run(request.into_inner(), &abandon).await?;
        Ok(Response::new(result))
    }
}
