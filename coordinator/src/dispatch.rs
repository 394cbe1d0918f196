//! Handing tasks to executors, with retries.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use medallion_lake::StorageOptions;
pub use medallion_pipeline::retry::RetryPolicy;
use medallion_proto::{Failure, Task, TaskError, TaskResult};

/// Something that runs tasks: executors in this process (embedded mode) or over gRPC.
#[async_trait]
pub trait TaskRunner: Send + Sync {
    async fn run(&self, task: Task) -> Result<TaskResult, TaskError>;
}

/// Executors lost under one task before a loss counts as a failed attempt: a task that kills
/// every executor it lands on must not go round for ever.
const MAX_LOST: u32 = 5;

/// Names the directories of a run's dispatches so that no two are the same: not two
/// dispatches of one task, not a task's before and after a commit conflict re-planned its
/// table, not this leader's and those of the leader that ran the run before it (whose
/// executors may still be running, and delete their dispatch's directory when they stop).
#[derive(Debug)]
pub struct DispatchNames {
    /// Which start of the run this is: a leader resuming a run starts it again.
    start: u32,
    dispatched: AtomicU32,
}

impl DispatchNames {
    /// The names of the `start`-th start of a run (1: the first).
    pub fn new(start: u32) -> Self {
        Self {
            start,
            dispatched: AtomicU32::new(0),
        }
    }

    fn next(&self, task: &Task) -> String {
        let n = self.dispatched.fetch_add(1, Ordering::Relaxed) + 1;
        task.dispatch_dir(self.start, n)
    }
}

/// How a task ended, after its retries.
#[derive(Debug)]
pub struct Retried {
    pub result: Result<TaskResult, TaskError>,
    /// Attempts it took (a lost executor does not use one up).
    pub attempts: u32,
    /// The directory of each of its dispatches, in order: what a given-up dispatch writes
    /// after all is found there.
    pub dirs: Vec<String>,
}

/// Runs a task until it succeeds, fails permanently or runs out of attempts.
///
/// A lost executor does not use up an attempt (up to [`MAX_LOST`] times). Every dispatch
/// writes into a directory of its own (named by `names`), and the directory of a dispatch
/// that failed or was lost is deleted, so only the successful dispatch's files remain to be
/// committed.
pub async fn run_with_retries(
    runner: &dyn TaskRunner,
    task: Task,
    policy: RetryPolicy,
    names: &DispatchNames,
    storage_options: &StorageOptions,
    on_retry: impl Fn(&Task, &TaskError),
) -> Retried {
    let span = tracing::info_span!("task", task_id = %task.task_id);
    let retried = retry(runner, task, policy, names, storage_options, on_retry);
    tracing::Instrument::instrument(retried, span).await
}

