//! The Medallion executor: runs tasks (as many at a time as it has slots) and never commits.
//!
//! A task reads its inputs, writes Parquet data files for its table and returns the Delta
//! `Add` actions of those files; the coordinator commits them. An executor keeps no state
//! between tasks, so any executor can run any task, and a retried task is harmless: files of a
//! failed attempt are simply never committed.
//!
//! - `ingest`: bronze, source files to raw rows with ingestion metadata.
//! - `transform`: silver, one key partition of a table typed, filtered and deduplicated.
//! - `aggregate`: gold, the table's SQL over pinned versions of its inputs.

mod aggregate;
mod cdc;
mod eager;
mod ingest;
pub mod metrics;
mod partition;
pub mod process;
mod scheduler_link;
mod screen;
mod service;
mod session;
mod spill;
mod streams;
mod transform;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use datafusion::execution::runtime_env::RuntimeEnv;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use futures::{Stream, StreamExt};
use medallion_lake::{TableFiles, Written};
use medallion_pipeline::{Pipeline, TableRef};
use medallion_proto::{SpecText, StagedFiles, TaskError, TaskMetrics, TaskResult, task::Work};
use tokio_util::sync::CancellationToken;

pub use partition::KeyPartition;
pub use service::ExecutorService;

/// What a task produced: uncommitted files, their schema and counters.
pub(crate) struct Output {
    pub files: TableFiles,
    /// Time spent encoding and writing the files.
    pub write_time: std::time::Duration,
    pub metrics: TaskMetrics,
    /// Rows quarantined by checks, for the quarantine table.
    pub quarantine: Option<TableFiles>,
    /// How far the task read its source, when only the reading tells (an API's `since`).
    pub position: Option<serde_json::Value>,
}

impl Output {
    /// The output of a task that wrote `written` with rows of `schema`.
    pub fn new(written: Written, schema: SchemaRef, metrics: TaskMetrics) -> Self {
        Self {
            files: TableFiles {
                adds: written.adds,
                schema,
            },
            write_time: written.write_time,
            metrics,
            quarantine: None,
            position: None,
        }
    }
}

/// What every task needs besides its work: the pipeline, the table and where to write.
pub(crate) struct TaskContext {
    pub runtime: Arc<RuntimeEnv>,
    pub pipeline: Arc<Pipeline>,
    pub table: TableRef,
    pub output_uri: String,
    /// Subdirectory of `output_uri` this dispatch writes into.
    pub dispatch_dir: String,
    /// Where quarantined rows go (`<table>__quarantine`), if any check quarantines.
    pub quarantine_uri: String,
    /// Columns the planner partitions the table's files by.
    pub partition_columns: Vec<String>,
    pub run_id: String,
    pub storage_options: HashMap<String, String>,
    /// This process's own scratch directory (local copies of source objects).
    pub scratch_dir: std::path::PathBuf,
    /// Cancelled when the dispatch is stopped (abandoned, or its caller gone): its writes
    /// end at the next batch, so once the work has returned nothing more lands.
    pub stop: CancellationToken,
}

impl TaskContext {
    /// Writes `batches` as uncommitted data files in this dispatch's directory under `uri`
    /// (the table's or its quarantine's); fails, writing nothing more, once [`Self::stop`]
    /// is cancelled.
    pub async fn write_files(
        &self,
        uri: &str,
        schema: SchemaRef,
        partition_columns: &[String],
        batches: impl Stream<Item = anyhow::Result<RecordBatch>> + Send + Unpin,
    ) -> anyhow::Result<Written> {
        let stop = self.stop.clone();
        let batches = futures::stream::unfold(Some(batches), move |batches| {
            let stop = stop.clone();
            async move {
                let mut batches = batches?;
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => {
                        Some((Err(anyhow::anyhow!("the task was stopped")), None))
                    }
                    next = batches.next() => next.map(|batch| (batch, Some(batches))),
                }
            }
        });
        medallion_lake::write_data_files(
            uri,
            &self.dispatch_dir,
            &self.storage_options,
            schema,
            partition_columns,
            Box::pin(batches),
        )
        .await
    }
}

