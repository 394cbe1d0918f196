//! One pipeline run: every table in dependency order, independent tables at the same time.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use datafusion::execution::runtime_env::RuntimeEnv;
use futures::stream::{FuturesUnordered, StreamExt};
use medallion_lake::TableFiles;
use medallion_pipeline::{Pipeline, TableRef};
use medallion_proto::{StagedFiles, TaskMetrics, TaskResult};

use crate::commit::{CommitContext, Committed, Rejected, Staged};
use crate::dispatch::{DispatchNames, TaskRunner, run_with_retries};
use crate::planner::{BallistaTarget, RunContext};
use crate::{history, maintenance, metrics, quality, snapshots};
use medallion_pipeline::report::{Metrics, RunEvent, RunReport, TableReport, TableStatus, TaskRun};

/// A new run's id: the pipeline, the UTC time, and a random suffix.
pub fn new_run_id(pipeline: &str) -> String {
    format!(
        "{pipeline}-{}-{}",
        Utc::now().format("%Y%m%dT%H%M%SZ"),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Receives run events as they happen.
pub trait RunObserver: Send + Sync {
    fn on_event(&self, event: RunEvent);
}

/// Runs pipelines: plans each table, dispatches its tasks and commits the result.
pub struct Coordinator<'a> {
    runner: &'a dyn TaskRunner,
    observer: &'a dyn RunObserver,
    ballista: Option<BallistaTarget>,
    full_refresh: bool,
    rerun: Rerun,
    /// What started the run, for the run history.
    trigger: String,
    /// The memory pool and spill space of the queries of commits (checks, merges).
    runtime: Arc<RuntimeEnv>,
    names: DispatchNames,
}

/// What a re-run of an earlier run keeps and rebuilds (`medallion rerun`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rerun {
    /// The run re-run.
    pub of: String,
    /// Tables that run committed: left as they are (`--from-failed`).
    pub keep: BTreeSet<TableRef>,
    /// Tables computed again from scratch and overwritten, with everything downstream
    /// (`--full-refresh <table>`).
    pub rebuild: BTreeSet<TableRef>,
}

impl<'a> Coordinator<'a> {
    pub fn new(runner: &'a dyn TaskRunner, observer: &'a dyn RunObserver) -> Self {
        Self {
            runner,
            observer,
            ballista: None,
            full_refresh: false,
            rerun: Rerun::default(),
            trigger: "manual".into(),
            runtime: Arc::default(),
            names: DispatchNames::new(1),
        }
    }

    /// This is the `start`-th start of the run: a leader resuming a run its previous leader
    /// left starts it again (1: the first). Its tasks write into directories of their own.
    pub fn with_start(mut self, start: u32) -> Self {
        self.names = DispatchNames::new(start);
        self
    }

    /// Commits' checks and merges run their queries on `runtime`, so its memory limit bounds
    /// them (embedded mode: the executors' runtime, one limit for the process).
    pub fn with_runtime(mut self, runtime: Arc<RuntimeEnv>) -> Self {
        self.runtime = runtime;
        self
    }

    /// What started the run ("scheduled", "backfill <id>", ...), as the run history says.
    pub fn with_trigger(mut self, trigger: &str) -> Self {
        self.trigger = trigger.to_string();
        self
    }

    /// Silver tables read all their input, not only what was committed since their last
    /// commit (after a fix to data already read, for instance).
    pub fn with_full_refresh(mut self, full_refresh: bool) -> Self {
        self.full_refresh = full_refresh;
        self
    }

    /// Runs again what an earlier run did not commit, or rebuilds tables (see [`Rerun`]).
    pub fn with_rerun(mut self, rerun: Rerun) -> Self {
        self.rerun = rerun;
        self
    }

    /// Gold queries may run on this Ballista cluster (see `GoldEngine`).
    pub fn with_ballista(mut self, ballista: Option<BallistaTarget>) -> Self {
        self.ballista = ballista;
        self
    }