async fn retry(
    runner: &dyn TaskRunner,
    mut task: Task,
    policy: RetryPolicy,
    names: &DispatchNames,
    storage_options: &StorageOptions,
    on_retry: impl Fn(&Task, &TaskError),
) -> Retried {
    let max = policy.max_attempts.max(1);
    let (mut attempt, mut lost, mut dirs) = (1, 0, Vec::new());
    let result = loop {
        task.attempt = attempt;
        task.dispatch_dir = names.next(&task);
        dirs.push(task.dispatch_dir.clone());
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
                tokio::time::sleep(policy.wait_after(attempt)).await;
                attempt += 1;
            }
            Err(e) => {
                crate::metrics::task_failed(e.kind, false);
                break Err(e);
            }
            result => break result,
        }
    };
    Retried {
        result,
        attempts: attempt,
        dirs,
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use medallion_proto::{Failure, Task, TaskError};

    use super::{DispatchNames, MAX_LOST, RetryPolicy, run_with_retries};
    use crate::testing::{FakeRunner, empty_result};

    fn policy(max_attempts: u32, timeout: Duration) -> RetryPolicy {
        crate::testing::quick_retries(max_attempts, timeout)
    }

    fn task(dir: &std::path::Path) -> Task {
        Task {
            run_id: "r".into(),
            task_id: "silver.t#3".into(),
            output_uri: dir.display().to_string(),
            ..Default::default()
        }
    }

    async fn run(runner: &FakeRunner, policy: RetryPolicy) -> (Result<(), TaskError>, u32, usize) {
        let dir = tempfile::tempdir().unwrap();
        let retried = std::sync::Mutex::new(0);
        let names = DispatchNames::new(1);
        let ended = run_with_retries(
            runner,
            task(dir.path()),
            policy,
            &names,
            &Default::default(),
            |_, _| *retried.lock().unwrap() += 1,
        )
        .await;
        let retried = *retried.lock().unwrap();
        (ended.result.map(|_| ()), ended.attempts, retried)
    }

    #[tokio::test]
    async fn a_transient_failure_is_retried_and_counted() {
        let runner = FakeRunner::answering(|t, n| match n {
            1 | 2 => Err(TaskError::transient("connection reset")),
            _ => Ok(empty_result(t)),
        });
        let (result, attempts, retried) = run(&runner, policy(3, Duration::from_secs(60))).await;
        assert!(result.is_ok());
        assert_eq!((attempts, retried), (3, 2));
        let seen: Vec<u32> = runner.calls().iter().map(|t| t.attempt).collect();
        assert_eq!(seen, [1, 2, 3]);
    }

    #[tokio::test]
    async fn attempts_run_out() {
        let runner = FakeRunner::answering(|_, _| Err(TaskError::transient("still down")));
        let (result, attempts, _) = run(&runner, policy(3, Duration::from_secs(60))).await;
        assert_eq!(result.unwrap_err().kind, Failure::Transient);
        assert_eq!((attempts, runner.calls().len()), (3, 3));
    }

    #[tokio::test]
    async fn bad_input_is_not_retried() {
        let runner = FakeRunner::answering(|_, _| Err(TaskError::permanent("cannot cast 'x'")));
        let (result, attempts, retried) = run(&runner, policy(5, Duration::from_secs(60))).await;
        assert_eq!(result.unwrap_err().kind, Failure::Permanent);
        assert_eq!((attempts, retried, runner.calls().len()), (1, 0, 1));
    }

    #[tokio::test]
    async fn a_lost_executor_does_not_use_up_an_attempt() {
        let runner = FakeRunner::answering(|t, n| match n {
            1 | 2 => Err(TaskError::lost("executor killed")),
            _ => Ok(empty_result(t)),
        });
        let (result, attempts, retried) = run(&runner, policy(1, Duration::from_secs(60))).await;
        assert!(result.is_ok());
        assert_eq!((attempts, retried), (1, 2));
        let seen: Vec<u32> = runner.calls().iter().map(|t| t.attempt).collect();
        assert_eq!(seen, [1, 1, 1]);
    }

    #[tokio::test]
    async fn a_task_that_loses_every_executor_fails_in_the_end() {
        let runner = FakeRunner::answering(|_, _| Err(TaskError::lost("executor killed")));
        let (result, attempts, _) = run(&runner, policy(1, Duration::from_secs(60))).await;
        assert_eq!(result.unwrap_err().kind, Failure::Lost);
        assert_eq!((attempts, runner.calls().len()), (1, MAX_LOST as usize + 1));
    }

    #[tokio::test]
    async fn an_attempt_that_runs_out_of_time_fails_for_good() {
        let runner = FakeRunner::gated();
        let (result, attempts, _) = run(&runner, policy(3, Duration::from_millis(50))).await;
        let e = result.unwrap_err();
        assert_eq!((e.kind, attempts), (Failure::Permanent, 1));
        assert!(e.message.contains("timeouts.task"), "{}", e.message);
        assert_eq!(
            runner.abandoned.load(std::sync::atomic::Ordering::SeqCst),
            1
        );
    }

    #[tokio::test]
    async fn each_dispatch_writes_its_own_directory_and_a_failed_ones_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().to_path_buf();
        let runner = FakeRunner::answering(move |t, n| {
            // What the dispatch wrote before it failed (or succeeded).
            let written = out.join(&t.dispatch_dir);
            std::fs::create_dir_all(&written).unwrap();
            std::fs::write(written.join("part-0.parquet"), b"x").unwrap();
            match n {
                1 => Err(TaskError::transient("crashed after writing")),
                _ => Ok(empty_result(t)),
            }
        });
        let names = DispatchNames::new(1);
        let ended = run_with_retries(
            runner.as_ref(),
            task(dir.path()),
            policy(2, Duration::from_secs(60)),
            &names,
            &Default::default(),
            |_, _| {},
        )
        .await;
        assert!(ended.result.is_ok());
        let dirs: Vec<String> = runner
            .calls()
            .iter()
            .map(|t| t.dispatch_dir.clone())
            .collect();
        assert_eq!(dirs, ended.dirs);
        assert_eq!(dirs, ["r-3-1", "r-3-2"]);
        assert!(
            !dir.path().join(&dirs[0]).exists(),
            "the failed dispatch's files are deleted"
        );
        assert!(dir.path().join(&dirs[1]).join("part-0.parquet").exists());
    }

    /// A commit conflict re-plans a table and runs its tasks again; a leader resuming a run
    /// starts it again. Neither reuses a directory name an earlier dispatch (whose executor
    /// may still be running, and deletes its directory when it stops) had.
    #[tokio::test]
    async fn no_two_dispatches_of_a_run_share_a_directory() {
        let runner = FakeRunner::succeeding();
        let dir = tempfile::tempdir().unwrap();
        let mut dirs = Vec::new();
        for start in [1, 2, 3] {
            let names = DispatchNames::new(start);
            // The table's tasks, then the same after a commit conflict.
            for _ in 0..2 {
                let policy = policy(1, Duration::from_secs(60));
                let task = task(dir.path());
                let ended = run_with_retries(
                    runner.as_ref(),
                    task,
                    policy,
                    &names,
                    &Default::default(),
                    |_, _| {},
                )
                .await;
                dirs.extend(ended.dirs);
            }
        }
        let names = ["r-3-1", "r-3-2", "r-3-2-1", "r-3-2-2", "r-3-3-1", "r-3-3-2"];
        assert_eq!(dirs, names);
    }
}
