//! The coordinator's Prometheus metrics (served by `medallion-coordinator` on
//! `--metrics-listen`). Table metrics are labelled by pipeline, layer and source: a bronze
//! table's source is the source it ingests, a silver or gold table's is its own name.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::SystemTime;

use medallion_pipeline::{Layer, Pipeline, TableRef};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    GaugeVec, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    exponential_buckets, register_gauge_vec, register_histogram_vec, register_int_counter,
    register_int_counter_vec, register_int_gauge, register_int_gauge_vec,
};

use medallion_pipeline::report::{TableReport, TableStatus};

const TABLE_LABELS: [&str; 3] = ["pipeline", "layer", "source"];

static RECORDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "pipeline_records_processed_total",
        "Rows committed to tables (merges: rows updated plus inserted).",
        &TABLE_LABELS
    )
    .expect("metric")
});

static PROCESSING: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "pipeline_processing_seconds",
        "Time to plan, run, check and commit a table.",
        &TABLE_LABELS,
        exponential_buckets(0.05, 2.0, 16).expect("buckets")
    )
    .expect("metric")
});

static BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "pipeline_bytes_total",
        "Bytes tables' tasks read (source files, input table versions) and wrote.",
        &["pipeline", "layer", "source", "direction"]
    )
    .expect("metric")
});

static CHECK_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "pipeline_quality_check_failures_total",
        "Quality checks that failed, by severity.",
        &["pipeline", "layer", "severity"]
    )
    .expect("metric")
});

static RUNS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "medallion_runs_total",
        "Runs that ended, by pipeline and status (succeeded, failed, cancelled).",
        &["pipeline", "status"]
    )
    .expect("metric")
});

static TASKS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "medallion_tasks",
        "Tasks now waiting for an executor slot (queued) or on an executor (running).",
        &["state"]
    )
    .expect("metric")
});

static TASK_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "medallion_task_failures_total",
        "Task attempts that failed, by kind (permanent, transient, lost).",
        &["kind"]
    )
    .expect("metric")
});

static TASK_RETRIES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "medallion_task_retries_total",
        "Task attempts sent again after a failure or a lost executor."
    )
    .expect("metric")
});

static EXECUTORS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("medallion_executors_alive", "Executors registered in etcd.")
        .expect("metric")
});

static LAST_SUCCESS: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "medallion_pipeline_last_success_timestamp_seconds",
        "When the pipeline's last successful run ended (Unix time).",
        &["pipeline"]
    )
    .expect("metric")
});

static SCHEDULE_INTERVAL: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "medallion_pipeline_schedule_interval_seconds",
        "The interval between two scheduled runs of a deployed, unpaused pipeline.",
        &["pipeline"]
    )
    .expect("metric")
});

static LEADER: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "medallion_coordinator_leader",
        "1 on the coordinator that leads, 0 on a standby."
    )
    .expect("metric")
});

static FORWARDED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "medallion_client_calls_forwarded_total",
        "Client calls this coordinator, a standby, forwarded to the leader, by outcome.",
        &["outcome"]
    )
    .expect("metric")
});

/// Seconds since each table's last successful commit, computed when scraped.
static FRESHNESS: LazyLock<&'static Freshness> = LazyLock::new(|| {
    let freshness: &'static Freshness = Box::leak(Box::new(Freshness::new()));
    prometheus::register(Box::new(freshness)).expect("metric");
    freshness
});

struct Freshness {
    committed: Mutex<HashMap<[String; 3], SystemTime>>,
    gauge: GaugeVec,
}

impl Freshness {
    fn new() -> Self {
        let opts = Opts::new(
            "pipeline_data_freshness_seconds",
            "Seconds since the table's last successful commit.",
        );
        Self {
            committed: Mutex::new(HashMap::new()),
            gauge: GaugeVec::new(opts, &TABLE_LABELS).expect("metric"),
        }
    }
}

impl Collector for &'static Freshness {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now = SystemTime::now();
        if let Ok(committed) = self.committed.lock() {
            for (labels, at) in committed.iter() {
                let age = now.duration_since(*at).unwrap_or_default().as_secs_f64();
                self.gauge.with_label_values(labels).set(age);
            }
        }
        self.gauge.collect()
    }
}

/// Registers every metric, so a scrape shows them before anything has happened.
pub fn init() {
    LazyLock::force(&RECORDS);
    LazyLock::force(&PROCESSING);
    LazyLock::force(&BYTES);
    LazyLock::force(&CHECK_FAILURES);
    LazyLock::force(&RUNS);
    LazyLock::force(&TASKS);
    LazyLock::force(&TASK_FAILURES);
    LazyLock::force(&TASK_RETRIES);
    LazyLock::force(&EXECUTORS);
    LazyLock::force(&FORWARDED);
    LazyLock::force(&FRESHNESS);
    LazyLock::force(&LAST_SUCCESS);
    LazyLock::force(&SCHEDULE_INTERVAL);
    LazyLock::force(&LEADER);
}