/// Specs this executor has parsed, newest first: the tasks of a run share one parse.
#[derive(Default)]
struct Specs(Mutex<VecDeque<(SpecText, Arc<Pipeline>)>>);

/// How many specs [`Specs`] keeps (runs of different pipelines at the same time).
const SPECS_KEPT: usize = 8;

impl Specs {
    fn parse(&self, spec: &SpecText) -> Result<Arc<Pipeline>, TaskError> {
        let mut kept = self.0.lock().expect("parsed specs");
        if let Some((_, pipeline)) = kept.iter().find(|(text, _)| text == spec) {
            return Ok(pipeline.clone());
        }
        let pipeline = Arc::new(
            spec.parse()
                .map_err(|e| TaskError::permanent(e.to_string()))?,
        );
        kept.push_front((spec.clone(), pipeline.clone()));
        kept.truncate(SPECS_KEPT);
        Ok(pipeline)
    }
}

/// Runs tasks in this process. The cluster's executor service wraps the same type.
#[derive(Clone)]
pub struct Executor {
    runtime: Arc<RuntimeEnv>,
    spill: Arc<spill::SpillDir>,
    specs: Arc<Specs>,
}

impl Executor {
    /// An executor whose queries share `memory_limit` bytes and spill to disk beyond it
    /// (sorts, aggregates, joins); without a limit, memory is not bounded.
    pub fn new(memory_limit: Option<usize>) -> anyhow::Result<Self> {
        let spill = spill::SpillDir::create()?;
        Ok(Self {
            runtime: medallion_lake::runtime::query_runtime(memory_limit, Some(spill.path()))?,
            spill: Arc::new(spill),
            specs: Arc::default(),
        })
    }

    /// The runtime every task's queries run on (memory pool, spill directory).
    pub fn runtime(&self) -> Arc<RuntimeEnv> {
        self.runtime.clone()
    }

    /// Deletes this process's spill files: for a process about to exit on a signal, which
    /// drops nothing that would delete them.
    pub fn remove_spill_files(&self) {
        self.spill.remove();
    }

    /// Runs one task to completion, or until `abandon` fires (the coordinator has given the
    /// task to another executor): then the task stops writing and what it wrote is deleted.
    /// A panic in the task (a bug) fails the task, not the process, so the other tasks of
    /// this executor keep running.
    pub async fn run(
        &self,
        task: medallion_proto::Task,
        abandon: &CancellationToken,
    ) -> Result<TaskResult, TaskError> {
        let layer = task.table.split('.').next().unwrap_or_default().to_string();
        let span = tracing::info_span!(
            "task",
            run_id = %task.run_id,
            pipeline = task.pipeline.as_ref().map_or("", |p| p.name.as_str()),
            stage = layer.as_str(),
            table = %task.table,
            task_id = %task.task_id,
            attempt = task.attempt,
        );
        tracing::Instrument::instrument(self.run_in_span(task, &layer, abandon), span).await
    }

    async fn run_in_span(
        &self,
        task: medallion_proto::Task,
        layer: &str,
        abandon: &CancellationToken,
    ) -> Result<TaskResult, TaskError> {
        tracing::info!("task started");
        let _running = metrics::Running::start();
        let started = std::time::Instant::now();
        let result = match self.context(task) {
            Ok((ctx, task_id, work)) => {
                // Until it finishes, a task whose caller stops waiting (a call timed out,
                // cancelled, or cut when the coordinator declared this executor lost) or that is
                // abandoned is stopped, and what it wrote is deleted.
                let mut running = Running {
                    files: DispatchFiles::of(&ctx),
                    stop: ctx.stop.clone(),
                    handle: Some(tokio::spawn(tracing::Instrument::in_current_span(
                        run_work(ctx, task_id, work),
                    ))),
                };
                tokio::select! {
                    joined = running.join() => joined,
                    _ = abandon.cancelled() => {
                        Err(TaskError::lost("abandoned: the task was given to another executor"))
                    }
                }
            }
            Err(e) => Err(e),
        };
        let ran = started.elapsed();
        metrics::task_ended(layer, ran, &result);
        let result = result.map(|mut r| {
            r.metrics.get_or_insert_default().run_ms = ran.as_millis() as u64;
            r
        });
        match &result {
            Ok(r) => tracing::info!(
                rows = r.metrics.as_ref().map_or(0, |m| m.rows_written),
                files = r.output.as_ref().map_or(0, |o| o.add_actions_json.len()),
                "task finished"
            ),
            Err(e) => tracing::warn!(error = %e, kind = ?e.kind, "task failed"),
        }
        result
    }

