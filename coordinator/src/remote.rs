//! Tasks run by executors in other processes, over gRPC.
//!
//! A task goes to the registered executor with the most free slots (another one than its
//! previous attempt's when there is a choice). If the executor leaves the cluster or the call
//! breaks off, the task fails as `Lost`, and dispatch sends it again without counting an
//! attempt: losing an executor loses time, never data, since only the coordinator commits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use medallion_proto::{Failure, Task, TaskError, TaskResult};
use tonic::Code;

use crate::dispatch::TaskRunner;
use crate::membership::Members;
use crate::metrics;

/// The cluster's executors as a [`TaskRunner`].
pub struct RemoteExecutors {
    members: Arc<Members>,
    /// Executor of each task's last attempt ("run/task" -> executor id).
    last: Mutex<HashMap<String, String>>,
}

impl RemoteExecutors {
    pub fn new(members: Arc<Members>) -> Self {
        Self {
            members,
            last: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl TaskRunner for RemoteExecutors {
    async fn run(&self, task: Task) -> Result<TaskResult, TaskError> {
        let key = format!("{}/{}", task.run_id, task.task_id);
        loop {
            let avoid = self.last.lock().expect("last executors").get(&key).cloned();
            let queued = metrics::TaskPhase::Queued.enter();
            let slot = self.members.take_slot(avoid.as_deref()).await;
            drop(queued);
            let _running = metrics::TaskPhase::Running.enter();
            let member = slot.member.clone();
            self.last
                .lock()
                .expect("last executors")
                .insert(key.clone(), member.info.id.clone());
            tracing::debug!(task = %task.task_id, attempt = task.attempt, executor = %member.info.id, "task sent");
            let answer = tokio::select! {
                answer = member.link.run_task(task.clone()) => answer,
                _ = member.gone.cancelled() => {
                    return Err(lost(&task, &member.info.id, TaskError::lost("the executor left the cluster")));
                }
            };
            drop(slot);
            return match answer {
                Ok(mut result) => {
                    self.last.lock().expect("last executors").remove(&key);
                    result.executor = member.info.id.clone();
                    Ok(result)
                }
                // Busy with tasks of a previous leader: not a dispatch, nothing was written.
                Err(status) if status.code() == Code::ResourceExhausted => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(status) => match TaskError::from_status(&status) {
                    e if e.kind == Failure::Lost => Err(lost(&task, &member.info.id, e)),
                    e => Err(e),
                },
            };
        }
    }
}

fn lost(task: &Task, executor: &str, error: TaskError) -> TaskError {
    tracing::warn!(run_id = %task.run_id, task = %task.task_id, executor, error = %error, "executor lost under a running task");
    error
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;
    use medallion_proto::{ExecutorInfo, Failure, Task, TaskResult};
    use tonic::Status;

    use super::RemoteExecutors;
    use crate::dispatch::{DispatchNames, RetryPolicy, run_with_retries};
    use crate::membership::{ExecutorLink, Members};

    type Answer = dyn Fn(&str, usize) -> Result<TaskResult, Status> + Send + Sync;

    /// Executors in this process: `answer(executor id, call number)` is what each call gets;
    /// `hang` executors never answer. Every call is logged as (executor, attempt).
    struct Cluster {
        members: Arc<Members>,
        log: Arc<std::sync::Mutex<Vec<(String, u32)>>>,
    }

    struct FakeLink {
        id: String,
        answer: Arc<Answer>,
        hang: bool,
        log: Arc<std::sync::Mutex<Vec<(String, u32)>>>,
    }

    #[async_trait]
    impl ExecutorLink for FakeLink {
        async fn run_task(&self, task: Task) -> Result<TaskResult, Status> {
            let n = {
                let mut log = self.log.lock().unwrap();
                log.push((self.id.clone(), task.attempt));
                log.len()
            };
            if self.hang {
                futures::future::pending::<()>().await;
            }
            (self.answer)(&self.id, n)
        }
    }

    fn cluster(
        executors: &[(&str, u32)],
        hang: &[&str],
        answer: impl Fn(&str, usize) -> Result<TaskResult, Status> + Send + Sync + 'static,
    ) -> Cluster {
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let answer: Arc<Answer> = Arc::new(answer);
        let hang: Vec<String> = hang.iter().map(|s| s.to_string()).collect();
        let links_log = log.clone();
        let members = Members::with_links(move |info| {
            Ok(Arc::new(FakeLink {
                id: info.id.clone(),
                answer: answer.clone(),
                hang: hang.contains(&info.id),
                log: links_log.clone(),
            }) as Arc<dyn ExecutorLink>)
        });
        for (id, slots) in executors {
            members.join(info(id, *slots));
        }
        Cluster { members, log }
    }

    fn info(id: &str, slots: u32) -> ExecutorInfo {
        ExecutorInfo {
            id: id.into(),
            address: format!("http://{id}.invalid:1"),
            slots,
            started_ms: 0,
            memory_limit: 0,
        }
    }

    fn task(dir: &std::path::Path) -> Task {
        Task {
            run_id: "r".into(),
            task_id: "bronze.t#0".into(),
            output_uri: dir.display().to_string(),
            ..Default::default()
        }
    }

    fn policy(max_attempts: u32) -> RetryPolicy {
        crate::testing::quick_retries(max_attempts, Duration::from_secs(60))
    }

    impl Cluster {
        fn log(&self) -> Vec<(String, u32)> {
            self.log.lock().unwrap().clone()
        }

        async fn run(
            &self,
            max_attempts: u32,
        ) -> (Result<TaskResult, medallion_proto::TaskError>, u32) {
            let dir = tempfile::tempdir().unwrap();
            let runner = RemoteExecutors::new(self.members.clone());
            let (names, options) = (DispatchNames::new(1), Default::default());
            let run = run_with_retries(
                &runner,
                task(dir.path()),
                policy(max_attempts),
                &names,
                &options,
                |_, _| {},
            );
            let ended = tokio::time::timeout(Duration::from_secs(60), run)
                .await
                .expect("the task ends");
            (ended.result, ended.attempts)
        }
    }

    #[tokio::test]
    async fn a_task_goes_to_the_executor_with_most_free_slots() {
        let c = cluster(&[("a", 1), ("b", 4)], &[], |_, _| Ok(TaskResult::default()));
        let (result, attempts) = c.run(3).await;
        assert!(result.is_ok());
        assert_eq!(attempts, 1);
        assert_eq!(c.log(), [("b".to_string(), 1)]);
    }

    #[tokio::test]
    async fn a_failed_attempt_is_sent_to_another_executor() {
        let c = cluster(&[("a", 1), ("b", 4)], &[], |id, _| match id {
            "b" => Err(Status::aborted("disk full")),
            _ => Ok(TaskResult::default()),
        });
        let (result, attempts) = c.run(3).await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(attempts, 2);
        assert_eq!(c.log(), [("b".to_string(), 1), ("a".to_string(), 2)]);
    }

    #[tokio::test]
    async fn with_one_executor_a_failed_attempt_goes_back_to_it() {
        let c = cluster(&[("a", 2)], &[], |_, n| match n {
            1 => Err(Status::aborted("flaky")),
            _ => Ok(TaskResult::default()),
        });
        let (result, attempts) = c.run(3).await;
        assert!(result.is_ok());
        assert_eq!(c.log(), [("a".to_string(), 1), ("a".to_string(), 2)]);
        assert_eq!(attempts, 2);
    }

    #[tokio::test]
    async fn a_task_on_an_executor_that_leaves_is_sent_elsewhere_without_counting_an_attempt() {
        let c = cluster(&[("a", 1), ("b", 4)], &["b"], |_, _| {
            Ok(TaskResult::default())
        });
        let members = c.members.clone();
        let log = c.log.clone();
        tokio::spawn(async move {
            while log.lock().unwrap().is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            members.leave("b");
        });
        let (result, attempts) = c.run(1).await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(attempts, 1, "a lost executor does not use up an attempt");
        assert_eq!(c.log(), [("b".to_string(), 1), ("a".to_string(), 1)]);
    }

    #[tokio::test]
    async fn a_busy_executor_is_asked_again_without_a_dispatch() {
        let c = cluster(&[("a", 1)], &[], |_, n| match n {
            1 | 2 => Err(Status::resource_exhausted("every slot is busy")),
            _ => Ok(TaskResult::default()),
        });
        let (result, attempts) = c.run(1).await;
        assert!(result.is_ok());
        assert_eq!((attempts, c.log().len()), (1, 3));
    }

    #[tokio::test]
    async fn a_task_waits_for_an_executor_to_join() {
        let c = cluster(&[], &[], |_, _| Ok(TaskResult::default()));
        let members = c.members.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            members.join(info("late", 1));
        });
        let (result, _) = c.run(1).await;
        assert!(result.is_ok());
        assert_eq!(c.log(), [("late".to_string(), 1)]);
    }

    #[tokio::test]
    async fn an_executor_answering_bad_input_is_not_asked_again() {
        let c = cluster(&[("a", 1), ("b", 1)], &[], |_, _| {
            Err(Status::failed_precondition("no such column 'x'"))
        });
        let (result, attempts) = c.run(5).await;
        let e = result.unwrap_err();
        assert_eq!(
            (e.kind, attempts, c.log().len()),
            (Failure::Permanent, 1, 1)
        );
        assert!(e.message.contains("no such column"));
    }

    #[tokio::test]
    async fn slots_are_freed_after_each_task() {
        let c = cluster(&[("a", 1)], &[], |_, _| Ok(TaskResult::default()));
        for _ in 0..3 {
            assert!(c.run(1).await.0.is_ok());
        }
        assert_eq!(c.members.list()[0].running(), 0);
        assert_eq!(c.log().len(), 3);
    }
}