/// A standby forwarded a client call to the leader (`reached`: whether the leader answered).
pub(crate) fn call_forwarded(reached: bool) {
    let outcome = if reached {
        "forwarded"
    } else {
        "leader_unreachable"
    };
    FORWARDED.with_label_values(&[outcome]).inc();
}

fn labels(pipeline: &Pipeline, table: &TableRef) -> [String; 3] {
    let source = match table.layer {
        Layer::Bronze => pipeline
            .bronze(&table.name)
            .map_or_else(|| table.name.clone(), |b| b.source.value.clone()),
        Layer::Silver | Layer::Gold => table.name.clone(),
    };
    [pipeline.name().to_string(), table.layer.to_string(), source]
}

/// A table of a run finished.
pub(crate) fn table_finished(pipeline: &Pipeline, table: &TableRef, report: &TableReport) {
    let labels = labels(pipeline, table);
    for check in report.checks.iter().filter(|c| !c.passed) {
        CHECK_FAILURES
            .with_label_values(&[&labels[0], &labels[1], check.severity.name()])
            .inc();
    }
    let m = &report.metrics;
    for (direction, bytes) in [("read", m.bytes_read), ("written", m.bytes_written)] {
        BYTES
            .with_label_values(&[&labels[0], &labels[1], &labels[2], direction])
            .inc_by(bytes);
    }
    if let TableStatus::Committed { .. } = report.status {
        RECORDS.with_label_values(&labels).inc_by(m.rows_written);
        PROCESSING
            .with_label_values(&labels)
            .observe(report.duration_ms as f64 / 1000.0);
        if let Ok(mut committed) = FRESHNESS.committed.lock() {
            committed.insert(labels, SystemTime::now());
        }
    }
}

pub(crate) fn run_ended(pipeline: &str, state: medallion_proto::RunState) {
    RUNS.with_label_values(&[pipeline, state.name()]).inc();
    if state == medallion_proto::RunState::Succeeded {
        succeeded_at(pipeline, SystemTime::now());
    }
}

/// A run of `pipeline` succeeded at `at` (a new leader learns the last ones from etcd).
pub(crate) fn succeeded_at(pipeline: &str, at: SystemTime) {
    let at = at.duration_since(SystemTime::UNIX_EPOCH);
    let at = at.unwrap_or_default().as_secs_f64();
    let gauge = LAST_SUCCESS.with_label_values(&[pipeline]);
    gauge.set(gauge.get().max(at));
}

/// This coordinator leads (1) or stands by (0).
pub(crate) fn leading(yes: bool) {
    LEADER.set(i64::from(yes));
}

/// The scheduled interval of a deployed pipeline whose schedule runs (`None`: paused,
/// undeployed or unscheduled, so it cannot be late).
pub(crate) fn schedule_interval(pipeline: &str, interval: Option<std::time::Duration>) {
    match interval {
        Some(i) => SCHEDULE_INTERVAL
            .with_label_values(&[pipeline])
            .set(i.as_secs_f64()),
        None => {
            let _ = SCHEDULE_INTERVAL.remove_label_values(&[pipeline]);
        }
    }
}

/// Where a dispatched task is: waiting for an executor's slot, or running on one.
#[derive(Debug, Clone, Copy)]
pub(crate) enum TaskPhase {
    Queued,
    Running,
}

impl TaskPhase {
    fn name(self) -> &'static str {
        match self {
            TaskPhase::Queued => "queued",
            TaskPhase::Running => "running",
        }
    }

    /// Counts a task in this phase while the guard lives.
    pub(crate) fn enter(self) -> InPhase {
        TASKS.with_label_values(&[self.name()]).inc();
        InPhase(self)
    }
}

/// A task counted in a phase (see [`TaskPhase::enter`]).
pub(crate) struct InPhase(TaskPhase);

impl Drop for InPhase {
    fn drop(&mut self) {
        TASKS.with_label_values(&[self.0.name()]).dec();
    }
}

pub(crate) fn task_failed(kind: medallion_proto::Failure, retried: bool) {
    TASK_FAILURES.with_label_values(&[kind.name()]).inc();
    if retried {
        TASK_RETRIES.inc();
    }
}

pub(crate) fn executors_alive(n: usize) {
    EXECUTORS.set(n as i64);
}