    /// What the task needs to run, from its spec; with its id and its work.
    fn context(
        &self,
        task: medallion_proto::Task,
    ) -> Result<(TaskContext, String, Option<Work>), TaskError> {
        let spec = task
            .pipeline
            .as_ref()
            .ok_or_else(|| TaskError::permanent("task carries no pipeline spec"))?;
        let pipeline = self.specs.parse(spec)?;
        let table = task.table_ref().map_err(TaskError::permanent)?;
        let ctx = TaskContext {
            runtime: self.runtime.clone(),
            storage_options: pipeline.lake_options(),
            pipeline,
            table,
            output_uri: task.output_uri,
            dispatch_dir: task.dispatch_dir,
            quarantine_uri: task.quarantine_uri,
            partition_columns: task.partition_columns,
            run_id: task.run_id,
            scratch_dir: self.spill.path().to_path_buf(),
            stop: CancellationToken::new(),
        };
        Ok((ctx, task.task_id, task.work))
    }
}

/// Runs a task's work; returns the files it wrote, uncommitted.
async fn run_work(
    ctx: TaskContext,
    task_id: String,
    work: Option<Work>,
) -> Result<TaskResult, TaskError> {
    let out = match work {
        Some(Work::Ingest(w)) => ingest::run(&ctx, w).await?,
        Some(Work::Transform(w)) => transform::run(&ctx, w).await?,
        Some(Work::Aggregate(w)) => aggregate::run(&ctx, w).await?,
        None => return Err(TaskError::permanent("task carries no work")),
    };
    let staged = |files: &TableFiles| {
        StagedFiles::try_from(files).map_err(|e| TaskError::permanent(format!("{e:#}")))
    };
    Ok(TaskResult {
        task_id,
        output: Some(staged(&out.files)?),
        quarantine: out.quarantine.as_ref().map(staged).transpose()?,
        metrics: Some(TaskMetrics {
            bytes_written: out.files.adds.iter().map(|a| a.size as u64).sum(),
            write_ms: out.write_time.as_millis() as u64,
            ..out.metrics
        }),
        // Set by the coordinator's runner, which knows where it sent the task.
        executor: String::new(),
        position_json: out.position.map(|p| p.to_string()).unwrap_or_default(),
    })
}

/// Where one dispatch of a task writes, to delete it all when the dispatch is stopped.
#[derive(Default)]
struct DispatchFiles {
    uris: [String; 2],
    dir: String,
    storage_options: HashMap<String, String>,
}

impl DispatchFiles {
    fn of(ctx: &TaskContext) -> Self {
        Self {
            uris: [ctx.output_uri.clone(), ctx.quarantine_uri.clone()],
            dir: ctx.dispatch_dir.clone(),
            storage_options: ctx.storage_options.clone(),
        }
    }

    async fn delete(&self) {
        let uris = self.uris.each_ref().map(String::as_str);
        match medallion_lake::delete_dirs(&uris, &self.dir, &self.storage_options).await {
            Ok(()) => tracing::info!(dir = self.dir, "deleted the files of a stopped task"),
            Err(e) => tracing::warn!(
                dir = self.dir,
                error = format!("{e:#}"),
                "cannot delete the files of a stopped task"
            ),
        }
    }
}

/// A task's work, spawned; dropped before it finished, it stops the work and deletes the
/// files of the dispatch once the work has returned.
struct Running {
    handle: Option<tokio::task::JoinHandle<Result<TaskResult, TaskError>>>,
    files: DispatchFiles,
    stop: CancellationToken,
}

