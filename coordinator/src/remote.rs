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
            let queued = metrics::TaskState::enter("queued");
            let slot = self.members.take_slot(avoid.as_deref()).await;
            drop(queued);
            let _running = metrics::TaskState::enter("running");
            let member = slot.member.clone();
            self.last
                .lock()
                .expect("last executors")
                .insert(key.clone(), member.info.id.clone());
            tracing::debug!(task = %task.task_id, attempt = task.attempt, executor = %member.info.id, "task sent");
            let mut client = member.client.clone();
            let answer = tokio::select! {
                answer = client.run_task(task.clone()) => answer,
                _ = member.gone.cancelled() => {
                    return Err(lost(&task, &member.info.id, TaskError::lost("the executor left the cluster")));
                }
            };
            drop(slot);
            return match answer {
                Ok(result) => {
                    self.last.lock().expect("last executors").remove(&key);
                    Ok(result.into_inner())
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
