//! Silver: one key partition of the input, typed, filtered and deduplicated.
//!
//! The steps, in order:
//! 1. compute every output column from its SQL expression and cast it to its declared type
//!    (a non-null value that does not cast fails the task, naming table, column and value);
//! 2. keep this task's key partition;
//! 3. keep rows for which every filter is true;
//! 4. keep, per key, the row with the greatest `latest_by` (ties: latest `_ingested_at`, then
//!    latest `_source_file`).

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::functions_window::expr_fn::row_number;
use datafusion::logical_expr::{ExprFunctionExt, ScalarUDF, SortExpr, cast, try_cast, when};
use datafusion::prelude::{DataFrame, Expr, col, lit};
use medallion_pipeline::spec::SilverSpec;
use medallion_pipeline::{TableRef, meta, types};
use medallion_proto::{TaskError, TaskMetrics, TransformWork};

use crate::{KeyPartition, Output, TaskContext, session, transient};

const LATEST: &str = "__medallion_latest";
const INGESTED: &str = "__medallion_ingested_at";
const FILE: &str = "__medallion_source_file";
const ROW_NUMBER: &str = "__medallion_row_number";

fn bad_value_column(i: usize) -> String {
    format!("__medallion_bad_{i}")
}

pub(crate) async fn run(ctx: &TaskContext, work: TransformWork) -> Result<Output, TaskError> {
    let spec = ctx
        .pipeline
        .silver(&ctx.table.name)
        .ok_or_else(|| TaskError::permanent(format!("no silver table '{}'", ctx.table.name)))?;
    let input: TableRef = spec.from.value.parse().map_err(TaskError::permanent)?;
    let session = session::new_session();
    session::register_table(
        &session,
        &ctx.pipeline,
        &ctx.storage_options,
        &input,
        work.input_version,
    )
    .await?;
    let source = session
        .table(datafusion::common::TableReference::partial(
            input.layer.as_str(),
            input.name.as_str(),
        ))
        .await
        .map_err(transient)?;

    let plan = Plan { ctx, spec };
    let executed = |e: datafusion::error::DataFusionError| crate::query_error(&ctx.table, e.into());
    let typed = plan.typed(source, &work)?.cache().await.map_err(executed)?;
    let rows_read = count(&typed).await?;
    plan.check_casts(&typed).await?;

    let filtered = plan.filtered(typed)?.cache().await.map_err(executed)?;
    let rows_kept = count(&filtered).await?;
    let deduped = plan.deduplicated(filtered)?;
    let out = deduped
        .select(
            spec.columns
                .iter()
                .map(|c| col(column_name(&c.name.value)))
                .collect::<Vec<_>>(),
        )
        .map_err(|e| plan.data_error(e))?;

    let (adds, schema, rows_written) = crate::write_result(ctx, out, &[])
        .await
        .map_err(|e| crate::query_error(&ctx.table, e))?;
    Ok(Output {
        adds,
        schema,
        metrics: TaskMetrics {
            rows_read,
            rows_written,
            rows_filtered: rows_read - rows_kept,
            rows_deduplicated: rows_kept - rows_written,
            ..Default::default()
        },
    })
}

async fn count(df: &DataFrame) -> Result<u64, TaskError> {
    Ok(df.clone().count().await.map_err(transient)? as u64)
}

/// An identifier as DataFusion's `col()` takes it, so names keep their case.
fn column_name(name: &str) -> datafusion::common::Column {
    datafusion::common::Column::new_unqualified(name)
}

struct Plan<'a> {
    ctx: &'a TaskContext,
    spec: &'a SilverSpec,
}

