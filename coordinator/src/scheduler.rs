//! Deployed pipelines and the leader's scheduler: runs on a schedule, triggered, and
//! backfilled.
//!
//! A deployment keeps a cursor: every scheduled interval starting before it has had its
//! run. The scheduler saves a run together with the moved cursor in one store transaction
//! that only applies if the deployment is unchanged ([`RunStore::schedule_run`]), so a leader
//! that dies between two ticks neither skips nor doubles a run: the next leader finds either
//! both the run (and resumes it) or neither. Backfills are cursors too, advanced one run at a
//! time under `max_active_runs`: thousands of intervals cost one record each as they are
//! queued, not up front.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use medallion_pipeline::report::{RunReport, TableStatus};
use medallion_pipeline::schedule::{RunInterval, Schedule};
use medallion_pipeline::{Pipeline, RunDate, TableRef};
use medallion_proto::{
    BackfillRecord, Deployment, PipelineInfo, RunInfo, RunState, SpecText, TableFreshness,
};
use tokio_util::sync::CancellationToken;

use crate::runs::{Origin, Runs, RunsError, new_record};
use crate::store::RunStore;

/// How often the scheduler looks for due runs.
const TICK: Duration = Duration::from_millis(500);

/// The deployed pipelines of a cluster, run by its leader.
pub struct Scheduler {
    runs: Arc<Runs>,
    store: Arc<dyn RunStore>,
    /// Deployment changes of this leader, one at a time: a deploy or a pause never overwrites
    /// a cursor the scheduler just moved.
    changes: tokio::sync::Mutex<()>,
    /// Ended runs are forgotten from the store after this (see [`Runs::prune`]).
    retention: Duration,
    /// Each deployment's spec as last parsed for its schedule, by name: a tick re-parses a
    /// spec only when its text changed.
    parsed: std::sync::Mutex<HashMap<String, (SpecText, Arc<Pipeline>)>>,
}

/// How often ended runs past their retention are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

impl Scheduler {
    pub fn new(runs: Arc<Runs>, store: Arc<dyn RunStore>, retention: Duration) -> Arc<Self> {
        Arc::new(Self {
            runs,
            store,
            changes: tokio::sync::Mutex::new(()),
            retention,
            parsed: Default::default(),
        })
    }

    /// A deployment's spec rendered for the latest interval, for what does not depend on the
    /// interval: its schedule, time zone, tables and tags.
    fn latest(&self, d: &Deployment) -> Result<Arc<Pipeline>, RunsError> {
        let spec = d.pipeline.clone().unwrap_or_default();
        let mut parsed = self.parsed.lock().expect("parsed specs");
        if let Some((text, pipeline)) = parsed.get(&d.name)
            && *text == spec
        {
            return Ok(pipeline.clone());
        }
        let pipeline = Arc::new(self.runs.admit(&spec, RunDate::Latest)?);
        parsed.insert(d.name.clone(), (spec, pipeline.clone()));
        Ok(pipeline)
    }

    /// Every deployed pipeline, parsed, by name.
    pub async fn deployed_all(&self) -> Result<Vec<Arc<Pipeline>>, RunsError> {
        let mut all = self.store.deployments().await.map_err(RunsError::Store)?;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all.iter().map(|d| self.latest(d)).collect()
    }

    /// The deployed pipeline `name`, parsed; without a name, the only one deployed.
    pub async fn deployed(&self, name: Option<&str>) -> Result<Arc<Pipeline>, RunsError> {
        let all = self.store.deployments().await.map_err(RunsError::Store)?;
        let found = match name {
            Some(name) => all.iter().find(|d| d.name == name),
            None if all.len() == 1 => all.first(),
            None => {
                let names: Vec<&str> = all.iter().map(|d| d.name.as_str()).collect();
                return Err(RunsError::BadRequest(format!(
                    "name the pipeline (x-medallion-pipeline): deployed are {}",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                )));
            }
        };
        let d =
            found.ok_or_else(|| RunsError::NotDeployed(name.unwrap_or_default().to_string()))?;
        self.latest(d)
    }

