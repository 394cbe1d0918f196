//! A fault-injecting stand-in in front of a real executor, as Toxiproxy stands in front of a
//! server: the coordinator calls it as the executor (the executor advertises its address), it
//! forwards `RunTask` to the executor, except the first attempts of chosen tables' tasks, which
//! it answers the way an executor whose storage failed does (`ABORTED`, a transient task
//! failure, retried after the table's retry delay). It records when each attempt arrived, so a
//! test can measure the delays the coordinator kept between attempts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use medallion_proto::executor_client::ExecutorClient;
use medallion_proto::executor_server::{Executor, ExecutorServer};
use medallion_proto::{Task, TaskResult};
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};

use crate::cluster::free_port;

/// One `RunTask` call the stand-in received.
#[derive(Clone, Debug)]
pub struct Call {
    pub task_id: String,
    pub attempt: u32,
    pub at: Instant,
    /// Whether the stand-in failed it instead of forwarding it.
    pub failed: bool,
}

/// The stand-in, serving until dropped.
pub struct FaultyExecutor {
    port: u16,
    calls: Arc<Mutex<Vec<Call>>>,
    executor: Arc<OnceLock<ExecutorClient<Channel>>>,
    runtime: tokio::runtime::Runtime,
}

impl FaultyExecutor {
    /// Serves on a free port, forwarding to the executor named by [`FaultyExecutor::forward_to`].
    /// `failures` maps a table (`bronze.orders`) to how many attempts of each of its tasks
    /// fail before one is forwarded.
    pub fn start(failures: &[(&str, u32)]) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the stand-in executor");
        let calls = Arc::new(Mutex::new(Vec::new()));
        let executor = Arc::new(OnceLock::new());
        let service = Injector {
            executor: executor.clone(),
            failures: failures.iter().map(|(t, n)| (t.to_string(), *n)).collect(),
            calls: calls.clone(),
        };
        let port = free_port();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
            .expect("the stand-in executor's port");
        runtime.spawn(
            Server::builder()
                .add_service(ExecutorServer::new(service).max_decoding_message_size(usize::MAX))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        Self {
            port,
            calls,
            executor,
            runtime,
        }
    }

    /// Forwards to the executor at `target` (`http://host:port`) from now on: the executor
    /// starts after the stand-in, since it advertises the stand-in's address.
    pub fn forward_to(&self, target: &str) {
        let channel = Channel::from_shared(target.to_string()).expect("executor URL");
        let _enter = self.runtime.enter();
        let client =
            ExecutorClient::new(channel.connect_lazy()).max_decoding_message_size(usize::MAX);
        assert!(self.executor.set(client).is_ok(), "forwarding already");
    }

    /// The address for the executor's `--advertise`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The calls so far, in arrival order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls").clone()
    }
}

struct Injector {
    executor: Arc<OnceLock<ExecutorClient<Channel>>>,
    failures: HashMap<String, u32>,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Injector {
    /// Records the call, and whether it is one of the attempts to fail: the task's earlier
    /// calls are counted, not its attempt number, so a call resent after a lost executor
    /// counts too.
    fn record(&self, task: &Task) -> bool {
        let mut calls = self.calls.lock().expect("calls");
        let (table, _) = task.task_id.split_once('#').unwrap_or_default();
        let failing = self.failures.get(table).copied().unwrap_or(0) as usize;
        let earlier = calls.iter().filter(|c| c.task_id == task.task_id).count();
        let failed = earlier < failing;
        calls.push(Call {
            task_id: task.task_id.clone(),
            attempt: task.attempt,
            at: Instant::now(),
            failed,
        });
        failed
    }
}

#[tonic::async_trait]
impl Executor for Injector {
    async fn run_task(&self, request: Request<Task>) -> Result<Response<TaskResult>, Status> {
        let task = request.into_inner();
        if self.record(&task) {
            return Err(Status::aborted(format!(
                "{}: injected: the lake's storage did not answer",
                task.task_id
            )));
        }
        let executor = self.executor.get().cloned();
        let executor =
            executor.ok_or_else(|| Status::unavailable("no executor behind the stand-in yet"))?;
        executor.clone().run_task(task).await
    }
}