/// How long a stopped task's work may take to return (it stops at its next batch) before it
/// is aborted instead.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

impl Running {
    /// Waits for the work to end; its files then belong to whoever commits them.
    async fn join(&mut self) -> Result<TaskResult, TaskError> {
        let Some(handle) = self.handle.as_mut() else {
            return Err(TaskError::transient("task already ended"));
        };
        let joined = handle.await;
        self.handle = None;
        joined.unwrap_or_else(|e| Err(TaskError::transient(format!("task died: {e}"))))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let Some(mut handle) = self.handle.take() else {
            return;
        };
        self.stop.cancel();
        let files = std::mem::take(&mut self.files);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                // Every write the work started has landed once it returns: deleting after
                // that leaves nothing behind, however slow the machine.
                if tokio::time::timeout(STOP_GRACE, &mut handle).await.is_err() {
                    handle.abort();
                    let _ = handle.await;
                    // Local writes finish on blocking threads that aborting does not stop:
                    // give them a moment to land.
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                }
                files.delete().await;
            });
        } else {
            handle.abort();
        }
    }
}

/// Writes a query's rows as uncommitted files of the task's (unpartitioned) table, leaving
/// out the rows its `drop` and `quarantine` checks fail ([`screen`]); quarantined rows are
/// written, at the same time, as files of the quarantine table.
pub(crate) async fn write_screened(
    ctx: &TaskContext,
    rows: datafusion::execution::SendableRecordBatchStream,
    metrics: TaskMetrics,
) -> Result<Output, TaskError> {
    let mut screening = screen::Screening::new(ctx, &rows.schema())?;
    let rows = screening.apply(rows);
    write_result(ctx, rows, metrics, screening).await
}

/// Writes rows that went through `screening` as uncommitted files of the task's
/// (unpartitioned) table, and the rows it quarantined as files of the quarantine table.
///
/// Returns the output: files, their (Delta-compatible) schema, the rows written and screened.
pub(crate) async fn write_result(
    ctx: &TaskContext,
    rows: datafusion::execution::SendableRecordBatchStream,
    mut metrics: TaskMetrics,
    mut screening: screen::Screening,
) -> Result<Output, TaskError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let schema = screening.schema.clone();
    let quarantine_schema = screen::quarantine_schema(&schema);
    let written = Arc::new(AtomicU64::new(0));
    let counter = written.clone();
    let batches = rows.map(move |b| {
        let b = b?;
        counter.fetch_add(b.num_rows() as u64, Ordering::Relaxed);
        Ok(b)
    });
    let main = ctx.write_files(&ctx.output_uri, schema.clone(), &[], batches);
    let quarantined = async {
        let Some(receiver) = screening.quarantined.take() else {
            return Ok(None);
        };
        let rows = tokio_stream::wrappers::UnboundedReceiverStream::new(receiver)
            .map(|b| b.map_err(anyhow::Error::from));
        let files = ctx
            .write_files(&ctx.quarantine_uri, quarantine_schema.clone(), &[], rows)
            .await?;
        anyhow::Ok(Some(TableFiles {
            adds: files.adds,
            schema: quarantine_schema.clone(),
        }))
    };
    let (main, quarantine) = tokio::join!(main, quarantined);
    let written_files = main.map_err(|e| query_error(&ctx.table, e))?;
    let quarantine = quarantine.map_err(|e| query_error(&ctx.table, e))?;
    metrics.rows_written = written.load(Ordering::Relaxed);
    let screened = screening.counts();
    metrics.check_failures = screened.failures;
    metrics.rows_dropped = screened.dropped;
    metrics.rows_quarantined = screened.quarantined;
    Ok(Output {
        quarantine,
        ..Output::new(written_files, schema, metrics)
    })
}

