//! The runs a leader coordinator is responsible for: submitted, resumed after a failover,
//! cancelled and watched.
//!
//! Every run's record lives in etcd (`store`) before the run starts, and its end state is
//! saved before watchers hear of it. A new leader resumes the runs still queued or running by
//! running them again under the same id: tables are idempotent per run (bronze skips ingested
//! files, silver and gold skip unchanged inputs), so nothing is doubled.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use datafusion::execution::runtime_env::RuntimeEnv;
use medallion_pipeline::{Confinement, Pipeline, RunDate, TableRef};
use medallion_proto::run_event::Event;
use medallion_proto::{self as pb, RunInfo, RunRecord, RunState, SpecText, TaskRecord};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::dispatch::TaskRunner;
use crate::lease::RunLease;
use crate::planner::BallistaTarget;
use medallion_pipeline::report::{RunEvent, RunReport, TableReport, TableStatus};

use crate::run::{Coordinator, Rerun, RunObserver, new_run_id};
use crate::store::{PipelineLock, RunStore, persist};

/// The runs of this leader.
pub struct Runs {
    store: Arc<dyn RunStore>,
    runner: Arc<dyn TaskRunner>,
    ballista: Option<BallistaTarget>,
    /// Where submitted pipelines may read and write.
    confinement: Arc<Confinement>,
    /// The memory pool and spill space of the commits' checks and merges.
    runtime: Arc<RuntimeEnv>,
    active: Mutex<HashMap<String, Arc<ActiveRun>>>,
}

/// A run in progress: its record, what happened so far, and who listens.
struct ActiveRun {
    progress: Mutex<Progress>,
    events: broadcast::Sender<pb::RunEvent>,
    /// Aborts the run's tables.
    abort: Mutex<Option<tokio::task::AbortHandle>>,
    /// True once the end state is saved.
    done: watch::Sender<bool>,
}

struct Progress {
    record: RunRecord,
    history: Vec<pb::RunEvent>,
    tables: Vec<TableReport>,
    ended: bool,
}

enum Ending {
    Finished(RunReport),
    Cancelled,
}

impl ActiveRun {
    fn new(record: RunRecord) -> Self {
        Self {
            progress: Mutex::new(Progress {
                record,
                history: Vec::new(),
                tables: Vec::new(),
                ended: false,
            }),
            events: broadcast::channel(1024).0,
            abort: Mutex::new(None),
            done: watch::channel(false).0,
        }
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().expect("run progress")
    }

    fn publish(&self, event: pb::RunEvent) {
        self.progress().history.push(event.clone());
        let _ = self.events.send(event);
    }

    /// The run's info, with the tables finished so far while it runs.
    fn info(&self) -> RunInfo {
        let progress = self.progress();
        let mut info = progress.record.info.clone().unwrap_or_default();
        if info.report_json.is_empty() {
            info.set_tables(&progress.tables);
        }
        info
    }
}

/// Turns a run's events into watch events and etcd writes.
struct Recorder {
    run: Arc<ActiveRun>,
    writes: mpsc::UnboundedSender<Write>,
}

enum Write {
    Table(Box<TableReport>),
    Task(TaskRecord),
}

impl RunObserver for Recorder {
    fn on_event(&self, event: RunEvent) {
        let wire = pb::RunEvent::from(&event);
        let write = match event {
            RunEvent::TableFinished { report } => {
                self.run.progress().tables.push((*report).clone());
                Some(Write::Table(report))
            }
            event => TaskRecord::of(&event).map(Write::Task),
        };
        self.run.publish(wire);
        if let Some(write) = write {
            let _ = self.writes.send(write);
        }
    }
}

/// Why a request about runs was refused (mapped to gRPC codes in `service`).
#[derive(Debug, thiserror::Error)]
pub enum RunsError {
    /// The spec does not validate; the message names file, line, column and field.
    #[error("{0}")]
    InvalidSpec(String),
    #[error("no run '{0}'")]
    NotFound(String),
    #[error("run '{run_id}' has already ended ({state:?})")]
    Ended { run_id: String, state: RunState },
    #[error("run state store (etcd) unavailable: {0:#}")]
    Store(anyhow::Error),
    #[error("no deployed pipeline '{0}' (medallion deploy <spec>)")]
    NotDeployed(String),
    #[error("{0}")]
    BadRequest(String),
    /// Unended in the store but not running here: the leader has not taken it over yet.
    #[error(
        "run '{0}' is not running on this coordinator yet (a leader is taking it over); try again"
    )]
    NotTakenOver(String),
}

