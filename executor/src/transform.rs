//! Silver: one key partition of the input, typed, filtered and deduplicated.
//!
//! The steps, in order:
//! 1. compute every output column from its SQL expression and cast it to its declared type;
//! 2. keep this task's key partition;
//! 3. keep rows for which every filter is true (a filter sees NULL for a value that did not
//!    cast);
//! 4. fail on a kept row with a non-null value that did not cast, naming table, column, value
//!    and source file;
//! 5. take out the rows the table's `drop` and `quarantine` checks fail ([`crate::screen`]);
//! 6. keep, per key, the row with the greatest `latest_by` (ties: latest `_ingested_at`, then
//!    latest `_source_file`).
//!
//! A CDC table (`mode: cdc`) computes its columns and the sequence, delete and truncate of
//! each change in step 1, leaves out the changes a truncate emptied, applies the rest as SCD
//! type 1 or 2 ([`crate::cdc`]) in place of step 6, then checks and screens the rows that gives.
//!
//! A task of an incremental refresh reads only the input rows committed since the table was
//! last computed; the coordinator merges its rows into the table. A CDC table's incremental
//! task recomputes only the keys those rows touch, from all the changes of those keys (so a
//! late change lands at its place), and names each touched key in a row of its own
//! ([`TOUCHED_KEY`]): the coordinator replaces every stored row of those keys.

use datafusion::arrow::array::{ArrayRef, BooleanArray, RecordBatch, new_null_array};
use datafusion::arrow::compute::cast as cast_array;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::common::JoinType;
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::functions_aggregate::expr_fn::max;
use datafusion::logical_expr::{ExprSchemable, ScalarUDF, SortExpr, cast, try_cast, when};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::{DataFrame, Expr, SessionContext, coalesce, col, lit, not};
use futures::StreamExt;
use medallion_pipeline::spec::{SCD_END, SCD_START, SilverSpec, TOUCHED_KEY};
use medallion_pipeline::{TableRef, meta, types};
use medallion_proto::{TaskError, TaskMetrics, TransformWork};
use std::sync::Arc;

use crate::cdc;
use crate::screen::Screening;
use crate::streams::{CastChecked, CheckedColumn, FilterCounts, Filtered, FirstPerKey, Once};
use crate::{Executed, KeyPartition, Output, TaskContext, session, transient};
use datafusion::execution::SendableRecordBatchStream;

const PASS: &str = "__medallion_pass";
const LATEST: &str = "__medallion_latest";
const INGESTED: &str = "__medallion_ingested_at";
const FILE: &str = "__medallion_source_file";
const DELETE: &str = "__medallion_delete";
const TRUNCATE: &str = "__medallion_truncate";

fn bad_value_column(i: usize) -> String {
    format!("__medallion_bad_{i}")
}

/// The `i`th key column of the keys an incremental CDC refresh recomputes.
fn touched_column(i: usize) -> String {
    format!("__medallion_touched_{i}")
}