impl Plan<'_> {
    /// A SQL or data error in this table: the user's to fix, so not retried.
    fn data_error(&self, e: impl std::fmt::Display) -> TaskError {
        TaskError::permanent(format!("{}: {e}", self.ctx.table))
    }

    fn keys(&self) -> Vec<Expr> {
        self.spec
            .keys
            .iter()
            .map(|k| col(column_name(&k.value)))
            .collect()
    }

    fn parse(&self, df: &DataFrame, sql: &str, what: &str) -> Result<Expr, TaskError> {
        df.parse_sql_expr(sql)
            .map_err(|e| self.data_error(format!("{what} `{sql}`: {e}")))
    }

    /// Output columns computed and cast, with a flag column per typed column holding the
    /// text of a value that did not cast, and the ordering columns for deduplication.
    fn typed(&self, source: DataFrame, work: &TransformWork) -> Result<DataFrame, TaskError> {
        let has = |name: &str| source.schema().has_column_with_unqualified_name(name);
        let mut exprs = Vec::new();
        for (i, c) in self.spec.columns.iter().enumerate() {
            let name = &c.name.value;
            let e = self.parse(&source, &c.expr_sql(), &format!("column {name}"))?;
            match &c.data_type {
                None => exprs.push(e.alias(name)),
                Some(t) => {
                    let dt = types::parse_type(&t.value).map_err(TaskError::permanent)?;
                    let bad = when(
                        e.clone()
                            .is_not_null()
                            .and(try_cast(e.clone(), dt.clone()).is_null()),
                        cast(e.clone(), DataType::Utf8),
                    )
                    .end()
                    .map_err(|e| self.data_error(e))?;
                    exprs.push(try_cast(e, dt).alias(name));
                    exprs.push(bad.alias(bad_value_column(i)));
                }
            }
        }
        if let Some(latest) = &self.spec.latest_by {
            exprs.push(
                self.parse(&source, &latest.value, "latest_by")?
                    .alias(LATEST),
            );
        }
        for (meta, alias) in [(meta::INGESTED_AT, INGESTED), (meta::SOURCE_FILE, FILE)] {
            if has(meta) {
                exprs.push(col(column_name(meta)).alias(alias));
            }
        }
        let mut df = source.select(exprs).map_err(|e| self.data_error(e))?;
        if work.partitions > 1 {
            if self.spec.keys.is_empty() {
                return Err(self.data_error("split into partitions but has no keys to split by"));
            }
            let udf = ScalarUDF::from(KeyPartition::new(work.partitions));
            df = df
                .filter(
                    udf.call(self.keys())
                        .eq(lit(ScalarValue::UInt32(Some(work.partition)))),
                )
                .map_err(|e| self.data_error(e))?;
        }
        Ok(df)
    }

    /// Fails on the first value that did not cast to its column's declared type.
    async fn check_casts(&self, typed: &DataFrame) -> Result<(), TaskError> {
        for (i, c) in self.spec.columns.iter().enumerate() {
            let Some(t) = &c.data_type else { continue };
            let bad = bad_value_column(i);
            let mut select = vec![col(column_name(&bad))];
            if typed.schema().has_column_with_unqualified_name(FILE) {
                select.push(col(FILE));
            }
            let rows = typed
                .clone()
                .filter(col(column_name(&bad)).is_not_null())
                .and_then(|df| df.select(select))
                .and_then(|df| df.limit(0, Some(1)))
                .map_err(transient)?
                .collect()
                .await
                .map_err(transient)?;
            let Some(batch) = rows.iter().find(|b| b.num_rows() > 0) else {
                continue;
            };
            let value = ScalarValue::try_from_array(batch.column(0), 0).map_err(transient)?;
            let origin = match batch.num_columns() {
                2 => format!(
                    " (from {})",
                    ScalarValue::try_from_array(batch.column(1), 0).map_err(transient)?
                ),
                _ => String::new(),
            };
            return Err(self.data_error(format!(
                "column '{}': value '{value}' cannot be cast to {}{origin}",
                c.name.value, t.value
            )));
        }
        Ok(())
    }

    fn filtered(&self, typed: DataFrame) -> Result<DataFrame, TaskError> {
        let mut predicate: Option<Expr> = None;
        for f in &self.spec.filters {
            let e = self.parse(&typed, &f.value, "filter")?;
            predicate = Some(match predicate {
                None => e,
                Some(p) => p.and(e),
            });
        }
        match predicate {
            None => Ok(typed),
            Some(p) => typed.filter(p).map_err(|e| self.data_error(e)),
        }
    }

    /// Keeps the latest row per key.
    fn deduplicated(&self, df: DataFrame) -> Result<DataFrame, TaskError> {
        if self.spec.keys.is_empty() {
            return Ok(df);
        }
        let has = |name: &str| df.schema().has_column_with_unqualified_name(name);
        let order: Vec<SortExpr> = [LATEST, INGESTED, FILE]
            .into_iter()
            .filter(|c| has(c))
            .map(|c| col(c).sort(false, false))
            .collect();
        let rn = row_number()
            .partition_by(self.keys())
            .order_by(order)
            .build()
            .map_err(|e| self.data_error(e))?;
        df.with_column(ROW_NUMBER, rn)
            .and_then(|df| df.filter(col(ROW_NUMBER).eq(lit(1u64))))
            .map_err(|e| self.data_error(e))
    }
}