fn ended(state: i32) -> bool {
    matches!(
        RunState::try_from(state),
        Ok(RunState::Succeeded | RunState::Failed | RunState::Cancelled)
    )
}

impl Runs {
    pub fn new(
        store: Arc<dyn RunStore>,
        runner: Arc<dyn TaskRunner>,
        ballista: Option<BallistaTarget>,
        confinement: Arc<Confinement>,
        runtime: Arc<RuntimeEnv>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            runner,
            ballista,
            confinement,
            runtime,
            active: Mutex::new(HashMap::new()),
        })
    }

    fn active(&self, run_id: &str) -> Option<Arc<ActiveRun>> {
        self.active
            .lock()
            .expect("active runs")
            .get(run_id)
            .cloned()
    }

    /// Parses a spec sent by a client or kept in the store, for the run of `date`, as the
    /// confinement allows: the one way specs enter a coordinator.
    pub fn admit(&self, spec: &SpecText, date: RunDate) -> Result<Pipeline, RunsError> {
        let (yaml, origin) = (spec.yaml.clone(), spec.origin.clone());
        self.confinement
            .admit(yaml, origin, date)
            .map_err(|e| RunsError::InvalidSpec(e.to_string()))
    }

    /// Validates the spec, saves the run as queued and starts it.
    pub async fn submit(
        self: &Arc<Self>,
        spec: SpecText,
        full_refresh: bool,
    ) -> Result<RunInfo, RunsError> {
        let pipeline = self.admit(&spec, spec.run_date())?;
        self.submit_pipeline(pipeline, full_refresh, Origin::manual())
            .await
    }

    /// Saves a run of a parsed pipeline as queued and starts it.
    pub async fn submit_pipeline(
        self: &Arc<Self>,
        pipeline: Pipeline,
        full_refresh: bool,
        origin: Origin,
    ) -> Result<RunInfo, RunsError> {
        self.save_and_start(new_record(&pipeline, full_refresh, origin), pipeline)
            .await
    }

    /// Saves a queued run's record, then starts it.
    async fn save_and_start(
        self: &Arc<Self>,
        record: RunRecord,
        pipeline: Pipeline,
    ) -> Result<RunInfo, RunsError> {
        self.store
            .put_run(&record)
            .await
            .map_err(RunsError::Store)?;
        let info = record.info.clone().unwrap_or_default();
        tracing::info!(run_id = %info.run_id, pipeline = %info.pipeline, ds = %info.ds, trigger = %info.trigger, "run submitted");
        self.start(record, pipeline, Vec::new());
        Ok(info)
    }

    /// Starts a run whose queued record the caller saved (the scheduler, with its cursor).
    pub fn start_saved(self: &Arc<Self>, record: RunRecord, pipeline: Pipeline) {
        self.start(record, pipeline, Vec::new());
    }

    /// Runs an ended run again, for the same interval and spec: `from_failed` keeps the
    /// tables it committed; `full_refresh` tables are rebuilt with everything downstream.
    pub async fn rerun(
        self: &Arc<Self>,
        run_id: &str,
        from_failed: bool,
        full_refresh: &[String],
    ) -> Result<RunInfo, RunsError> {
        let bad = |m: String| RunsError::BadRequest(m);
        if !from_failed && full_refresh.is_empty() {
            return Err(bad(
                "say what to run again: --from-failed, --full-refresh <table>, or both".into(),
            ));
        }
        let store = self.store.run(run_id).await.map_err(RunsError::Store)?;
        let record = store.ok_or_else(|| RunsError::NotFound(run_id.to_string()))?;
        let info = record.info.clone().unwrap_or_default();
        if !ended(info.state) || self.active(run_id).is_some() {
            return Err(bad(format!(
                "run '{run_id}' has not ended; wait for it or cancel it"
            )));
        }
        let spec = record.pipeline.clone().unwrap_or_default();
        let pipeline = self.admit(&spec, spec.run_date())?;
        let mut rebuild = BTreeSet::new();
        for name in full_refresh {
            let table: TableRef = name
                .parse()
                .map_err(|e| bad(format!("--full-refresh {name}: {e}")))?;
            if !pipeline.dag.contains(&table) {
                return Err(bad(format!(
                    "--full-refresh: no table '{table}' in pipeline '{}'",
                    pipeline.name()
                )));
            }
            rebuild.extend(pipeline.dag.downstream(&table));
        }
        let mut keep = BTreeSet::new();
        if from_failed {
            let tables = self.store.tables(run_id).await.map_err(RunsError::Store)?;
            keep = tables
                .iter()
                .filter(|t| t.succeeded())
                .filter_map(|t| t.table.parse::<TableRef>().ok())
                .filter(|t| !rebuild.contains(t))
                .collect();
        }
        let origin = Origin {
            trigger: format!("rerun {run_id}"),
            spec_version: info.spec_version,
        };
        let mut record = new_record(&pipeline, record.full_refresh, origin);
        record.rerun_of = run_id.to_string();
        record.keep_tables = keep.iter().map(ToString::to_string).collect();
        record.rebuild_tables = rebuild.iter().map(ToString::to_string).collect();
        tracing::info!(rerun_of = run_id, keep = ?record.keep_tables, rebuild = ?record.rebuild_tables, "re-running");
        self.save_and_start(record, pipeline).await
    }

    /// Forgets the runs that ended more than `retention` ago (their summaries stay in each
    /// lake's run history); returns how many.
    pub async fn prune(&self, retention: Duration) -> anyhow::Result<usize> {
        let cutoff = Utc::now().timestamp_millis() - retention.as_millis() as i64;
        let mut pruned = 0;
        for record in self.store.runs().await? {
            let info = record.info.unwrap_or_default();
            if ended(info.state) && info.ended_ms > 0 && info.ended_ms < cutoff {
                self.store.delete_run(&info.run_id).await?;
                pruned += 1;
            }
        }
        Ok(pruned)
    }

    /// Runs of `pipeline` this leader has queued or running.
    pub fn active_of(&self, pipeline: &str) -> usize {
        let active = self.active.lock().expect("active runs");
        active
            .values()
            .filter(|run| {
                run.progress()
                    .record
                    .info
                    .as_ref()
                    .is_some_and(|i| i.pipeline == pipeline)
            })
            .count()
    }

    /// Starts again every run a previous leader left queued or running.
    pub async fn resume(self: &Arc<Self>) -> anyhow::Result<()> {
        for record in self.store.runs().await? {
            let info = record.info.clone().unwrap_or_default();
            if ended(info.state) || self.active(&info.run_id).is_some() {
                continue;
            }
            let spec = record.pipeline.clone().unwrap_or_default();
            match self.admit(&spec, spec.run_date()) {
                Ok(pipeline) => {
                    let earlier = self.store.tables(&info.run_id).await?;
                    tracing::info!(run_id = %info.run_id, starts = record.starts, "resuming run");
                    self.start(record, pipeline, earlier);
                }
                Err(e) => {
                    let mut record = record;
                    let info = record.info.get_or_insert_default();
                    info.state = RunState::Failed as i32;
                    info.message = format!("cannot resume: {e}");
                    info.ended_ms = Utc::now().timestamp_millis();
                    self.store.put_run(&record).await?;
                }
            }
        }
        Ok(())
    }

    /// Runs `pipeline` on its own task; `earlier` are the tables a previous leader finished.
    fn start(
        self: &Arc<Self>,
        mut record: RunRecord,
        pipeline: Pipeline,
        earlier: Vec<TableReport>,
    ) {
        record.starts += 1;
        let info = record.info.get_or_insert_default();
        info.state = RunState::Running as i32;
        let run_id = info.run_id.clone();
        let trigger = info.trigger.clone();
        let run = Arc::new(ActiveRun::new(record.clone()));
        let mut active = self.active.lock().expect("active runs");
        active.insert(run_id.clone(), run.clone());

        let (writes, mut pending) = mpsc::unbounded_channel::<Write>();
        let recorder = Recorder {
            run: run.clone(),
            writes,
        };
        let runner = self.runner.clone();
        let ballista = self.ballista.clone();
        let runtime = self.runtime.clone();
        let id = run_id.clone();
        let store = self.store.clone();
        let full_refresh = record.full_refresh;
        let rerun = rerun_of(&record);
        let start = record.starts;
        // The record is saved before anything is dispatched: a leader resuming the run after
        // this one must count this start, or its dispatches would take this one's directories.
        let (saved, on_saved) = tokio::sync::oneshot::channel();
        let tables = tokio::spawn(async move {
            let _ = on_saved.await;
            let _locks = hold_run_locks(store.as_ref(), &pipeline, &id).await;
            Coordinator::new(runner.as_ref(), &recorder)
                .with_ballista(ballista)
                .with_runtime(runtime)
                .with_full_refresh(full_refresh)
                .with_rerun(rerun)
                .with_trigger(&trigger)
                .with_start(start)
                .run(&pipeline, &id)
                .await
        });
        *run.abort.lock().expect("abort handle") = Some(tables.abort_handle());
        drop(active);

        let this = self.clone();
        tokio::spawn(async move {
            persist("run state", || this.store.put_run(&record)).await;
            let _ = saved.send(());
            let store = this.store.clone();
            let writer_run = run_id.clone();
            let writer = tokio::spawn(async move {
                while let Some(write) = pending.recv().await {
                    match write {
                        Write::Table(report) => {
                            persist("table report", || store.put_table(&writer_run, &report)).await
                        }
                        Write::Task(task) => {
                            persist("task state", || store.put_task(&writer_run, &task)).await
                        }
                    }
                }
            });
            let ending = match tables.await {
                Ok(report) => Ending::Finished(merge_earlier(report, earlier)),
                Err(e) if e.is_cancelled() => Ending::Cancelled,
                Err(e) => {
                    tracing::error!(run_id = %run_id, error = %e, "run task panicked");
                    Ending::Cancelled
                }
            };
            let _ = writer.await;
            this.end(&run_id, &run, ending).await;
        });
    }

    /// Saves the end state, then tells the watchers.
    async fn end(&self, run_id: &str, run: &ActiveRun, ending: Ending) {
        let record = {
            let mut progress = run.progress();
            if progress.ended {
                return;
            }
            progress.ended = true;
            let tables = progress.tables.clone();
            let info = progress.record.info.get_or_insert_default();
            info.ended_ms = Utc::now().timestamp_millis();
            match ending {
                Ending::Finished(report) => {
                    let state = if report.succeeded {
                        RunState::Succeeded
                    } else {
                        RunState::Failed
                    };
                    info.state = state as i32;
                    info.message = report
                        .tables
                        .iter()
                        .find_map(|t| match &t.status {
                            TableStatus::Failed { error } => Some(format!("{}: {error}", t.table)),
                            _ => None,
                        })
                        .unwrap_or_default();
                    info.set_report(&report);
                }
                Ending::Cancelled => {
                    crate::metrics::run_ended(&info.pipeline, RunState::Cancelled);
                    info.state = RunState::Cancelled as i32;
                    info.message = "cancelled".into();
                    info.set_tables(&tables);
                }
            }
            progress.record.clone()
        };
        persist("run state", || self.store.put_run(&record)).await;
        let info = record.info.unwrap_or_default();
        tracing::info!(run_id, state = ?RunState::try_from(info.state).unwrap_or(RunState::Unspecified), "run ended");
        run.publish(info.into());
        self.active.lock().expect("active runs").remove(run_id);
        run.done.send_replace(true);
    }

    pub async fn get(&self, run_id: &str) -> Result<RunInfo, RunsError> {
        if let Some(run) = self.active(run_id) {
            return Ok(run.info());
        }
        let record = self
            .store
            .run(run_id)
            .await
            .map_err(RunsError::Store)?
            .ok_or_else(|| RunsError::NotFound(run_id.to_string()))?;
        Ok(record.info.unwrap_or_default())
    }

    /// Newest first; at most `limit` (0: all).
    pub async fn list(&self, limit: usize) -> Result<Vec<RunInfo>, RunsError> {
        let mut runs: Vec<RunInfo> = self
            .store
            .runs()
            .await
            .map_err(RunsError::Store)?
            .into_iter()
            .filter_map(|r| r.info)
            .map(|info| match self.active(&info.run_id) {
                Some(run) => run.info(),
                None => info,
            })
            .collect();
        runs.sort_by_key(|r| std::cmp::Reverse(r.submitted_ms));
        if limit > 0 {
            runs.truncate(limit);
        }
        Ok(runs)
    }

    /// Stops a running run: no table of it commits after this returns.
    pub async fn cancel(&self, run_id: &str) -> Result<RunInfo, RunsError> {
        let Some(run) = self.active(run_id) else {
            let info = self.get(run_id).await?;
            return Err(RunsError::Ended {
                run_id: run_id.to_string(),
                state: RunState::try_from(info.state).unwrap_or(RunState::Unspecified),
            });
        };
        if let Some(abort) = run.abort.lock().expect("abort handle").take() {
            abort.abort();
        }
        let mut done = run.done.subscribe();
        let _ = done.wait_for(|d| *d).await;
        tracing::info!(run_id, "run cancelled");
        Ok(run.info())
    }

    /// The run's events so far, then live ones until it ends.
    pub async fn watch(&self, run_id: &str) -> Result<ReceiverStream<pb::RunEvent>, RunsError> {
        if let Some(run) = self.active(run_id) {
            let (tx, rx) = mpsc::channel(256);
            let (history, mut live) = {
                let progress = run.progress();
                (progress.history.clone(), run.events.subscribe())
            };
            tokio::spawn(async move {
                for event in history {
                    let end = matches!(event.event, Some(Event::RunEnded(_)));
                    if tx.send(event).await.is_err() || end {
                        return;
                    }
                }
                loop {
                    match live.recv().await {
                        Ok(event) => {
                            let end = matches!(event.event, Some(Event::RunEnded(_)));
                            if tx.send(event).await.is_err() || end {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
            return Ok(ReceiverStream::new(rx));
        }
        let info = self.get(run_id).await?;
        if !ended(info.state) {
            return Err(RunsError::NotTakenOver(run_id.to_string()));
        }
        let mut tables = self.store.tables(run_id).await.map_err(RunsError::Store)?;
        tables.sort_by_key(|t| t.started_ms);
        let (tx, rx) = mpsc::channel(tables.len() + 1);
        let events = tables
            .into_iter()
            .map(|report| {
                let report = Box::new(report);
                pb::RunEvent::from(&RunEvent::TableFinished { report })
            })
            .chain([info.into()]);
        for event in events {
            let _ = tx.try_send(event);
        }
        Ok(ReceiverStream::new(rx))
    }
}

/// What a run record says to keep and rebuild, if it is a re-run (the one place these
/// fields are read).
fn rerun_of(record: &RunRecord) -> Rerun {
    let tables = |names: &[String]| names.iter().filter_map(|t| t.parse().ok()).collect();
    Rerun {
        of: record.rerun_of.clone(),
        keep: tables(&record.keep_tables),
        rebuild: tables(&record.rebuild_tables),
    }
}

/// What started a run, and the deployed spec version it runs (0: a submitted spec).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub trigger: String,
    pub spec_version: u32,
}

impl Origin {
    pub fn manual() -> Self {
        Self {
            trigger: "manual".into(),
            spec_version: 0,
        }
    }
}

/// A queued run of `pipeline`, for its interval, with the spec it runs.
pub fn new_record(pipeline: &Pipeline, full_refresh: bool, origin: Origin) -> RunRecord {
    let info = RunInfo {
        run_id: new_run_id(pipeline.name()),
        pipeline: pipeline.name().to_string(),
        state: RunState::Queued as i32,
        submitted_ms: Utc::now().timestamp_millis(),
        ds: pipeline.interval.ds(),
        interval_start_micros: pipeline.interval.start.timestamp_micros(),
        interval_end_micros: pipeline.interval.end.timestamp_micros(),
        trigger: origin.trigger,
        spec_version: origin.spec_version,
        ..Default::default()
    };
    RunRecord {
        info: Some(info),
        // With the interval it was parsed for, so a resumed run renders the same fields.
        pipeline: Some(SpecText::from(pipeline)),
        starts: 0,
        full_refresh,
        ..Default::default()
    }
}

/// Waits until this run may touch the pipeline's lake: the pipeline's etcd lock (other runs
/// on this cluster, including a previous leader's) and the lake's run lease (embedded runs on
/// a shared volume). Both are released when the returned value is dropped.
async fn hold_run_locks(
    store: &dyn RunStore,
    pipeline: &Pipeline,
    run_id: &str,
) -> (PipelineLock, Option<RunLease>) {
    let what = format!("taking the run lock of {run_id}");
    let backoff =
        medallion_cluster::retry::forever(Duration::from_millis(200), Duration::from_secs(2));
    let lock = medallion_cluster::retry::until_ok(&what, backoff, || {
        store.lock_pipeline(pipeline.name(), &pipeline.lake_root)
    })
    .await;
    let lease = RunLease::acquire(pipeline, run_id, true)
        .await
        .inspect_err(|e| {
            tracing::warn!(run_id, error = format!("{e:#}"), "no run lease on the lake")
        })
        .ok();
    (lock, lease)
}

/// A resumed run reports what the previous leader committed for tables it now finds up to
/// date, so the report covers the whole run.
fn merge_earlier(mut report: RunReport, earlier: Vec<TableReport>) -> RunReport {
    let earlier: HashMap<String, TableReport> = earlier
        .into_iter()
        .filter(|t| matches!(t.status, TableStatus::Committed { .. }))
        .map(|t| (t.table.clone(), t))
        .collect();
    for table in &mut report.tables {
        if matches!(table.status, TableStatus::UpToDate)
            && let Some(before) = earlier.get(&table.table)
        {
            *table = before.clone();
        }
    }
    report
}

#[cfg(test)]
mod tests;