    async fn deployment(&self, name: &str) -> Result<Deployment, RunsError> {
        let all = self.store.deployments().await.map_err(RunsError::Store)?;
        all.into_iter()
            .find(|d| d.name == name)
            .ok_or_else(|| RunsError::NotDeployed(name.to_string()))
    }

    async fn save(&self, deployment: &Deployment) -> Result<PipelineInfo, RunsError> {
        let store = self.store.put_deployment(deployment).await;
        store.map_err(RunsError::Store)?;
        let runs = self.runs.list(0).await?;
        self.info(deployment, &runs).await
    }

    /// Registers a pipeline or updates its spec; a changed text is a new version. The
    /// schedule starts from `start_date`, or from now.
    pub async fn deploy(&self, mut spec: SpecText) -> Result<PipelineInfo, RunsError> {
        // Each run renders its own interval: the deployed text has none.
        (spec.interval_start_micros, spec.interval_end_micros) = (0, 0);
        let pipeline = self.runs.admit(&spec, RunDate::Latest)?;
        // Relative paths are the coordinator's, whatever directory the client had.
        spec.base_dir = pipeline.base_dir.display().to_string();
        let _changes = self.changes.lock().await;
        let existing = self.deployment(pipeline.name()).await.ok();
        let same = |d: &Deployment| {
            let old = d.pipeline.as_ref();
            old.is_some_and(|o| o.yaml == spec.yaml && o.base_dir == spec.base_dir)
        };
        let deployment = match existing {
            Some(d) if same(&d) => d,
            Some(d) => Deployment {
                version: d.version + 1,
                pipeline: Some(spec),
                deployed_ms: Utc::now().timestamp_millis(),
                ..d
            },
            None => {
                let start = pipeline.schedule().and_then(|s| s.start);
                Deployment {
                    name: pipeline.name().to_string(),
                    pipeline: Some(spec),
                    version: 1,
                    paused: false,
                    deployed_ms: Utc::now().timestamp_millis(),
                    cursor_micros: start.unwrap_or_else(Utc::now).timestamp_micros(),
                    backfills: Vec::new(),
                }
            }
        };
        tracing::info!(pipeline = %deployment.name, version = deployment.version, "deployed");
        self.save(&deployment).await
    }

    pub async fn pipelines(&self) -> Result<Vec<PipelineInfo>, RunsError> {
        let mut all = self.store.deployments().await.map_err(RunsError::Store)?;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        let runs = self.runs.list(0).await?;
        let mut infos = Vec::with_capacity(all.len());
        for d in &all {
            infos.push(self.info(d, &runs).await?);
        }
        Ok(infos)
    }

    pub async fn set_paused(&self, name: &str, paused: bool) -> Result<PipelineInfo, RunsError> {
        let _changes = self.changes.lock().await;
        let deployment = Deployment {
            paused,
            ..self.deployment(name).await?
        };
        tracing::info!(pipeline = name, paused, "schedule paused or resumed");
        self.save(&deployment).await
    }

    /// Stops scheduling the pipeline; its runs and tables stay.
    pub async fn undeploy(&self, name: &str) -> Result<PipelineInfo, RunsError> {
        let _changes = self.changes.lock().await;
        let deployment = self.deployment(name).await?;
        let info = self.info(&deployment, &self.runs.list(0).await?).await?;
        let deleted = self.store.delete_deployment(name).await;
        deleted.map_err(RunsError::Store)?;
        self.parsed.lock().expect("parsed specs").remove(name);
        crate::metrics::schedule_interval(name, None);
        Ok(info)
    }

    /// A run now, outside the schedule, of `date`'s interval or the latest one.
    pub async fn trigger(&self, name: &str, date: Option<NaiveDate>) -> Result<RunInfo, RunsError> {
        let deployment = self.deployment(name).await?;
        let spec = deployment.pipeline.clone().unwrap_or_default();
        let pipeline = self
            .runs
            .admit(&spec, date.map_or(RunDate::Latest, RunDate::Date))?;
        let origin = Origin {
            trigger: "manual".into(),
            spec_version: deployment.version,
        };
        self.runs.submit_pipeline(pipeline, false, origin).await
    }