    /// Runs every table of `pipeline` once. A failed table fails the run and skips what
    /// reads it; tables that do not depend on it still run.
    ///
    /// Running the same `run_id` again (a new leader resuming it) is safe: bronze skips the
    /// files already ingested, silver and gold skip tables whose inputs have not changed.
    pub async fn run(&self, pipeline: &Pipeline, run_id: &str) -> RunReport {
        // Every line of the run's work carries its run id and pipeline.
        let span = tracing::info_span!("run", run_id, pipeline = pipeline.name());
        tracing::Instrument::instrument(self.run_in_span(pipeline, run_id), span).await
    }

    async fn run_in_span(&self, pipeline: &Pipeline, run_id: &str) -> RunReport {
        let started = Instant::now();
        let now = Utc::now();
        tracing::info!(run_id, pipeline = pipeline.name(), "run started");
        let run = &RunContext {
            run_id,
            pipeline,
            storage_options: pipeline.lake_options(),
            ingested_at_micros: now.timestamp_micros(),
            ballista: self.ballista.as_ref(),
            full_refresh: self.full_refresh,
            rebuild: &self.rerun.rebuild,
            pending: &BTreeSet::new(),
        };

        let order = pipeline.dag.topological_order().unwrap_or_default();
        let mut finished = preflight(pipeline, &order).await;
        if finished.is_empty() {
            self.run_tables(run, order.clone(), &mut finished, started)
                .await;
        }

        let mut tables: Vec<TableReport> =
            order.iter().filter_map(|t| finished.remove(t)).collect();
        maintenance::after_run(pipeline, &run.storage_options, &mut tables).await;
        let succeeded = tables.iter().all(TableReport::succeeded);
        let mut report = RunReport {
            run_id: run_id.to_string(),
            pipeline: pipeline.name().to_string(),
            ds: pipeline.interval.ds(),
            started_at: now.to_rfc3339(),
            duration_ms: 0,
            succeeded,
            tables,
        };
        if succeeded && let Err(e) = snapshots::record(pipeline, run_id).await {
            // The run's tables stand; `--snapshot` of this run is refused.
            tracing::error!(
                run_id,
                error = format!("{e:#}"),
                "cannot record the run's snapshot"
            );
        }
        if let Err(e) = quality::record_results(pipeline, &report, now).await {
            // The tables are committed whatever happens here; the history misses this run.
            tracing::error!(
                run_id,
                error = format!("{e:#}"),
                "cannot record the check results"
            );
        }
        report.duration_ms = started.elapsed().as_millis() as u64;
        if let Err(e) = history::record_run(pipeline, &report, now, &self.trigger).await {
            tracing::error!(
                run_id,
                error = format!("{e:#}"),
                "cannot record the run in the run history"
            );
        }
        let state = if succeeded {
            medallion_proto::RunState::Succeeded
        } else {
            medallion_proto::RunState::Failed
        };
        metrics::run_ended(pipeline.name(), state);
        tracing::info!(
            run_id,
            succeeded,
            duration_ms = report.duration_ms,
            "run finished"
        );
        report
    }

    /// Runs each table as soon as the tables it reads have finished, as many at a time as are
    /// ready; a table that reads one that did not succeed is skipped.
    async fn run_tables(
        &self,
        run: &RunContext<'_>,
        mut pending: Vec<TableRef>,
        finished: &mut HashMap<TableRef, TableReport>,
        started: Instant,
    ) {
        let dag = &run.pipeline.dag;
        let mut running = FuturesUnordered::new();
        loop {
            let mut still_pending = Vec::new();
            for table in pending {
                let deps = dag.deps(&table);
                if let Some(failed) = deps
                    .iter()
                    .find(|d| finished.get(*d).is_some_and(|r| !r.succeeded()))
                {
                    let reason = format!("{failed} did not succeed");
                    let report = TableReport::new(&table, TableStatus::Skipped { reason });
                    self.observer.on_event(RunEvent::TableFinished {
                        report: Box::new(report.clone()),
                    });
                    finished.insert(table, report);
                } else if self.rerun.keep.contains(&table) {
                    let from_run = self.rerun.of.clone();
                    let report = TableReport::new(&table, TableStatus::Kept { from_run });
                    self.observer.on_event(RunEvent::TableFinished {
                        report: Box::new(report.clone()),
                    });
                    finished.insert(table, report);
                } else if deps.iter().all(|d| finished.contains_key(d)) {
                    let span = tracing::info_span!("table", stage = %table.layer, table = %table);
                    running.push(tracing::Instrument::instrument(
                        async move {
                            let report = self.run_table(run, &table, started).await;
                            (table, report)
                        },
                        span,
                    ));
                } else {
                    still_pending.push(table);
                }
            }
            pending = still_pending;
            let Some((table, report)) = running.next().await else {
                break;
            };
            self.observer.on_event(RunEvent::TableFinished {
                report: Box::new(report.clone()),
            });
            finished.insert(table, report);
        }
    }

