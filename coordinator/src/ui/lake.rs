//! What the pages read from a lake directly, in both modes: a table's schema, history,
//! rows at a version and checks over time; and [`LakeConsole`], the console of
//! `medallion ui <spec>`, which knows runs from the lake's run history.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::SessionContext;
use medallion_lake::StorageOptions;
use medallion_lake::history::TableVersion;
use medallion_pipeline::{Pipeline, TableRef};
use medallion_proto::{ExecutorStatus, PipelineInfo, RunInfo, RunState};

use super::console::{Action, Console, UiError, Viewer};
use crate::auth::AccessRole;

/// Rows a table page previews.
pub const PREVIEW_ROWS: usize = 50;

/// A table as its page shows it; `None` fields: nothing committed yet.
pub struct TableView {
    pub version: Option<u64>,
    pub latest: Option<u64>,
    /// Name, type, nullable.
    pub columns: Vec<(String, String, bool)>,
    pub rows: u64,
    pub history: Vec<TableVersion>,
    /// Column names and the first rows, as text.
    pub preview: (Vec<String>, Vec<Vec<String>>),
    pub checks: Vec<CheckOutcome>,
}

/// One check's result in one run, from the check-results table.
pub struct CheckOutcome {
    pub run_id: String,
    pub check: String,
    pub severity: String,
    pub passed: bool,
    pub rows_failed: u64,
    pub rows_checked: u64,
    pub detail: Option<String>,
    pub checked_at_ms: i64,
}

/// Reads `table` of `pipeline` at `version` (the latest without one).
pub async fn table_view(
    pipeline: &Pipeline,
    table: &TableRef,
    version: Option<u64>,
) -> Result<TableView, UiError> {
    let opts = pipeline.lake_options();
    let uri = pipeline.table_uri(table);
    let checks = check_outcomes(pipeline, table).await?;
    let Some(latest) = medallion_lake::open_table(&uri, &opts).await? else {
        return Ok(TableView {
            version: None,
            latest: None,
            columns: Vec::new(),
            rows: 0,
            history: Vec::new(),
            preview: (Vec::new(), Vec::new()),
            checks,
        });
    };
    let latest_version = latest.version();
    let at = match version {
        Some(v) if Some(v) != latest_version => {
            if latest_version.is_some_and(|l| v > l) {
                return Err(UiError::NotFound(format!("{table} has no version {v}")));
            }
            medallion_lake::open_version(&uri, &opts, v)
                .await
                .map_err(|e| UiError::NotFound(format!("{e:#}")))?
        }
        _ => latest,
    };
    let ctx = SessionContext::new();
    medallion_lake::register_delta(&ctx, "t", &at).await?;
    let count = collect(&ctx, "SELECT count(*) FROM t").await?;
    let rows = count
        .first()
        .map(|b| b.column(0).as_primitive::<Int64Type>().value(0) as u64)
        .unwrap_or(0);
    let preview = collect(&ctx, &format!("SELECT * FROM t LIMIT {PREVIEW_ROWS}")).await?;
    // Delta's type names (`string`, `decimal(10,2)`), as Spark and Databricks show them.
    let snapshot = at.snapshot().map_err(anyhow::Error::from)?;
    let columns = snapshot
        .schema()
        .fields()
        .map(|f| (f.name().clone(), f.data_type().to_string(), f.is_nullable()))
        .collect();
    Ok(TableView {
        version: at.version(),
        latest: latest_version,
        columns,
        rows,
        history: medallion_lake::history::history(&uri, &opts, 30).await?,
        preview: as_text(&preview)?,
        checks,
    })
}

/// Each table's row count at its latest version; `None` for a table never committed.
pub async fn row_counts(pipeline: &Pipeline, tables: &[TableRef]) -> Vec<Option<u64>> {
    let opts: StorageOptions = pipeline.lake_options();
    let counts = tables.iter().map(|table| {
        let uri = pipeline.table_uri(table);
        let opts = &opts;
        async move {
            let batches = medallion_lake::query_table(&uri, opts, "t", "SELECT count(*) FROM t");
            match batches.await {
                Ok(Some(b)) => b
                    .first()
                    .map(|b| b.column(0).as_primitive::<Int64Type>().value(0) as u64),
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(table = %table, error = format!("{e:#}"), "cannot count rows");
                    None
                }
            }
        }
    });
    futures::future::join_all(counts).await
}

