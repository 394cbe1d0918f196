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
        // The whole report, for `medallion ui` (absent in rows written before it existed).
        ("report", text(&serde_json::to_string(report)?), true),
    ])?;
    let opts = pipeline.lake_options();
    medallion_lake::append(&pipeline.run_history_uri(), &opts, batch).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use medallion_pipeline::report::RunReport;

    use super::record_run;
    use crate::testing::pipeline;

    fn report(n: usize) -> RunReport {
        RunReport {
            run_id: format!("r{n}"),
            pipeline: "t".into(),
            ds: String::new(),
            started_at: String::new(),
            duration_ms: n as u64,
            succeeded: true,
            tables: Vec::new(),
        }
    }

    /// The rows of the run history: (count, sum of duration_ms), read by DataFusion.
    async fn history(uri: &str) -> (deltalake::DeltaTable, String) {
        let table = medallion_lake::open_table(uri, &Default::default()).await;
        let table = table.unwrap().expect("a history table");
        let ctx = datafusion::prelude::SessionContext::new();
        medallion_lake::register_delta(&ctx, "h", &table)
            .await
            .unwrap();
        let query = ctx.sql("SELECT count(*) AS n, sum(duration_ms) AS total FROM h");
        let batches = query.await.unwrap().collect().await.unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches).unwrap();
        (table, text.to_string())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_ending_at_once_share_commits_and_none_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let p = pipeline(dir.path(), "");
        let now = chrono::Utc::now();
        let ended = (0..64).map(|n| {
            let p = &p;
            async move { record_run(p, &report(n), now, "backfill").await.unwrap() }
        });
        futures::future::join_all(ended).await;
        let (table, rows) = history(&p.run_history_uri()).await;
        assert!(rows.contains("| 64 | 2016"), "{rows}");
        let commits = table.version().unwrap() + 1;
        assert!(commits < 64, "64 runs in {commits} commits");
    }

    #[tokio::test]
    async fn a_history_another_process_wrote_to_is_appended_after_its_commits() {
        let dir = tempfile::tempdir().unwrap();
        let p = pipeline(dir.path(), "");
        let now = chrono::Utc::now();
        record_run(&p, &report(1), now, "manual").await.unwrap();
        // Another coordinator's commit (a copy of the row), behind this process's kept handle.
        let (other, row) = history(&p.run_history_uri()).await;
        assert!(row.contains("| 1 | 1"), "{row}");
        let ctx = datafusion::prelude::SessionContext::new();
        medallion_lake::register_delta(&ctx, "h", &other)
            .await
            .unwrap();
        let copy = ctx.sql("SELECT * FROM h").await.unwrap();
        other.write(copy.collect().await.unwrap()).await.unwrap();
        record_run(&p, &report(5), now, "manual").await.unwrap();
        let (table, rows) = history(&p.run_history_uri()).await;
        assert_eq!(table.version(), Some(2));
        assert!(rows.contains("| 3 | 7"), "{rows}");
    }

    /// A history written before runs recorded their report gains the column on the next
    /// run's append; its older rows read as null there.
    #[tokio::test]
    async fn a_history_from_before_the_report_column_gains_it() {
        let (old, new) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (old, new) = (pipeline(old.path(), ""), pipeline(new.path(), ""));
        let now = chrono::Utc::now();
        record_run(&old, &report(1), now, "manual").await.unwrap();
        let (table, _) = history(&old.run_history_uri()).await;
        let ctx = datafusion::prelude::SessionContext::new();
        medallion_lake::register_delta(&ctx, "h", &table)
            .await
            .unwrap();
        let rows = ctx.sql("SELECT * EXCLUDE (report) FROM h").await.unwrap();
        let rows = rows.collect().await.unwrap();
        let uri = new.run_history_uri();
        medallion_lake::append(&uri, &Default::default(), rows[0].clone())
            .await
            .unwrap();
        record_run(&new, &report(2), now, "manual").await.unwrap();
        let (table, _) = history(&uri).await;
        let ctx = datafusion::prelude::SessionContext::new();
        medallion_lake::register_delta(&ctx, "h", &table)
            .await
            .unwrap();
        let counts = ctx.sql("SELECT count(*) AS n, count(report) AS reports FROM h");
        let batches = counts.await.unwrap().collect().await.unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches).unwrap();
        assert!(text.to_string().contains("| 2 | 1 "), "{text}");
    }
}