    /// Plans, runs and commits one table.
    async fn run_table(
        &self,
        run: &RunContext<'_>,
        table: &TableRef,
        run_started: Instant,
    ) -> TableReport {
        let started = Instant::now();
        let mut report = TableReport::new(table, TableStatus::UpToDate);
        report.started_ms = started.duration_since(run_started).as_millis() as u64;
        // Whatever the table has not committed when the run's time is up stays uncommitted.
        let limit = run.pipeline.spec.timeouts.run();
        let deadline = tokio::time::Instant::from_std(run_started + limit);
        report.status =
            match tokio::time::timeout_at(deadline, self.stage(run, table, &mut report)).await {
                Ok(Ok(status)) => status,
                Ok(Err(e)) => TableStatus::Failed {
                    error: format!("{e:#}"),
                },
                Err(_) => TableStatus::Failed {
                    error: format!(
                        "the run's time ran out after {} (timeouts.run)",
                        humantime::format_duration(limit)
                    ),
                },
            };
        report.duration_ms = started.elapsed().as_millis() as u64;
        metrics::table_finished(run.pipeline, table, &report);
        match &report.status {
            TableStatus::Failed { error } => {
                tracing::error!(run_id = run.run_id, %table, error, "table failed")
            }
            status => {
                tracing::info!(run_id = run.run_id, %table, ?status, rows_written = report.metrics.rows_written, "table done")
            }
        }
        report
    }

    /// Runs a table's tasks at the same time, each with retries.
    async fn dispatch(
        &self,
        run: &RunContext<'_>,
        table: &TableRef,
        tasks: Vec<medallion_proto::Task>,
    ) -> Dispatched {
        let policy = run.pipeline.retry_policy(table);
        let table_start = std::time::Instant::now();
        let attempts = tasks.into_iter().map(|task| async move {
            let task_id = task.task_id.clone();
            let started = table_start.elapsed();
            let options = &run.storage_options;
            let names = &self.names;
            let ended = run_with_retries(self.runner, task, policy, names, options, |t, e| {
                tracing::warn!(task_id = t.task_id, attempt = t.attempt, error = %e, "task failed, retrying");
                self.observer.on_event(RunEvent::TaskRetried {
                    table: table.clone(),
                    task_id: t.task_id.clone(),
                    error: e.to_string(),
                });
            })
            .await;
            let result = ended.result;
            self.observer.on_event(RunEvent::TaskFinished {
                table: table.clone(),
                task_id: task_id.clone(),
                ok: result.is_ok(),
            });
            let metrics = result.as_ref().ok().and_then(|r| r.metrics.clone());
            let metrics = metrics.unwrap_or_default();
            // A task that ran: the time of the attempt that succeeded, as its executor
            // measured it, not the time it queued for a slot or failed before (0: a runner
            // that does not measure it).
            let finished = table_start.elapsed();
            let waited_and_ran = finished - started;
            let ran = match &result {
                Ok(_) if metrics.run_ms > 0 => {
                    waited_and_ran.min(Duration::from_millis(metrics.run_ms))
                }
                _ => waited_and_ran,
            };
            let task_run = TaskRun {
                task_id,
                executor: result.as_ref().map_or(String::new(), |r| r.executor.clone()),
                attempts: ended.attempts,
                started_ms: (finished - ran).as_millis() as u64,
                duration_ms: ran.as_millis() as u64,
                rows_read: metrics.rows_read,
                rows_written: metrics.rows_written,
                error: result.as_ref().err().map(|e| e.to_string()),
            };
            (result, task_run, ended.dirs)
        });
        let mut dispatched = Dispatched::default();
        for (result, task_run, dirs) in futures::future::join_all(attempts).await {
            match result {
                Ok(r) => dispatched.results.push(r),
                Err(e) => dispatched.first_error = dispatched.first_error.or(Some(e)),
            }
            dispatched.task_runs.push(task_run);
            dispatched.dirs.extend(dirs);
        }
        dispatched
    }