/// The latest results of the checks on `table`, newest first.
async fn check_outcomes(
    pipeline: &Pipeline,
    table: &TableRef,
) -> Result<Vec<CheckOutcome>, UiError> {
    let name = table.to_string().replace('\'', "''");
    let sql = format!(
        "SELECT run_id, \"check\", severity, passed, rows_failed, rows_checked, detail, \
         checked_at FROM checks WHERE \"table\" = '{name}' ORDER BY checked_at DESC LIMIT 100"
    );
    let uri = pipeline.check_results_uri();
    let Some(batches) =
        medallion_lake::query_table(&uri, &pipeline.lake_options(), "checks", &sql).await?
    else {
        return Ok(Vec::new());
    };
    let mut outcomes = Vec::new();
    for batch in &batches {
        let text = |name| strings(batch, name);
        let (runs, checks, severities, details) = (
            text("run_id")?,
            text("check")?,
            text("severity")?,
            text("detail")?,
        );
        let (failed, checked, at) = (
            integers(batch, "rows_failed")?,
            integers(batch, "rows_checked")?,
            integers(batch, "checked_at")?,
        );
        let passed = batch
            .column_by_name("passed")
            .map(|c| c.as_boolean().clone());
        for i in 0..batch.num_rows() {
            outcomes.push(CheckOutcome {
                run_id: runs[i].clone().unwrap_or_default(),
                check: checks[i].clone().unwrap_or_default(),
                severity: severities[i].clone().unwrap_or_default(),
                passed: passed.as_ref().is_some_and(|p| p.value(i)),
                rows_failed: failed[i].unwrap_or(0) as u64,
                rows_checked: checked[i].unwrap_or(0) as u64,
                detail: details[i].clone(),
                checked_at_ms: at[i].unwrap_or(0) / 1000,
            });
        }
    }
    Ok(outcomes)
}

async fn collect(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>, UiError> {
    let frame = ctx.sql(sql).await.map_err(anyhow::Error::from)?;
    Ok(frame.collect().await.map_err(anyhow::Error::from)?)
}

/// Batches as column names and rows of display text (nulls empty).
fn as_text(batches: &[RecordBatch]) -> Result<(Vec<String>, Vec<Vec<String>>), UiError> {
    let Some(first) = batches.first() else {
        return Ok((Vec::new(), Vec::new()));
    };
    let names = first
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let options = FormatOptions::default();
    let mut rows = Vec::new();
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(anyhow::Error::from)?;
        for row in 0..batch.num_rows() {
            rows.push(
                formatters
                    .iter()
                    .map(|f| f.value(row).to_string())
                    .collect(),
            );
        }
    }
    Ok((names, rows))
}

/// A column as text, whatever string type the reader gave it; missing: all nulls.
fn strings(batch: &RecordBatch, name: &str) -> Result<Vec<Option<String>>, UiError> {
    let Some(column) = batch.column_by_name(name) else {
        return Ok(vec![None; batch.num_rows()]);
    };
    let text = cast(column, &DataType::Utf8).map_err(anyhow::Error::from)?;
    let text = text.as_string::<i32>();
    Ok((0..text.len())
        .map(|i| text.is_valid(i).then(|| text.value(i).to_string()))
        .collect())
}

/// A numeric or timestamp column as i64 (timestamps in their unit).
fn integers(batch: &RecordBatch, name: &str) -> Result<Vec<Option<i64>>, UiError> {
    let Some(column) = batch.column_by_name(name) else {
        return Ok(vec![None; batch.num_rows()]);
    };
    let numbers = cast(column, &DataType::Int64).map_err(anyhow::Error::from)?;
    let numbers = numbers.as_primitive::<Int64Type>();
    Ok((0..numbers.len())
        .map(|i| numbers.is_valid(i).then(|| numbers.value(i)))
        .collect())
}

/// The console of `medallion ui <spec>`: one pipeline, its runs from the lake's run history
/// (`<lake>/_medallion/runs`), no executors and no actions (runs start from the CLI).
pub struct LakeConsole {
    pipeline: Arc<Pipeline>,
}

impl LakeConsole {
    pub fn new(pipeline: Pipeline) -> Self {
        Self {
            pipeline: Arc::new(pipeline),
        }
    }