    /// One run per interval starting on the days `from` to `to` (in the schedule's time
    /// zone; a day per run without a schedule), queued by the scheduler in order.
    pub async fn backfill(
        &self,
        name: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<PipelineInfo, RunsError> {
        if to < from {
            return Err(RunsError::BadRequest(format!(
                "--to {to} is before --from {from}"
            )));
        }
        let _changes = self.changes.lock().await;
        let mut deployment = self.deployment(name).await?;
        let tz = self.latest(&deployment)?.interval.tz;
        let start = RunInterval::day(from, tz).start;
        let end = RunInterval::day(to, tz).end;
        let id = format!("{}-{}", from.format("%Y%m%d"), to.format("%Y%m%d"));
        deployment.backfills.push(BackfillRecord {
            id: format!("{id}-{}", deployment.backfills.len() + 1),
            cursor_micros: start.timestamp_micros(),
            end_micros: end.timestamp_micros(),
            created_ms: Utc::now().timestamp_millis(),
        });
        tracing::info!(pipeline = name, %from, %to, "backfill queued");
        self.save(&deployment).await
    }

    /// What `medallion pipelines` shows of a deployment.
    /// `runs`: every run, newest first (read once for all deployments).
    async fn info(&self, d: &Deployment, runs: &[RunInfo]) -> Result<PipelineInfo, RunsError> {
        let pipeline = self.latest(d)?;
        let schedule = pipeline.schedule();
        let last_run = runs.iter().find(|r| r.pipeline == d.name).cloned();
        let now = Utc::now();
        let cursor = micros(d.cursor_micros);
        let next_run = schedule.as_ref().filter(|_| !d.paused).and_then(|s| {
            s.next_due(cursor, now)
                .map(|_| now)
                .or_else(|| s.next_run_at(cursor))
        });
        let described = pipeline.spec.schedule.as_ref().map(|s| {
            let details = s.value.details();
            let tz = details.timezone.unwrap_or_else(|| "UTC".into());
            format!("{} {tz}", details.cron)
        });
        let pending = d
            .backfills
            .iter()
            .map(|b| backfill_left(schedule.as_ref(), &pipeline, b));
        let tables = table_freshness(&pipeline, runs).await;
        Ok(PipelineInfo {
            name: d.name.clone(),
            version: d.version,
            paused: d.paused,
            schedule: described.unwrap_or_default(),
            tags: pipeline.spec.tags.iter().map(|t| t.value.clone()).collect(),
            next_run_ms: next_run.map_or(0, |t| t.timestamp_millis()),
            last_run,
            deployed_ms: d.deployed_ms,
            backfill_pending: pending.sum(),
            max_active_runs: schedule.as_ref().map_or(1, |s| s.max_active_runs),
            active_runs: self.runs.active_of(&d.name) as u32,
            tables,
        })
    }

    /// Queues the runs due at `now`: scheduled intervals first, then backfills, while the
    /// pipeline has fewer than `max_active_runs` runs. Returns how many were queued.
    pub async fn tick(&self, now: DateTime<Utc>) -> anyhow::Result<usize> {
        let _changes = self.changes.lock().await;
        let mut queued = 0;
        for mut deployment in self.store.deployments().await? {
            let spec = deployment.pipeline.clone().unwrap_or_default();
            let Ok(latest) = self.latest(&deployment) else {
                continue;
            };
            let schedule = latest.schedule();
            let interval = schedule
                .as_ref()
                .filter(|_| !deployment.paused)
                .and_then(|s| {
                    let next = s.interval_at_or_after(now)?;
                    (next.end - next.start).to_std().ok()
                });
            crate::metrics::schedule_interval(&deployment.name, interval);
            let limit = schedule.as_ref().map_or(1, |s| s.max_active_runs) as usize;
            let mut pruned = deployment.clone();
            if prune_backfills(&mut pruned, schedule.as_ref(), &latest) {
                self.store.put_deployment(&pruned).await?;
                deployment = pruned;
            }
            while self.runs.active_of(&deployment.name) < limit {
                let Some((next, interval, trigger)) =
                    next_run(&deployment, schedule.as_ref(), &latest, now)
                else {
                    break;
                };
                let run = self.runs.admit(
                    &spec,
                    RunDate::Interval {
                        start: interval.start,
                        end: interval.end,
                    },
                );
                let origin = Origin {
                    trigger,
                    spec_version: deployment.version,
                };
                let (record, pipeline) = match run {
                    Ok(pipeline) => (new_record(&pipeline, false, origin), Some(pipeline)),
                    // The interval's rendering does not validate: a failed run says so.
                    Err(e) => (failed_record(&deployment.name, &interval, origin, e), None),
                };
                if !self.store.schedule_run(&deployment, &next, &record).await? {
                    break;
                }
                let run_id = record.info.as_ref().map_or("", |i| &i.run_id);
                tracing::info!(pipeline = %deployment.name, ds = %interval.ds(), run_id, "scheduled run queued");
                match pipeline {
                    Some(pipeline) => self.runs.start_saved(record, pipeline),
                    None => crate::metrics::run_ended(&deployment.name, RunState::Failed),
                }
                deployment = next;
                queued += 1;
            }
        }
        Ok(queued)
    }

    /// Ticks until `stop` (this coordinator no longer leads).
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        // A new leader's staleness alerts start from the runs the previous leaders saved.
        for run in self.runs.list(0).await.unwrap_or_default() {
            if run.state == RunState::Succeeded as i32 && run.ended_ms > 0 {
                let ended = std::time::UNIX_EPOCH + Duration::from_millis(run.ended_ms as u64);
                crate::metrics::succeeded_at(&run.pipeline, ended);
            }
        }
        let mut pruned_at = tokio::time::Instant::now();
        loop {
            if let Err(e) = self.tick(Utc::now()).await {
                tracing::warn!(error = format!("{e:#}"), "scheduler tick failed");
            }
            if pruned_at.elapsed() >= PRUNE_EVERY {
                pruned_at = tokio::time::Instant::now();
                match self.runs.prune(self.retention).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(runs = n, "ended runs past their retention forgotten"),
                    Err(e) => tracing::warn!(error = format!("{e:#}"), "pruning runs failed"),
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }
}

/// Each table of `pipeline` with its last commit among `runs` (newest first), in dependency
/// order.
/// Each table's last commit: from the reports of `runs` (newest first), else from its Delta log.
pub(crate) async fn table_freshness(pipeline: &Pipeline, runs: &[RunInfo]) -> Vec<TableFreshness> {
    let mut tables = freshness(pipeline, runs);
    read_unknown_commits(pipeline, &mut tables).await;
    tables
}

fn freshness(pipeline: &Pipeline, runs: &[RunInfo]) -> Vec<TableFreshness> {
    let order = pipeline.dag.topological_order().unwrap_or_default();
    let mut found: HashMap<String, TableFreshness> = HashMap::new();
    let ended = runs
        .iter()
        .filter(|r| r.pipeline == pipeline.name() && !r.report_json.is_empty());
    for run in ended {
        if found.len() == order.len() {
            break;
        }
        let Ok(report) = serde_json::from_str::<RunReport>(&run.report_json) else {
            continue;
        };
        for t in report.tables {
            if let TableStatus::Committed { version } = t.status {
                found.entry(t.table.clone()).or_insert(TableFreshness {
                    table: t.table,
                    version,
                    committed_ms: run.ended_ms,
                    run_id: run.run_id.clone(),
                });
            }
        }
    }
    let table = |t: &TableRef| {
        found.remove(&t.to_string()).unwrap_or(TableFreshness {
            table: t.to_string(),
            ..Default::default()
        })
    };
    order.iter().map(table).collect()
}

/// Fills in, from the Delta log, the last commit of the tables no kept run record committed
/// (the runs that did were pruned, or another writer made the table).
async fn read_unknown_commits(pipeline: &Pipeline, tables: &mut [TableFreshness]) {
    let options = pipeline.lake_options();
    for t in tables.iter_mut().filter(|t| t.committed_ms == 0) {
        let Ok(table) = t.table.parse::<TableRef>() else {
            continue;
        };
        let uri = pipeline.table_uri(&table);
        match medallion_lake::last_commit(&uri, &options).await {
            Ok(Some((version, at))) => (t.version, t.committed_ms) = (version, at),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(table = %t.table, error = format!("{e:#}"), "cannot read the last commit")
            }
        }
    }
}

/// The deployment after its next due run, that run's interval and trigger: a scheduled
/// interval (not when paused), else the oldest backfill's next interval.
fn next_run(
    d: &Deployment,
    schedule: Option<&Schedule>,
    pipeline: &Pipeline,
    now: DateTime<Utc>,
) -> Option<(Deployment, RunInterval, String)> {
    let mut next = d.clone();
    if let Some(s) = schedule.filter(|_| !d.paused)
        && let Some(interval) = s.next_due(micros(d.cursor_micros), now)
    {
        next.cursor_micros = interval.end.timestamp_micros();
        return Some((next, interval, "scheduled".into()));
    }
    let b = next.backfills.first_mut()?;
    let interval = interval_at(schedule, pipeline, micros(b.cursor_micros))?;
    if interval.start.timestamp_micros() >= b.end_micros {
        return None;
    }
    b.cursor_micros = interval.end.timestamp_micros();
    let trigger = format!("backfill {}", b.id);
    Some((next, interval, trigger))
}

/// Drops the backfills that have queued all their intervals; true if any was.
fn prune_backfills(d: &mut Deployment, schedule: Option<&Schedule>, pipeline: &Pipeline) -> bool {
    let before = d.backfills.len();
    d.backfills.retain(|b| {
        interval_at(schedule, pipeline, micros(b.cursor_micros))
            .is_some_and(|i| i.start.timestamp_micros() < b.end_micros)
    });
    d.backfills.len() != before
}

/// The interval starting at or after `t`: the schedule's, or the day's without one.
fn interval_at(
    schedule: Option<&Schedule>,
    pipeline: &Pipeline,
    t: DateTime<Utc>,
) -> Option<RunInterval> {
    match schedule {
        Some(s) => s.interval_at_or_after(t),
        None => {
            let day = RunInterval::day(
                t.with_timezone(&pipeline.interval.tz).date_naive(),
                pipeline.interval.tz,
            );
            let day = if day.start < t {
                RunInterval::day(day.end.with_timezone(&day.tz).date_naive(), day.tz)
            } else {
                day
            };
            Some(day)
        }
    }
}

/// Intervals a backfill has still to queue.
fn backfill_left(schedule: Option<&Schedule>, pipeline: &Pipeline, b: &BackfillRecord) -> u64 {
    let mut cursor = micros(b.cursor_micros);
    let mut n = 0;
    while let Some(i) = interval_at(schedule, pipeline, cursor)
        && i.start.timestamp_micros() < b.end_micros
        && n < 1_000_000
    {
        cursor = i.end;
        n += 1;
    }
    n
}

/// The run of an interval whose spec does not validate once rendered for it: ended, failed,
/// with the errors, so it is seen (`medallion runs`, alerts) rather than skipped quietly.
fn failed_record(
    name: &str,
    interval: &RunInterval,
    origin: Origin,
    error: RunsError,
) -> medallion_proto::RunRecord {
    let now = Utc::now().timestamp_millis();
    let info = RunInfo {
        run_id: crate::run::new_run_id(name),
        pipeline: name.to_string(),
        state: RunState::Failed as i32,
        submitted_ms: now,
        ended_ms: now,
        message: format!("the spec does not validate for {}: {error}", interval.ds()),
        ds: interval.ds(),
        interval_start_micros: interval.start.timestamp_micros(),
        interval_end_micros: interval.end.timestamp_micros(),
        trigger: origin.trigger,
        spec_version: origin.spec_version,
        ..Default::default()
    };
    tracing::error!(pipeline = name, ds = %interval.ds(), error = %info.message, "cannot run interval");
    medallion_proto::RunRecord {
        info: Some(info),
        ..Default::default()
    }
}

fn micros(t: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t).unwrap_or_default()
}

#[cfg(test)]
mod tests;