    /// Plans, dispatches and commits a table; when another writer commits to it meanwhile,
    /// plans it again from what that writer left.
    async fn stage(
        &self,
        run: &RunContext<'_>,
        table: &TableRef,
        report: &mut TableReport,
    ) -> anyhow::Result<TableStatus> {
        let mut conflicts = 0;
        loop {
            match self.stage_once(run, table, report).await {
                Err(Rejected::Conflict(e)) if conflicts < MAX_CONFLICTS => {
                    conflicts += 1;
                    tracing::warn!(%table, error = format!("{e:#}"), "another writer committed to the table meanwhile; planning it again");
                }
                Err(Rejected::Conflict(e)) => {
                    return Err(e.context(format!(
                        "{table}: other writers committed to it {} times while this run wrote it",
                        conflicts + 1
                    )));
                }
                Err(Rejected::Checks(checks)) => {
                    let failed: Vec<String> = checks
                        .iter()
                        .filter(|c| !c.passed && c.action == medallion_pipeline::spec::Action::Fail)
                        .map(|c| format!("{} ({} rows)", c.name, c.failing_rows))
                        .collect();
                    report.checks = checks;
                    return Ok(TableStatus::Failed {
                        error: format!(
                            "quality checks failed: {}; nothing committed",
                            failed.join(", ")
                        ),
                    });
                }
                Err(Rejected::Error(e)) => return Err(e),
                Ok(status) => return Ok(status),
            }
        }
    }

    async fn stage_once(
        &self,
        run: &RunContext<'_>,
        table: &TableRef,
        report: &mut TableReport,
    ) -> Result<TableStatus, Rejected> {
        let plan = run.plan(table).await?;
        report.tasks = plan.tasks.len();
        report.engine = plan.engine;
        report.refresh = plan.refresh.clone();
        report.files_changed = plan.source_changes.files_changed.clone();
        self.observer.on_event(RunEvent::TablePlanned {
            table: table.clone(),
            tasks: plan.tasks.len(),
        });
        if plan.tasks.is_empty() {
            return Ok(TableStatus::UpToDate);
        }

        let Dispatched {
            results,
            first_error,
            task_runs,
            dirs,
        } = self.dispatch(run, table, plan.tasks).await;
        report.retries = task_runs.iter().map(|t| (t.attempts - 1) as usize).sum();
        report.task_runs = task_runs;
        let mut metrics = TaskMetrics::default();
        results
            .iter()
            .filter_map(|r| r.metrics.as_ref())
            .for_each(|m| metrics += m);
        report.metrics = Metrics::from(&metrics);
        let commits = CommitContext {
            pipeline: run.pipeline,
            run_id: run.run_id,
            storage_options: &run.storage_options,
            runtime: &self.runtime,
        };
        if let Some(e) = first_error {
            // Files of the tasks that did succeed are never committed.
            if let Ok(staged) = staged_output(&results) {
                commits.discard(&plan.target, &staged).await;
            }
            commits
                .sweep(&plan.target, &dirs, &Default::default())
                .await;
            return Err(anyhow::anyhow!("{e}").into());
        }
        let staged = staged_output(&results)?;
        let keep = staged.dispatch_dirs();
        let commit = plan.commit.clone().read_up_to(&results)?;
        let checks = run.pipeline.checks(table);
        let started = std::time::Instant::now();
        let committed = commits
            .commit(&plan.target, &commit, staged, checks, &metrics)
            .await;
        // Unless the commit's outcome is unknown (it may have landed), nothing else of this
        // run's dispatches will ever be committed to the table.
        if !matches!(committed, Err(Rejected::Error(_))) {
            commits.sweep(&plan.target, &dirs, &keep).await;
        }
        let Committed {
            version,
            checks,
            check_ms,
            merge,
            ..
        } = committed?;
        report.checks = checks;
        report.metrics.check_ms = check_ms;
        report.metrics.commit_ms = started.elapsed().as_millis() as u64;
        if let Some(m) = merge {
            // A merge writes the rows it changes, not every row the tasks produced.
            report.metrics.rows_updated = m.rows_updated;
            report.metrics.rows_inserted = m.rows_inserted;
            report.metrics.rows_deleted = m.rows_deleted;
            report.metrics.files_rewritten = m.files_rewritten;
            report.metrics.rows_written = m.rows_updated + m.rows_inserted;
        }
        Ok(match version {
            Some(version) => {
                report.columns_added = plan.source_changes.columns_added;
                report.columns_widened = plan.source_changes.columns_widened;
                TableStatus::Committed { version }
            }
            None => TableStatus::UpToDate,
        })
    }
}

