//! Handing tasks to executors, with retries.

use std::time::Duration;

use async_trait::async_trait;
use medallion_proto::{Task, TaskError, TaskResult};

/// Something that runs tasks: executors in this process (embedded mode) or over gRPC.
#[async_trait]
pub trait TaskRunner: Send + Sync {
    async fn run(&self, task: Task) -> Result<TaskResult, TaskError>;
}

/// How a task is retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub delay: Duration,
}

/// Runs a task until it succeeds, fails permanently or runs out of attempts.
///
/// Returns the result and how many attempts it took. Each attempt writes its own files; only
/// the successful attempt's files are ever committed.
pub async fn run_with_retries(
    runner: &dyn TaskRunner,
    mut task: Task,
    policy: RetryPolicy,
    on_retry: impl Fn(&Task, &TaskError),
) -> (Result<TaskResult, TaskError>, u32) {
    let max = policy.max_attempts.max(1);
    let mut attempt = 1;
    loop {
        task.attempt = attempt;
        match runner.run(task.clone()).await {
            Err(e) if e.retryable && attempt < max => {
                on_retry(&task, &e);
                tokio::time::sleep(policy.delay).await;
                attempt += 1;
            }
            result => return (result, attempt),
        }
    }
}
