//! The run history: a row per run in the Delta table `<lake>/_medallion/runs`
//! ([`Pipeline::run_history_uri`]), written when a run ends, in embedded mode and on a cluster.
//! The cluster prunes old run records from etcd; this table keeps every run's summary for
//! any Delta reader (like Delta Live Tables' event log).

use std::sync::Arc;

use anyhow::Result;
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, StringArray, TimestampMicrosecondArray, UInt64Array,
};
use medallion_pipeline::Pipeline;
use medallion_pipeline::report::{RunReport, TableStatus};

/// Appends `report`'s summary (the run started at `started`, by `trigger`) in one commit.
pub async fn record_run(
    pipeline: &Pipeline,
    report: &RunReport,
    started: chrono::DateTime<chrono::Utc>,
    trigger: &str,
) -> Result<()> {
    let count =
        |f: fn(&TableStatus) -> bool| report.tables.iter().filter(|t| f(&t.status)).count() as u64;
    let committed = count(|s| matches!(s, TableStatus::Committed { .. }));
    let failed = count(|s| matches!(s, TableStatus::Failed { .. }));
    let rows: u64 = report.tables.iter().map(|t| t.metrics.rows_written).sum();
    let error = report.tables.iter().find_map(|t| match &t.status {
        TableStatus::Failed { error } => Some(format!("{}: {error}", t.table)),
        _ => None,
    });
    let text = |v: &str| -> ArrayRef { Arc::new(StringArray::from(vec![v])) };
    let time = |micros: i64| -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from(vec![micros]).with_timezone("UTC"))
    };
    let number = |v: u64| -> ArrayRef { Arc::new(UInt64Array::from(vec![v])) };
    let interval = &pipeline.interval;
    let batch = medallion_lake::batch_of(vec![
        ("run_id", text(&report.run_id), false),
        ("pipeline", text(&report.pipeline), false),
        ("ds", text(&report.ds), false),
        (
            "data_interval_start",
            time(interval.start.timestamp_micros()),
            false,
        ),
        (
            "data_interval_end",
            time(interval.end.timestamp_micros()),
            false,
        ),
        ("trigger", text(trigger), false),
        (
            "succeeded",
            Arc::new(BooleanArray::from(vec![report.succeeded])),
            false,
        ),
        ("started_at", time(started.timestamp_micros()), false),
        ("duration_ms", number(report.duration_ms), false),
        ("tables_committed", number(committed), false),
        ("tables_failed", number(failed), false),
        ("rows_written", number(rows), false),
        ("error", Arc::new(StringArray::from(vec![error])), true),
    ])?;
    let opts = pipeline.storage_options.clone().into_iter().collect();
    medallion_lake::append(&pipeline.run_history_uri(), &opts, batch).await?;
    Ok(())
}