pub(crate) async fn run(ctx: &TaskContext, work: TransformWork) -> Result<Output, TaskError> {
    let spec = ctx
        .pipeline
        .silver(&ctx.table.name)
        .ok_or_else(|| TaskError::permanent(format!("no silver table '{}'", ctx.table.name)))?;
    let input: TableRef = spec.from.value.parse().map_err(TaskError::permanent)?;
    let session = session::new_session(&ctx.runtime);
    // A CDC table recomputes the keys the new changes touch from all their changes, so it
    // reads its whole input; any other table reads only the new rows.
    let read = match work.changes_after {
        Some(after) if spec.scd_type().is_none() => session::Read::After(after),
        _ => session::Read::Delta,
    };
    let bytes_read = session::register_table(
        &session,
        &ctx.pipeline,
        &ctx.storage_options,
        &input,
        work.input_version,
        read,
    )
    .await?;
    let source = session
        .table(session::table_reference(&input))
        .await
        .map_err(transient)?;

    let plan = Plan {
        ctx,
        spec,
        executed: Executed::default(),
    };
    let typed = plan.typed(source.clone())?;
    let truncated_at = plan.truncated_at(&typed).await?;
    let cuts = match read {
        session::Read::Delta if spec.scd_type().is_none() => {
            plan.key_cuts(&input, &work, &typed).await?
        }
        _ => None,
    };
    let typed = plan.partitioned(typed, &work, cuts.as_deref())?;
    let touched = match (spec.scd_type(), work.changes_after) {
        (Some(_), Some(after)) => Some(plan.touched_keys(&work, after).await?),
        _ => None,
    };
    let typed = match &touched {
        Some(keys) => plan.of_keys(&session, typed, keys)?,
        None => typed,
    };
    // A table deduplicated by sorting checks its casts before the sort, so the sort does not
    // carry the columns that check reads; a CDC table checks the rows its changes give.
    let casts_checked = spec.scd_type().is_none();
    let (kept, counts) = plan.filtered(typed, casts_checked).await?;
    // Rows that only name a touched key, not rows of the table.
    let mut markers = 0;
    let (rows, screening) = match spec.scd_type() {
        None => plan.deduplicated(kept).await?,
        Some(scd) => {
            let changes = plan.applied(kept, scd, truncated_at)?;
            let (rows, screening) = plan.checked(changes, false).await?;
            match touched {
                Some(keys) => {
                    markers = keys.iter().map(|b| b.num_rows() as u64).sum();
                    plan.with_touched_keys(rows, screening, keys)?
                }
                None => (rows, screening),
            }
        }
    };
    // Filled as the rows stream out; read once the output is written.
    let written = crate::write_result(ctx, rows, TaskMetrics::default(), screening).await;
    plan.executed.log(&ctx.table);
    let mut out = match written {
        Ok(out) => out,
        Err(e) if e.kind == medallion_proto::Failure::Permanent => {
            return Err(plan.column_at_fault(&source).await.unwrap_or(e));
        }
        Err(e) => return Err(e),
    };
    let (rows_read, rows_kept) = counts.get();
    out.metrics.rows_written = out.metrics.rows_written.saturating_sub(markers);
    let rows_written = out.metrics.rows_written;
    let screened = out.metrics.rows_dropped + out.metrics.rows_quarantined;
    out.metrics = TaskMetrics {
        rows_read,
        rows_filtered: rows_read - rows_kept,
        rows_deduplicated: rows_kept.saturating_sub(rows_written + screened),
        bytes_read,
        ..out.metrics
    };
    Ok(out)
}

/// `e`, of type `from`, cast to `to` as `TRY_CAST` casts it. Arrow casts a timestamp without
/// a time zone to one with a zone by looking up the zone's offset for every value (~60 ns
/// each, the most of `to_timestamp(text)` typed `timestamp`), though UTC's offset is always
/// zero; from nanoseconds (all within chrono's range, so none becomes NULL on the way) a
/// change of unit and a reinterpretation give the same values.
fn typed_cast(e: Expr, from: &DataType, to: &DataType) -> Expr {
    use datafusion::arrow::datatypes::TimeUnit;
    match (from, to) {
        (
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            DataType::Timestamp(unit, Some(zone)),
        ) if zone.as_ref() == "UTC" => {
            let naive = try_cast(e, DataType::Timestamp(*unit, None));
            try_cast(try_cast(naive, DataType::Int64), to.clone())
        }
        _ => try_cast(e, to.clone()),
    }
}

/// An identifier as DataFusion's `col()` takes it, so names keep their case.
fn column_name(name: &str) -> datafusion::common::Column {
    datafusion::common::Column::new_unqualified(name)
}

struct Plan<'a> {
    ctx: &'a TaskContext,
    spec: &'a SilverSpec,
    executed: Executed,
}

