//! Fakes for unit tests: a pipeline over a scratch directory, and a task runner that answers
//! as a test tells it, without executors.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use medallion_lake::TableFiles;
use medallion_pipeline::{Confinement, Pipeline};
use medallion_proto::{StagedFiles, Task, TaskError, TaskMetrics, TaskResult, task::Work};
use tokio::sync::Semaphore;

use crate::dispatch::TaskRunner;

/// A pipeline named `t` with one bronze table over `<dir>/in/*.jsonl` (one file with one
/// record), its lake under `<dir>/lake`; `more` is YAML appended to the spec.
pub fn pipeline(dir: &Path, more: &str) -> Pipeline {
    std::fs::create_dir_all(dir.join("in")).unwrap();
    std::fs::write(dir.join("in/a.jsonl"), "{\"id\": 1}\n").unwrap();
    let yaml = format!(
        "pipeline: t\nlake: lake\nsources:\n  - {{ name: api, format: json, path: in/*.jsonl }}\n\
         bronze:\n  - {{ name: orders, source: api }}\n{more}"
    );
    Pipeline::parse(yaml, "t.yaml".into(), dir.to_path_buf()).expect("test spec")
}

/// What a coordinator confined to `dir` allows: sources and lakes under it.
pub fn confined(dir: &Path) -> Arc<Confinement> {
    Arc::new(Confinement::new(dir, &[], &[]).expect("confinement"))
}

/// What a task that wrote no rows answers: no files, the schema it was given.
pub fn empty_result(task: &Task) -> TaskResult {
    let schema = match &task.work {
        Some(Work::Ingest(work)) => work.data_schema().unwrap(),
        _ => Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)])),
    };
    let files = TableFiles {
        adds: Vec::new(),
        schema,
    };
    TaskResult {
        task_id: task.task_id.clone(),
        output: Some(StagedFiles::try_from(&files).unwrap()),
        metrics: Some(TaskMetrics::default()),
        ..Default::default()
    }
}

type Answer = dyn Fn(&Task, usize) -> Result<TaskResult, TaskError> + Send + Sync;

/// A [`TaskRunner`] that answers each call with `answer(task, call number)`, optionally
/// waiting at a gate the test opens, and remembers the calls.
pub struct FakeRunner {
    answer: Box<Answer>,
    gate: Option<Semaphore>,
    pub calls: Mutex<Vec<Task>>,
    running: AtomicUsize,
    /// The most calls running at the same time.
    pub most_running: AtomicUsize,
    /// Calls dropped before they answered (their run was cancelled).
    pub abandoned: AtomicUsize,
}

impl FakeRunner {
    /// Every task succeeds at once, writing nothing.
    pub fn succeeding() -> Arc<Self> {
        Self::answering(|t, _| Ok(empty_result(t)))
    }

    pub fn answering(
        answer: impl Fn(&Task, usize) -> Result<TaskResult, TaskError> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self::new(Box::new(answer), None))
    }

    /// Every call waits until [`FakeRunner::open`] lets it through, then succeeds.
    pub fn gated() -> Arc<Self> {
        Arc::new(Self::new(
            Box::new(|t, _| Ok(empty_result(t))),
            Some(Semaphore::new(0)),
        ))
    }

    fn new(answer: Box<Answer>, gate: Option<Semaphore>) -> Self {
        Self {
            answer,
            gate,
            calls: Mutex::new(Vec::new()),
            running: AtomicUsize::new(0),
            most_running: AtomicUsize::new(0),
            abandoned: AtomicUsize::new(0),
        }
    }

    /// Lets `n` waiting (or future) calls through the gate.
    pub fn open(&self, n: usize) {
        self.gate.as_ref().expect("a gated runner").add_permits(n);
    }

    pub fn calls(&self) -> Vec<Task> {
        self.calls.lock().unwrap().clone()
    }

    /// Waits until `n` calls have been made.
    pub async fn wait_for_calls(&self, n: usize) {
        while self.calls.lock().unwrap().len() < n {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

/// Counts a call as abandoned unless it finished.
struct CallGuard<'a> {
    runner: &'a FakeRunner,
    finished: bool,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.runner.running.fetch_sub(1, Ordering::SeqCst);
        if !self.finished {
            self.runner.abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[async_trait]
impl TaskRunner for FakeRunner {
    async fn run(&self, task: Task) -> Result<TaskResult, TaskError> {
        let n = {
            let mut calls = self.calls.lock().unwrap();
            calls.push(task.clone());
            calls.len()
        };
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_running.fetch_max(now, Ordering::SeqCst);
        let mut guard = CallGuard {
            runner: self,
            finished: false,
        };
        if let Some(gate) = &self.gate {
            gate.acquire().await.expect("gate").forget();
        }
        guard.finished = true;
        (self.answer)(&task, n)
    }
}

/// Retries with millisecond pauses, for tests of what is retried rather than when.
pub fn quick_retries(
    max_attempts: u32,
    timeout: std::time::Duration,
) -> crate::dispatch::RetryPolicy {
    crate::dispatch::RetryPolicy {
        max_attempts,
        delay: std::time::Duration::from_millis(1),
        backoff: medallion_pipeline::spec::Backoff::Exponential,
        max_delay: std::time::Duration::from_millis(10),
        timeout,
    }
}