/// How many times a table is planned again after other writers' commits before the run
/// gives up on it.
const MAX_CONFLICTS: usize = 3;

/// What a table's tasks did.
#[derive(Default)]
struct Dispatched {
    /// Those of the tasks that succeeded.
    results: Vec<TaskResult>,
    /// The first error of those that did not.
    first_error: Option<medallion_proto::TaskError>,
    task_runs: Vec<TaskRun>,
    /// The directory of every dispatch of every task.
    dirs: Vec<String>,
}

/// Checks every source can be listed before anything is written, so a missing path stops
/// the run with all tables as they were. Returns the reports of a stopped run, or nothing.
async fn preflight(pipeline: &Pipeline, order: &[TableRef]) -> HashMap<TableRef, TableReport> {
    let mut failures = HashMap::new();
    for table in order
        .iter()
        .filter(|t| t.layer == medallion_pipeline::Layer::Bronze)
    {
        let Some(source) = pipeline
            .bronze(&table.name)
            .and_then(|b| pipeline.source(&b.source.value))
        else {
            continue;
        };
        if let Err(e) = crate::listing::list_source_files(pipeline, source).await {
            failures.insert(
                table.clone(),
                TableReport::new(
                    table,
                    TableStatus::Failed {
                        error: format!("{e:#}"),
                    },
                ),
            );
        }
    }
    if failures.is_empty() {
        return failures;
    }
    let failed: Vec<String> = failures.keys().map(ToString::to_string).collect();
    for table in order {
        failures.entry(table.clone()).or_insert_with(|| {
            TableReport::new(
                table,
                TableStatus::Skipped {
                    reason: format!(
                        "the run stopped before writing anything: {} failed",
                        failed.join(", ")
                    ),
                },
            )
        });
    }
    failures
}

/// Gathers the files of all tasks of a table; they must agree on the schema.
fn staged_output(results: &[TaskResult]) -> anyhow::Result<Staged> {
    let main = staged_files(results.iter().filter_map(|r| r.output.as_ref()))?
        .ok_or_else(|| anyhow::anyhow!("no task produced a result"))?;
    let quarantine = staged_files(results.iter().filter_map(|r| r.quarantine.as_ref()))?;
    Ok(Staged {
        adds: main.adds,
        schema: main.schema,
        quarantine: quarantine.filter(|q| !q.adds.is_empty()).map(|q| {
            Box::new(Staged {
                adds: q.adds,
                schema: q.schema,
                quarantine: None,
            })
        }),
    })
}

/// The files of one table the tasks wrote, if any task said what it wrote.
fn staged_files<'a>(
    outputs: impl Iterator<Item = &'a StagedFiles>,
) -> anyhow::Result<Option<TableFiles>> {
    let mut all: Option<TableFiles> = None;
    for output in outputs {
        let files = TableFiles::try_from(output)?;
        match &mut all {
            None => all = Some(files),
            Some(all) if all.schema == files.schema => all.adds.extend(files.adds),
            Some(all) => anyhow::bail!(
                "tasks produced different schemas: {:?} and {:?}",
                all.schema,
                files.schema
            ),
        }
    }
    Ok(all)
}
