//! Silver: one key partition of the input, typed, filtered and deduplicated.
//!
//! The steps, in order:
//! 1. compute every output column from its SQL expression and cast it to its declared type;
//! 2. keep this task's key partition;
//! 3. keep rows for which every filter is true (a filter sees NULL for a value that did not
//!    cast);
//! 4. fail on a kept row with a non-null value that did not cast, naming table, column, value
//!    and source file;
//! 5. keep, per key, the row with the greatest `latest_by` (ties: latest `_ingested_at`, then
//!    latest `_source_file`).

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::logical_expr::{ScalarUDF, SortExpr, cast, try_cast, when};
use datafusion::prelude::{DataFrame, Expr, col, lit};
use medallion_pipeline::spec::SilverSpec;
use medallion_pipeline::{TableRef, meta, types};
use medallion_proto::{TaskError, TaskMetrics, TransformWork};

use crate::streams::{CastChecked, CheckedColumn, FirstPerKey};
use crate::{KeyPartition, Output, TaskContext, session, transient};
use datafusion::execution::SendableRecordBatchStream;

const LATEST: &str = "__medallion_latest";
const INGESTED: &str = "__medallion_ingested_at";
const FILE: &str = "__medallion_source_file";

fn bad_value_column(i: usize) -> String {
    format!("__medallion_bad_{i}")
}

pub(crate) async fn run(ctx: &TaskContext, work: TransformWork) -> Result<Output, TaskError> {
    let spec = ctx
        .pipeline
        .silver(&ctx.table.name)
        .ok_or_else(|| TaskError::permanent(format!("no silver table '{}'", ctx.table.name)))?;
    let input: TableRef = spec.from.value.parse().map_err(TaskError::permanent)?;
    let session = session::new_session(&ctx.runtime);
    session::register_table(
        &session,
        &ctx.pipeline,
        &ctx.storage_options,
        &input,
        work.input_version,
        session::Read::Delta,
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
    let typed = plan.typed(source, &work)?;
    // One light scan counts rows (it computes only what the filters need); a second streams
    // the rows out. Nothing is held in memory but what the dedupe sort needs.
    let predicate = plan.predicate(&typed)?;
    let counts = plan.count(&typed, predicate.as_ref()).await?;
    let kept = match predicate {
        Some(p) => typed.filter(p).map_err(|e| plan.data_error(e))?,
        None => typed,
    };
    let rows = plan.deduplicated(kept).await?;
    let (adds, schema, rows_written) = crate::write_result(ctx, rows).await?;
    Ok(Output {
        adds,
        schema,
        metrics: TaskMetrics {
            rows_read: counts.rows,
            rows_written,
            rows_filtered: counts.rows - counts.kept,
            rows_deduplicated: counts.kept - rows_written,
            ..Default::default()
        },
    })
}

/// What the counting scan found.
struct Counts {
    rows: u64,
    /// Rows that pass every filter.
    kept: u64,
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

    /// All the filters as one predicate (rows where it is NULL are dropped, as in SQL).
    fn predicate(&self, typed: &DataFrame) -> Result<Option<Expr>, TaskError> {
        let mut predicate: Option<Expr> = None;
        for f in &self.spec.filters {
            let e = self.parse(typed, &f.value, "filter")?;
            predicate = Some(match predicate {
                None => e,
                Some(p) => p.and(e),
            });
        }
        Ok(predicate)
    }

    /// Counts, in one scan, the rows and the rows the filters keep.
    async fn count(
        &self,
        typed: &DataFrame,
        predicate: Option<&Expr>,
    ) -> Result<Counts, TaskError> {
        let passes = match predicate {
            Some(p) => when(p.clone(), lit(1i64)).otherwise(lit(0i64)),
            None => Ok(lit(1i64)),
        }
        .map_err(|e| self.data_error(e))?;
        let batches = typed
            .clone()
            .aggregate(vec![], vec![count(lit(1i64)), sum(passes)])
            .map_err(|e| self.data_error(e))?
            .collect()
            .await
            .map_err(|e| crate::query_error(&self.ctx.table, e.into()))?;
        let row = batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .ok_or_else(|| self.data_error("the counting scan returned nothing"))?;
        let value = |c: usize| -> Result<u64, TaskError> {
            let v = ScalarValue::try_from_array(row.column(c), 0).map_err(transient)?;
            Ok(match v {
                ScalarValue::Int64(Some(n)) => n as u64,
                _ => 0,
            })
        };
        Ok(Counts {
            rows: value(0)?,
            kept: value(1)?,
        })
    }

    /// The output columns, every value checked against its declared type, and only the
    /// latest row per key: sorted by key, then latest first, and the first row of each key
    /// taken.
    async fn deduplicated(&self, kept: DataFrame) -> Result<SendableRecordBatchStream, TaskError> {
        let executed =
            |e: datafusion::error::DataFusionError| crate::query_error(&self.ctx.table, e.into());
        let has = |name: &str| kept.schema().has_column_with_unqualified_name(name);
        // The output columns, then what the cast check needs.
        let mut select: Vec<Expr> = self
            .spec
            .columns
            .iter()
            .map(|c| col(column_name(&c.name.value)))
            .collect();
        let mut checked = Vec::new();
        for (i, c) in self.spec.columns.iter().enumerate() {
            if let Some(t) = &c.data_type {
                checked.push(CheckedColumn {
                    name: c.name.value.clone(),
                    declared: t.value.clone(),
                    bad: select.len(),
                });
                select.push(col(column_name(&bad_value_column(i))));
            }
        }
        let file = has(FILE).then(|| {
            select.push(col(FILE));
            select.len() - 1
        });
        let stream = if self.spec.keys.is_empty() {
            kept.select(select)
        } else {
            let latest_first = [LATEST, INGESTED, FILE]
                .into_iter()
                .filter(|c| has(c))
                .map(|c| col(c).sort(false, false));
            let order: Vec<SortExpr> = self
                .keys()
                .into_iter()
                .map(|k| k.sort(true, true))
                .chain(latest_first)
                .collect();
            kept.sort(order).and_then(|df| df.select(select))
        }
        .map_err(|e| self.data_error(e))?
        .execute_stream()
        .await
        .map_err(executed)?;
        let checked =
            CastChecked::new(stream, self.spec.columns.len(), checked, file).map_err(executed)?;
        if self.spec.keys.is_empty() {
            return Ok(Box::pin(checked));
        }
        let key_indices = self
            .spec
            .keys
            .iter()
            .map(|k| {
                self.spec
                    .columns
                    .iter()
                    .position(|c| c.name.value == k.value)
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| self.data_error("a key is not one of the columns"))?;
        let first = FirstPerKey::new(Box::pin(checked), key_indices).map_err(executed)?;
        Ok(Box::pin(first))
    }
}
