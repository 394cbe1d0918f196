//! The executor's gRPC service: tasks pushed by the leader coordinator, run on this process's
//! slots, with a drain for graceful shutdown.

use std::sync::Arc;

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
}

impl ExecutorService {
    pub fn new(executor: Executor, slots: usize) -> Self {
        let total = slots.max(1) as u32;
        Self {
            executor,
            slots: Arc::new(Semaphore::new(total as usize)),
            total,
            draining: CancellationToken::new(),
        }
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
        let result = self.executor.run(request.into_inner()).await?;
        Ok(Response::new(result))
    }
}