/// Classifies an error of running a table's query or writing its files: storage and I/O
/// failures may pass on another attempt, and so may a memory pool that could not give the
/// query what it asked (what the tasks beside it held decides that: two sorts merging their
/// spills at once can each be refused); SQL, cast and data errors fail the same way again.
pub(crate) fn query_error(table: &TableRef, e: anyhow::Error) -> TaskError {
    use datafusion::error::DataFusionError;
    let passing = e.chain().any(|cause| {
        cause.is::<deltalake::DeltaTableError>()
            || cause.is::<std::io::Error>()
            || matches!(
                cause.downcast_ref::<DataFusionError>(),
                Some(
                    DataFusionError::ObjectStore(_)
                        | DataFusionError::IoError(_)
                        | DataFusionError::ResourcesExhausted(_)
                )
            )
    });
    let message = format!("{table}: {e:#}");
    if passing {
        TaskError::transient(message)
    } else {
        TaskError::permanent(message)
    }
}

/// Infrastructure errors (storage, I/O) may pass on another attempt.
pub(crate) fn transient(e: impl std::fmt::Display) -> TaskError {
    TaskError::transient(format!("{e:#}"))
}

/// The physical plans a task ran, to log with what each operator did (rows, time, spills)
/// once its output is written: the place to start when a task is slow, as Spark's SQL tab.
#[derive(Default)]
pub(crate) struct Executed(Mutex<Vec<Arc<dyn datafusion::physical_plan::ExecutionPlan>>>);

impl Executed {
    /// Runs `df`'s query, keeping its plan.
    pub(crate) async fn execute(
        &self,
        df: datafusion::prelude::DataFrame,
    ) -> datafusion::error::Result<datafusion::execution::SendableRecordBatchStream> {
        let task_ctx = Arc::new(df.task_ctx());
        let plan = df.create_physical_plan().await?;
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(plan.clone());
        datafusion::physical_plan::execute_stream(plan, task_ctx)
    }

    /// Logs the plans at debug level (formatted only when that level is on).
    pub(crate) fn log(&self, table: &TableRef) {
        use datafusion::physical_plan::display::DisplayableExecutionPlan;
        let plans = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for plan in plans.iter() {
            let plan = DisplayableExecutionPlan::with_metrics(plan.as_ref()).indent(true);
            tracing::debug!(%table, %plan, "query executed");
        }
    }
}

#[cfg(test)]
mod tests {
    use datafusion::execution::memory_pool::FairSpillPool;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::prelude::{SessionConfig, SessionContext};
    use futures::TryStreamExt;
    use medallion_proto::Failure;

    use super::query_error;

    /// How a query's failure reaches the classification: from the stream being written.
    async fn failure_of(ctx: &SessionContext, sql: &str) -> anyhow::Error {
        let df = ctx.sql(sql).await.unwrap();
        let stream = df.execute_stream().await.unwrap();
        let e = stream.try_collect::<Vec<_>>().await.unwrap_err();
        anyhow::Error::from(e).context("writing data files")
    }

    #[tokio::test]
    async fn a_query_refused_memory_is_tried_again_and_a_data_error_is_not() {
        // A pool too small for the sort, and no disk to spill to.
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(std::sync::Arc::new(FairSpillPool::new(64 * 1024)))
            .with_disk_manager_builder(
                datafusion::execution::disk_manager::DiskManagerBuilder::default()
                    .with_mode(datafusion::execution::disk_manager::DiskManagerMode::Disabled),
            )
            .build_arc()
            .unwrap();
        let config = SessionConfig::new().with_sort_spill_reservation_bytes(0);
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        let table = "silver.orders".parse().unwrap();

        let sorted =
            "SELECT v, repeat('x', 100) AS s FROM generate_series(1, 100000) t(v) ORDER BY v DESC";
        let refused = query_error(&table, failure_of(&ctx, sorted).await);
        assert!(
            refused.message.contains("Resources exhausted"),
            "{}",
            refused.message
        );
        assert_eq!(refused.kind, Failure::Transient, "{}", refused.message);

        let bad = "SELECT CAST('x' || v AS INT) FROM generate_series(1, 10) t(v)";
        let data = query_error(&table, failure_of(&SessionContext::new(), bad).await);
        assert!(
            data.message.starts_with("silver.orders: "),
            "{}",
            data.message
        );
        assert_eq!(data.kind, Failure::Permanent, "{}", data.message);
    }
}
