//! The executor's Prometheus metrics (served by `medallion-executor` on `--metrics-listen`):
//! what this process ran, by layer. What was committed is the coordinator's to count.

use std::sync::LazyLock;
use std::time::Duration;

use medallion_proto::{TaskError, TaskResult};
use prometheus::{
    HistogramVec, IntCounterVec, IntGauge, exponential_buckets, register_histogram_vec,
    register_int_counter_vec, register_int_gauge,
};

static RUNNING: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("medallion_executor_tasks_running", "Tasks running now.").expect("metric")
});

static TASKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "medallion_executor_tasks_total",
        "Tasks that ended, by layer and outcome (succeeded, permanent, transient, lost).",
        &["layer", "outcome"]
    )
    .expect("metric")
});

static TASK_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "medallion_executor_task_seconds",
        "Time a task took on this executor.",
        &["layer"],
        exponential_buckets(0.05, 2.0, 16).expect("buckets")
    )
    .expect("metric")
});

static ROWS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "medallion_executor_rows_total",
        "Rows tasks read and wrote (written files are committed by the coordinator, or not).",
        &["layer", "direction"]
    )
    .expect("metric")
});

static BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "medallion_executor_bytes_total",
        "Bytes tasks read and wrote.",
        &["layer", "direction"]
    )
    .expect("metric")
});

/// Registers every metric, so a scrape shows them before any task ran.
pub fn init() {
    LazyLock::force(&RUNNING);
    LazyLock::force(&TASKS);
    LazyLock::force(&TASK_SECONDS);
    LazyLock::force(&ROWS);
    LazyLock::force(&BYTES);
}

/// Counts the task as running while the guard lives.
pub(crate) struct Running;

impl Running {
    pub(crate) fn start() -> Self {
        RUNNING.inc();
        Self
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.dec();
    }
}

pub(crate) fn task_ended(layer: &str, took: Duration, outcome: &Result<TaskResult, TaskError>) {
    TASK_SECONDS
        .with_label_values(&[layer])
        .observe(took.as_secs_f64());
    let name = match outcome {
        Ok(_) => "succeeded".to_string(),
        Err(e) => format!("{:?}", e.kind).to_lowercase(),
    };
    TASKS.with_label_values(&[layer, &name]).inc();
    if let Some(m) = outcome.as_ref().ok().and_then(|r| r.metrics.as_ref()) {
        for (direction, rows, bytes) in [
            ("read", m.rows_read, m.bytes_read),
            ("written", m.rows_written, m.bytes_written),
        ] {
            ROWS.with_label_values(&[layer, direction]).inc_by(rows);
            BYTES.with_label_values(&[layer, direction]).inc_by(bytes);
        }
    }
}