impl Plan<'_> {
    /// A SQL or data error in this table: the user's to fix, so not retried.
    fn data_error(&self, e: impl std::fmt::Display) -> TaskError {
        TaskError::permanent(format!("{}: {e}", self.ctx.table))
    }

    /// Names the column whose expression cannot be computed on the input (a function given
    /// a value it cannot take, such as a timestamp of year 99999), by computing each column on
    /// its own: the query that failed mixes them all, and its error names none.
    async fn column_at_fault(&self, source: &DataFrame) -> Option<TaskError> {
        for c in &self.spec.columns {
            let sql = c.expr_sql();
            let Ok(e) = source.parse_sql_expr(&sql) else {
                continue;
            };
            let Ok(one) = source.clone().select(vec![e]) else {
                continue;
            };
            if let Err(e) = one.collect().await {
                return Some(self.data_error(format!(
                    "column '{}' (`{sql}`) cannot be computed: {e}",
                    c.name.value
                )));
            }
        }
        None
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
    /// text of a value that did not cast, and the ordering columns for deduplication (for a
    /// CDC table: the sequence, computed over the columns, and the delete and truncate flags).
    fn typed(&self, source: DataFrame) -> Result<DataFrame, TaskError> {
        let has = |name: &str| source.schema().has_column_with_unqualified_name(name);
        let mut exprs = Vec::new();
        for (i, c) in self.spec.columns.iter().enumerate() {
            let name = &c.name.value;
            let e = self.parse(&source, &c.expr_sql(), &format!("column {name}"))?;
            match &c.data_type {
                None => exprs.push(e.alias(name)),
                Some(t) => {
                    let dt = types::parse_type(&t.value).map_err(TaskError::permanent)?;
                    let from = e
                        .get_type(source.schema())
                        .map_err(|e| self.data_error(format!("column {name}: {e}")))?;
                    let typed = typed_cast(e.clone(), &from, &dt);
                    let bad = when(
                        e.clone().is_not_null().and(typed.clone().is_null()),
                        cast(e.clone(), DataType::Utf8),
                    )
                    .end()
                    .map_err(|e| self.data_error(e))?;
                    exprs.push(typed.alias(name));
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
        if self.spec.scd_type().is_none() {
            return Ok(df);
        }
        let data_error = |e| self.data_error(e);
        if let Some(sequence) = &self.spec.sequence_by {
            let e = self.parse(&df, &sequence.value, "sequence_by")?;
            df = df.with_column(LATEST, e).map_err(data_error)?;
        }
        let flags = [
            (DELETE, &self.spec.apply_as_deletes, "apply_as_deletes"),
            (
                TRUNCATE,
                &self.spec.apply_as_truncates,
                "apply_as_truncates",
            ),
        ];
        for (name, condition, field) in flags {
            // A change the condition is NULL for, or that has none, is not a delete/truncate.
            let flag = match condition {
                Some(c) => coalesce(vec![self.parse(&df, &c.value, field)?, lit(false)]),
                None => lit(false),
            };
            df = df.with_column(name, flag).map_err(data_error)?;
        }
        Ok(df)
    }

    /// The sequence value of the latest truncate among the changes that pass the filters, for
    /// a CDC table with `apply_as_truncates`: read from the whole input, since a truncate
    /// empties every key partition.
    async fn truncated_at(&self, typed: &DataFrame) -> Result<Option<ScalarValue>, TaskError> {
        if self.spec.apply_as_truncates.is_none() {
            return Ok(None);
        }
        let truncates = match self.predicate(typed)? {
            Some(p) => col(TRUNCATE).and(p),
            None => col(TRUNCATE),
        };
        let batches = typed
            .clone()
            .filter(truncates)
            .and_then(|df| df.aggregate(vec![], vec![max(col(LATEST))]))
            .map_err(|e| self.data_error(e))?
            .collect()
            .await
            .map_err(|e| crate::query_error(&self.ctx.table, e.into()))?;
        let latest = batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .map(|b| ScalarValue::try_from_array(b.column(0), 0))
            .transpose()
            .map_err(transient)?;
        Ok(latest.filter(|v| !v.is_null()))
    }

    /// This task's share of the typed rows (a CDC table's truncates were read before): a
    /// range of the first key between `cuts` (null keys in the first), or without cuts a hash
    /// partition of the keys.
    fn partitioned(
        &self,
        mut df: DataFrame,
        work: &TransformWork,
        cuts: Option<&[ScalarValue]>,
    ) -> Result<DataFrame, TaskError> {
        if work.partitions > 1 {
            if self.spec.keys.is_empty() {
                return Err(self.data_error("split into partitions but has no keys to split by"));
            }
            let keep = match cuts {
                Some(cuts) => {
                    let key = self.keys().swap_remove(0);
                    let i = work.partition as usize;
                    let from = (i > 0).then(|| key.clone().gt_eq(lit(cuts[i - 1].clone())));
                    let below = cuts.get(i).map(|cut| key.clone().lt(lit(cut.clone())));
                    let below = match i {
                        0 => below.map(|b| b.or(key.is_null())),
                        _ => below,
                    };
                    from.into_iter()
                        .chain(below)
                        .reduce(Expr::and)
                        .unwrap_or(lit(true))
                }
                None => {
                    let udf = ScalarUDF::from(KeyPartition::new(work.partitions));
                    udf.call(self.keys())
                        .eq(lit(ScalarValue::UInt32(Some(work.partition))))
                }
            };
            df = df.filter(keep).map_err(|e| self.data_error(e))?;
        }
        Ok(df)
    }

    /// Values of the first key that cut the input's rows into this table's partitions along
    /// the input's files ([`medallion_lake::ranges`]), so each task reads only its files; for
    /// a key that is an input column as it is, neither computed nor cast (the input's
    /// statistics bound it), of a type whose order leaves no value out of every range (not
    /// floating point).
    async fn key_cuts(
        &self,
        input: &TableRef,
        work: &TransformWork,
        typed: &DataFrame,
    ) -> Result<Option<Vec<ScalarValue>>, TaskError> {
        let Some(key) = self.spec.keys.first().filter(|_| work.partitions > 1) else {
            return Ok(None);
        };
        // Cast or computed, the key orders otherwise than the input's statistics do (text
        // digits of JSON cast to numbers).
        let column = self.spec.columns.iter().find(|c| c.name.value == key.value);
        if column.is_none_or(|c| c.expr.is_some() || c.data_type.is_some()) {
            return Ok(None);
        }
        let data_type = match typed.schema().field_with_unqualified_name(&key.value) {
            Ok(field) => field.data_type().clone(),
            Err(_) => return Ok(None),
        };
        let ordered = data_type.is_integer()
            || matches!(
                data_type,
                DataType::Utf8
                    | DataType::LargeUtf8
                    | DataType::Utf8View
                    | DataType::Date32
                    | DataType::Date64
                    | DataType::Timestamp(..)
                    | DataType::Decimal128(..)
            );
        if !ordered {
            return Ok(None);
        }
        let uri = self.ctx.pipeline.table_uri(input);
        let opts = &self.ctx.storage_options;
        let version = work.input_version;
        let cuts =
            medallion_lake::ranges::key_ranges(&uri, opts, version, &key.value, work.partitions)
                .await
                .map_err(transient)?;
        let Some(cuts) = cuts else {
            return Ok(None);
        };
        let typed_cut = |cut: &serde_json::Value| {
            let text = match cut {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            ScalarValue::try_from_string(text, &data_type).ok()
        };
        let cuts: Option<Vec<ScalarValue>> = cuts.iter().map(typed_cut).collect();
        if let Some(cuts) = &cuts {
            let at: Vec<String> = cuts.iter().map(ToString::to_string).collect();
            tracing::info!(table = %self.ctx.table, key = %key.value, cuts = ?at, "partitions split by key ranges of the input's files");
        }
        Ok(cuts)
    }

    /// The keys of this task's partition that the input rows committed after `after` touch,
    /// as columns [`touched_column`]: an incremental refresh of a CDC table recomputes them.
    async fn touched_keys(
        &self,
        work: &TransformWork,
        after: u64,
    ) -> Result<Vec<RecordBatch>, TaskError> {
        let session = session::new_session(&self.ctx.runtime);
        let input: TableRef = self.spec.from.value.parse().map_err(TaskError::permanent)?;
        let read = session::Read::After(after);
        let (pipeline, options) = (&self.ctx.pipeline, &self.ctx.storage_options);
        session::register_table(
            &session,
            pipeline,
            options,
            &input,
            work.input_version,
            read,
        )
        .await?;
        let new = session
            .table(session::table_reference(&input))
            .await
            .map_err(transient)?;
        let keys: Vec<Expr> = self
            .keys()
            .into_iter()
            .enumerate()
            .map(|(i, k)| k.alias(touched_column(i)))
            .collect();
        self.partitioned(self.typed(new)?, work, None)?
            .select(keys)
            .and_then(DataFrame::distinct)
            .map_err(|e| self.data_error(e))?
            .collect()
            .await
            .map_err(|e| crate::query_error(&self.ctx.table, e.into()))
    }

    /// The rows of `typed` whose key is one of `keys`.
    fn of_keys(
        &self,
        session: &SessionContext,
        typed: DataFrame,
        keys: &[RecordBatch],
    ) -> Result<DataFrame, TaskError> {
        let Some(schema) = keys.first().map(RecordBatch::schema) else {
            return typed.limit(0, Some(0)).map_err(|e| self.data_error(e));
        };
        let keys = MemTable::try_new(schema, vec![keys.to_vec()]).map_err(transient)?;
        let keys = session
            .read_table(Arc::new(keys))
            .map_err(|e| self.data_error(e))?;
        let names: Vec<&str> = self.spec.keys.iter().map(|k| k.value.as_str()).collect();
        let touched: Vec<String> = (0..names.len()).map(touched_column).collect();
        let touched: Vec<&str> = touched.iter().map(String::as_str).collect();
        typed
            .join(keys, JoinType::LeftSemi, &names, &touched, None)
            .map_err(|e| self.data_error(e))
    }

    /// `rows` (the recomputed rows of the touched keys) and a row per touched key with only
    /// its key set and [`TOUCHED_KEY`] true: the coordinator replaces every stored row of
    /// those keys, including keys that now have no row (deleted, or screened out).
    fn with_touched_keys(
        &self,
        rows: SendableRecordBatchStream,
        mut screening: Screening,
        keys: Vec<RecordBatch>,
    ) -> Result<(SendableRecordBatchStream, Screening), TaskError> {
        let fields: Vec<Field> = screening
            .schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .chain([Field::new(TOUCHED_KEY, DataType::Boolean, false)])
            .collect();
        let schema = Arc::new(Schema::new(fields));
        let key_of = |name: &str| self.spec.keys.iter().position(|k| k.value == name);
        let markers = keys
            .into_iter()
            .map(|batch| {
                let n = batch.num_rows();
                let mut columns: Vec<ArrayRef> = Vec::new();
                for f in screening.schema.fields() {
                    columns.push(match key_of(f.name()) {
                        Some(i) => cast_array(batch.column(i), f.data_type())?,
                        None => new_null_array(f.data_type(), n),
                    });
                }
                columns.push(Arc::new(BooleanArray::from(vec![true; n])));
                Ok(RecordBatch::try_new(schema.clone(), columns)?)
            })
            .collect::<datafusion::error::Result<Vec<_>>>()
            .map_err(transient)?;
        let with_flag = schema.clone();
        let recomputed = rows.map(move |batch| {
            let batch = batch?;
            let mut columns = batch.columns().to_vec();
            columns.push(Arc::new(BooleanArray::from(vec![false; batch.num_rows()])));
            Ok(RecordBatch::try_new(with_flag.clone(), columns)?)
        });
        let all = recomputed.chain(futures::stream::iter(markers.into_iter().map(Ok)));
        screening.schema = schema.clone();
        Ok((
            Box::pin(RecordBatchStreamAdapter::new(schema, all)),
            screening,
        ))
    }

    /// All the filters as one predicate (rows where it is NULL are dropped, as in SQL).
    fn predicate(&self, typed: &DataFrame) -> Result<Option<Expr>, TaskError> {
        let mut predicate: Option<Expr> = None;
        for f in &self.spec.filters {
            let e = self.parse(typed, &f.value, "filter")?;
            let data_type = e
                .get_type(typed.schema())
                .map_err(|e| self.data_error(format!("filter `{}`: {e}", f.value)))?;
            if !matches!(data_type, DataType::Boolean | DataType::Null) {
                return Err(self.data_error(format!(
                    "filter `{}` is {data_type}, not a boolean",
                    f.value
                )));
            }
            predicate = Some(match predicate {
                None => e,
                Some(p) => p.and(e),
            });
        }
        Ok(predicate)
    }

    /// The rows that pass every filter, counted on their way out of the one scan of the input:
    /// they run through a [`Filtered`] stream (and, with `check_casts`, a [`CastChecked`] one
    /// that drops the columns it reads), which becomes the one partition of the table the
    /// dedupe sort reads. One partition makes one sort, whose spill files merge within the
    /// memory pool; sorted partitions would need a merge above them that cannot spill, which
    /// is what ran out of memory at 50M orders under a 1 GiB pool.
    async fn filtered(
        &self,
        typed: DataFrame,
        check_casts: bool,
    ) -> Result<(DataFrame, Arc<FilterCounts>), TaskError> {
        let (typed, pass) = match self.predicate(&typed)? {
            Some(p) => {
                let pass = typed.schema().fields().len();
                let typed = typed.with_column(PASS, p).map_err(|e| self.data_error(e))?;
                (typed, Some(pass))
            }
            None => (typed, None),
        };
        // The scan's partitions still run in parallel, into one stream.
        let stream = self
            .executed
            .execute(typed)
            .await
            .map_err(|e| crate::query_error(&self.ctx.table, e.into()))?;
        let counts = Arc::new(FilterCounts::default());
        let mut stream: SendableRecordBatchStream =
            Box::pin(Filtered::new(stream, pass, counts.clone()));
        if check_casts {
            stream = self.cast_checked(stream, None)?;
        }
        let filtered = Once::new(stream);
        let schema = filtered.schema().clone();
        let partitions: Vec<Arc<dyn PartitionStream>> = vec![Arc::new(filtered)];
        let table = StreamingTable::try_new(schema, partitions).map_err(transient)?;
        let kept = session::single_partition_session(&self.ctx.runtime)
            .read_table(Arc::new(table))
            .map_err(|e| self.data_error(e))?;
        Ok((kept, counts))
    }

    /// Only the latest row per key: rows whose casts were checked, sorted by key, then latest
    /// first, screened, and the first row of each key that passed the screen taken.
    async fn deduplicated(
        &self,
        kept: DataFrame,
    ) -> Result<(SendableRecordBatchStream, Screening), TaskError> {
        if self.spec.keys.is_empty() {
            return self.checked(kept, true).await;
        }
        let has = |name: &str| kept.schema().has_column_with_unqualified_name(name);
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
        let sorted = kept.sort(order).map_err(|e| self.data_error(e))?;
        let (screened, screening) = self.checked(sorted, true).await?;
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
        let first = FirstPerKey::new(screened, key_indices)
            .map_err(|e| crate::query_error(&self.ctx.table, e.into()))?;
        Ok((Box::pin(first), screening))
    }

    /// The stored columns, every value checked against its declared type (unless
    /// `casts_checked`), and screened by the table's `drop` and `quarantine` checks.
    async fn checked(
        &self,
        rows: DataFrame,
        casts_checked: bool,
    ) -> Result<(SendableRecordBatchStream, Screening), TaskError> {
        let failed =
            |e: datafusion::error::DataFusionError| crate::query_error(&self.ctx.table, e.into());
        let mut select: Vec<Expr> = self
            .spec
            .stored_columns()
            .into_iter()
            .map(|c| col(column_name(c)))
            .collect();
        let stored = select.len();
        if !casts_checked {
            for (i, c) in self.spec.columns.iter().enumerate() {
                if c.data_type.is_some() {
                    select.push(col(column_name(&bad_value_column(i))));
                }
            }
            if rows.schema().has_column_with_unqualified_name(FILE) {
                select.push(col(FILE));
            }
        }
        let selected = rows.select(select).map_err(|e| self.data_error(e))?;
        let mut stream = self.executed.execute(selected).await.map_err(failed)?;
        if !casts_checked {
            stream = self.cast_checked(stream, Some((0..stored).collect()))?;
        }
        let mut screening = Screening::new(self.ctx, &stream.schema())?;
        let screened = screening.apply(stream);
        Ok((screened, screening))
    }

    /// `rows` with each typed column's casts checked against its flag column ([`CastChecked`]),
    /// passing on the `output` columns (default: all but the flags).
    fn cast_checked(
        &self,
        rows: SendableRecordBatchStream,
        output: Option<Vec<usize>>,
    ) -> Result<SendableRecordBatchStream, TaskError> {
        let schema = rows.schema();
        let typed = self.spec.columns.iter().enumerate();
        let checks = typed
            .filter_map(|(i, c)| c.data_type.as_ref().map(|t| (i, c, t)))
            .map(|(i, c, t)| {
                Ok(CheckedColumn {
                    name: c.name.value.clone(),
                    declared: t.value.clone(),
                    bad: schema.index_of(&bad_value_column(i)).map_err(transient)?,
                })
            })
            .collect::<Result<Vec<_>, TaskError>>()?;
        let output = output.unwrap_or_else(|| {
            (0..schema.fields().len())
                .filter(|i| !checks.iter().any(|c| c.bad == *i))
                .collect()
        });
        let file = schema.index_of(FILE).ok();
        let checked = CastChecked::new(rows, output, checks, file)
            .map_err(|e| crate::query_error(&self.ctx.table, e.into()))?;
        Ok(Box::pin(checked))
    }

    /// A CDC table's rows from its changes ([`crate::cdc`]): truncated changes left out, then
    /// the latest change per key (type 1) or a row per version (type 2).
    fn applied(
        &self,
        changes: DataFrame,
        scd: u8,
        truncated_at: Option<ScalarValue>,
    ) -> Result<DataFrame, TaskError> {
        let mut changes = changes
            .filter(not(col(TRUNCATE)))
            .map_err(|e| self.data_error(e))?;
        if let Some(at) = truncated_at {
            changes = changes
                .filter(col(LATEST).gt(lit(at)))
                .map_err(|e| self.data_error(e))?;
        }
        let has = |name: &str| changes.schema().has_column_with_unqualified_name(name);
        let by = cdc::ChangeOrder {
            keys: self.keys(),
            order: [LATEST, INGESTED, FILE]
                .into_iter()
                .filter(|c| has(c))
                .map(col)
                .collect(),
            sequence: col(LATEST),
            delete: col(DELETE),
        };
        let applied = if scd == 1 {
            cdc::latest(changes, &by)
        } else {
            let tracked: Vec<Expr> = self
                .tracked_columns()
                .into_iter()
                .map(|c| col(column_name(c)))
                .collect();
            cdc::versions(changes, &by, &tracked, SCD_START, SCD_END)
        };
        applied.map_err(|e| self.data_error(e))
    }

    /// The columns whose changes open a new version of a type 2 table.
    fn tracked_columns(&self) -> Vec<&str> {
        if self.spec.track_history_columns.is_empty() {
            let stored = self.spec.stored_columns();
            stored
                .into_iter()
                .filter(|c| ![SCD_START, SCD_END].contains(c))
                .filter(|c| !self.spec.keys.iter().any(|k| k.value == *c))
                .collect()
        } else {
            self.spec
                .track_history_columns
                .iter()
                .map(|c| c.value.as_str())
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, TimestampNanosecondArray};
    use datafusion::arrow::datatypes::TimeUnit;

    /// The shortcut gives what `TRY_CAST` gives, for every unit: negative values, values
    /// between two units, NULL.
    #[tokio::test]
    async fn a_naive_nanosecond_timestamp_casts_to_utc_as_try_cast_does() {
        let values = TimestampNanosecondArray::from(vec![
            Some(1_704_067_320_123_456_789),
            Some(-1_999),
            Some(0),
            None,
            Some(i64::MIN),
            Some(i64::MAX),
        ]);
        let from = values.data_type().clone();
        let batch = RecordBatch::try_from_iter([("t", Arc::new(values) as ArrayRef)]).unwrap();
        for unit in [
            TimeUnit::Second,
            TimeUnit::Millisecond,
            TimeUnit::Microsecond,
            TimeUnit::Nanosecond,
        ] {
            let to = DataType::Timestamp(unit, Some("UTC".into()));
            let shortcut = typed_cast(col("t"), &from, &to);
            assert!(format!("{shortcut}").contains("Int64"), "{shortcut}");
            let out = SessionContext::new()
                .read_batch(batch.clone())
                .unwrap()
                .select(vec![
                    shortcut.alias("shortcut"),
                    try_cast(col("t"), to.clone()).alias("cast"),
                ])
                .unwrap()
                .collect()
                .await
                .unwrap();
            assert_eq!(out[0].column(0).data_type(), &to);
            assert_eq!(out[0].column(0), out[0].column(1), "{unit:?}");
        }
    }
}