    /// Runs of the history, newest first, optionally only `run_id`.
    async fn history(&self, run_id: Option<&str>, limit: usize) -> Result<Vec<RunInfo>, UiError> {
        let filter = match run_id {
            Some(id)
                if id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)) =>
            {
                format!("WHERE run_id = '{id}'")
            }
            Some(id) => return Err(UiError::NotFound(format!("no run '{id}'"))),
            None => String::new(),
        };
        let sql = format!("SELECT * FROM runs {filter} ORDER BY started_at DESC LIMIT {limit}");
        let uri = self.pipeline.run_history_uri();
        let opts = self.pipeline.lake_options();
        let Some(batches) = medallion_lake::query_table(&uri, &opts, "runs", &sql).await? else {
            return Ok(Vec::new());
        };
        let mut runs = Vec::new();
        for batch in &batches {
            let text = |name| strings(batch, name);
            let (ids, pipelines, ds, triggers, errors, reports) = (
                text("run_id")?,
                text("pipeline")?,
                text("ds")?,
                text("trigger")?,
                text("error")?,
                text("report")?,
            );
            let (started, took) = (
                integers(batch, "started_at")?,
                integers(batch, "duration_ms")?,
            );
            let succeeded = batch
                .column_by_name("succeeded")
                .map(|c| c.as_boolean().clone());
            for i in 0..batch.num_rows() {
                let started_ms = started[i].unwrap_or(0) / 1000;
                let ok = succeeded.as_ref().is_some_and(|s| s.value(i));
                runs.push(RunInfo {
                    run_id: ids[i].clone().unwrap_or_default(),
                    pipeline: pipelines[i].clone().unwrap_or_default(),
                    state: if ok {
                        RunState::Succeeded
                    } else {
                        RunState::Failed
                    } as i32,
                    submitted_ms: started_ms,
                    ended_ms: started_ms + took[i].unwrap_or(0),
                    report_json: reports[i].clone().unwrap_or_default(),
                    message: errors[i].clone().unwrap_or_default(),
                    ds: ds[i].clone().unwrap_or_default(),
                    trigger: triggers[i].clone().unwrap_or_default(),
                    ..Default::default()
                });
            }
        }
        Ok(runs)
    }
}

#[async_trait]
impl Console for LakeConsole {
    fn viewer(&self, _token: Option<&str>) -> Result<Viewer, UiError> {
        // Whoever can reach the port can read the lake this process reads.
        Ok(Viewer {
            name: "local".into(),
            role: AccessRole::Viewer,
            token: None,
        })
    }

    fn acts(&self) -> bool {
        false
    }

    async fn pipelines(&self, viewer: &Viewer) -> Result<Vec<PipelineInfo>, UiError> {
        let pipeline = &self.pipeline;
        let runs = self.runs(viewer, 50).await?;
        let schedule = pipeline.spec.schedule.as_ref().map(|s| {
            let details = s.value.details();
            let tz = details.timezone.unwrap_or_else(|| "UTC".into());
            format!("{} {tz}", details.cron)
        });
        Ok(vec![PipelineInfo {
            name: pipeline.name().to_string(),
            schedule: schedule.unwrap_or_default(),
            tags: pipeline.spec.tags.iter().map(|t| t.value.clone()).collect(),
            last_run: runs.first().cloned(),
            tables: crate::scheduler::table_freshness(pipeline, &runs).await,
            ..Default::default()
        }])
    }

    async fn pipeline(&self, _viewer: &Viewer, name: &str) -> Result<Arc<Pipeline>, UiError> {
        if name != self.pipeline.name() {
            return Err(UiError::NotFound(format!("no pipeline '{name}' here")));
        }
        Ok(self.pipeline.clone())
    }

    async fn runs(&self, _viewer: &Viewer, limit: usize) -> Result<Vec<RunInfo>, UiError> {
        self.history(None, limit).await
    }

    async fn run(&self, _viewer: &Viewer, run_id: &str) -> Result<RunInfo, UiError> {
        let found = self.history(Some(run_id), 1).await?.pop();
        found.ok_or_else(|| UiError::NotFound(format!("no run '{run_id}' in the run history")))
    }

    async fn executors(&self, _viewer: &Viewer) -> Result<Option<Vec<ExecutorStatus>>, UiError> {
        Ok(None)
    }

    async fn act(&self, _viewer: &Viewer, _action: Action) -> Result<String, UiError> {
        Err(UiError::Forbidden(
            "medallion ui only reads the lake: run pipelines with `medallion run`, or deploy \
             them to a cluster to act from here"
                .into(),
        ))
    }
}
