//! Handing tasks to executors, with retries.

use std::time::Duration;

use async_trait::async_trait;
use medallion_lake::StorageOptions;
use medallion_proto::{Failure, Task, TaskError, TaskResult};

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
    /// How long one attempt may run; one that runs out fails for good (it would again).
    pub timeout: Duration,
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (1-based): the configured delay, doubled for
    /// each further attempt, at most a minute.
    pub fn backoff(&self, attempt: u32) -> Duration {
        (self.delay * 2u32.saturating_pow(attempt.saturating_sub(1))).min(Duration::from_secs(60))
    }
}

/// Executors lost under one task before a loss counts as a failed attempt: a task that kills
/// every executor it lands on must not go round for ever.
const MAX_LOST: u32 = 5;

/// Runs a task until it succeeds, fails permanently or runs out of attempts.
///
/// Returns the result and how many attempts it took. A lost executor does not use up an
/// attempt (up to [`MAX_LOST`] times). Every dispatch writes into its own directory, and the
/// directory of a dispatch that failed or was lost is deleted, so only the successful
/// dispatch's files remain to be committed.
pub async fn run_with_retries(
    runner: &dyn TaskRunner,
    task: Task,
    policy: RetryPolicy,
    storage_options: &StorageOptions,
    on_retry: impl Fn(&Task, &TaskError),
) -> (Result<TaskResult, TaskError>, u32) {
    let span = tracing::info_span!("task", task_id = %task.task_id);
    let retried = retry(runner, task, policy, storage_options, on_retry);
    tracing::Instrument::instrument(retried, span).await
}

async fn retry(
    runner: &dyn TaskRunner,
    mut task: Task,
    policy: RetryPolicy,
    storage_options: &StorageOptions,
    on_retry: impl Fn(&Task, &TaskError),
) -> (Result<TaskResult, TaskError>, u32) {
    let max = policy.max_attempts.max(1);
    let (mut attempt, mut lost, mut dispatches) = (1, 0, 0);
    loop {
        dispatches += 1;
        task.attempt = attempt;
        task.dispatch_dir = task.dispatch_dir(dispatches);
        let result = tokio::time::timeout(policy.timeout, runner.run(task.clone()))
            .await
            .unwrap_or_else(|_| {
                Err(TaskError::permanent(format!(
                    "{}: timed out after {} (timeouts.task)",
                    task.task_id,
                    humantime::format_duration(policy.timeout)
                )))
            });
        if result.is_err() {
            discard_dispatch(&task, storage_options).await;
        }
        match result {
            Err(e) if e.kind == Failure::Lost && lost < MAX_LOST => {
                crate::metrics::task_failed(e.kind, true);
                on_retry(&task, &e);
                lost += 1;
                tokio::time::sleep(Duration::from_millis(200) * lost).await;
            }
            Err(e) if e.retryable() && attempt < max => {
                crate::metrics::task_failed(e.kind, true);
                on_retry(&task, &e);
                tokio::time::sleep(policy.backoff(attempt)).await;
                attempt += 1;
            }
            Err(e) => {
                crate::metrics::task_failed(e.kind, false);
                return (Err(e), attempt);
            }
            result => return (result, attempt),
        }
    }
}

/// Deletes what a failed or lost dispatch wrote (best effort: uncommitted files are invisible
/// to readers either way, and `VACUUM` removes them too).
async fn discard_dispatch(task: &Task, storage_options: &StorageOptions) {
    let uris = [task.output_uri.as_str(), task.quarantine_uri.as_str()];
    if let Err(e) = medallion_lake::delete_dirs(&uris, &task.dispatch_dir, storage_options).await {
        tracing::warn!(task_id = task.task_id, dir = task.dispatch_dir, error = %e, "could not delete the files of a failed task");
    }
}
