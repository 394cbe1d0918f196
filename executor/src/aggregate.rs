//! Gold: the table's SQL over pinned versions of the tables it reads, on this executor's
//! DataFusion or, when the planner chose it, on Ballista across the cluster. Either way this
//! executor writes the result's files and the coordinator commits them once.
//!
//! An incremental refresh ([`medallion_pipeline::regroup`]) reads the changed input's change
//! data feed for the values of the group key its changes touched, computes the query over
//! only the input rows with those values, and writes those groups together with the table's
//! rows of every other group.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, new_empty_array};
use datafusion::arrow::compute::{concat, filter, is_not_null};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::arrow::error::ArrowError;
use datafusion::common::JoinType;
use datafusion::error::DataFusionError;
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::prelude::{DataFrame, SessionContext, col, lit};
use medallion_pipeline::regroup::Regroup;
use medallion_proto::{AggregateWork, TaskError, TaskMetrics};

use crate::session::Read;
use crate::{Output, TaskContext, session};

pub(crate) async fn run(ctx: &TaskContext, work: AggregateWork) -> Result<Output, TaskError> {
    let spec = ctx
        .pipeline
        .gold(&ctx.table.name)
        .ok_or_else(|| TaskError::permanent(format!("no gold table '{}'", ctx.table.name)))?;
    let ballista = !work.ballista_scheduler.is_empty();
    let session = if ballista {
        tracing::info!(scheduler = %work.ballista_scheduler, "gold query on Ballista");
        session::ballista_session(&work.ballista_scheduler).await?
    } else {
        session::new_session(&ctx.runtime)
    };
    let mut bytes_read = 0;
    let inputs = work.inputs().map_err(TaskError::permanent)?;
    for (input, version) in &inputs {
        let read = if ballista { Read::Files } else { Read::Delta };
        let (pipeline, opts) = (&ctx.pipeline, &ctx.storage_options);
        bytes_read +=
            session::register_table(&session, pipeline, opts, input, *version, read).await?;
    }
    let failed = |e: DataFusionError| crate::query_error(&ctx.table, e.into());
    let (mut rows_read, mut touched) = (0, None);
    if let Some(r) = work.regroup().map_err(TaskError::permanent)? {
        let version = inputs
            .iter()
            .find_map(|(t, v)| (*t == r.input).then_some(*v))
            .ok_or_else(|| TaskError::permanent(format!("{} is not an input", r.input)))?;
        let found = touched_groups(ctx, &session, &r, version).await?;
        rows_read = found.changes;
        // A NULL key is matched by no join: then every group is recomputed.
        if !found.has_null {
            only_touched_input(&session, &r, found.values.clone())
                .await
                .map_err(failed)?;
            touched = Some((r, found.values));
        }
    }
    let mut df = session.sql(&spec.sql.value).await.map_err(failed)?;
    if let Some((r, values)) = touched {
        df = with_other_groups(ctx, &session, &r, values, df).await?;
    }
    let executed = crate::Executed::default();
    let rows = executed.execute(df).await.map_err(failed)?;
    let metrics = TaskMetrics {
        bytes_read,
        rows_read,
        ..Default::default()
    };
    let written = crate::write_screened(ctx, rows, metrics).await;
    executed.log(&ctx.table);
    match written {
        // The SQL planned, so a distributed run that fails met the cluster (a lost executor,
        // lost shuffle data): another attempt may pass.
        Err(e) if ballista => Err(TaskError::transient(format!("on Ballista: {e}"))),
        written => written,
    }
}

/// The values of the group key in the changed input's changes.
struct Touched {
    /// Distinct, without NULL.
    values: ArrayRef,
    has_null: bool,
    /// How many row changes named them.
    changes: u64,
}

const TOUCHED: &str = "__medallion_touched";
const CHANGES: &str = "__medallion_changes";

/// Reads the changed input's change data feed after the version the table last read, up to
/// `version`, the one this run reads: the group key's values before and after each change.
async fn touched_groups(
    ctx: &TaskContext,
    session: &SessionContext,
    r: &Regroup,
    version: u64,
) -> Result<Touched, TaskError> {
    let failed = |e: DataFusionError| crate::query_error(&ctx.table, e.into());
    let uri = ctx.pipeline.table_uri(&r.input);
    let opts = &ctx.storage_options;
    let feed = medallion_lake::changes::changed_rows(&uri, opts, r.after_version, version)
        .await
        .map_err(crate::transient)?;
    let key = session
        .read_table(feed)
        .and_then(|changes| {
            let column = datafusion::common::Column::new_unqualified(&r.key.input_column);
            changes.select(vec![col(column).alias(TOUCHED)])
        })
        .map_err(failed)?;
    let data_type = key.schema().field(0).data_type().clone();
    // One pass over the feed: each touched value with how many changes named it.
    let batches = key
        .aggregate(vec![col(TOUCHED)], vec![count(lit(1)).alias(CHANGES)])
        .map_err(failed)?
        .collect()
        .await
        .map_err(failed)?;
    let changes = batches
        .iter()
        .filter_map(|b| b.column(1).as_primitive_opt::<Int64Type>())
        .map(|counts| counts.iter().flatten().sum::<i64>() as u64)
        .sum();
    let arrow = |e: ArrowError| failed(e.into());
    let all = match batches.as_slice() {
        [] => new_empty_array(&data_type),
        _ => {
            let columns: Vec<&dyn Array> = batches.iter().map(|b| b.column(0).as_ref()).collect();
            concat(&columns).map_err(arrow)?
        }
    };
    let values = filter(&all, &is_not_null(&all).map_err(arrow)?).map_err(arrow)?;
    Ok(Touched {
        values,
        has_null: all.null_count() > 0,
        changes,
    })
}

/// Replaces the changed input, as the query sees it, with its rows of the touched groups.
async fn only_touched_input(
    session: &SessionContext,
    r: &Regroup,
    values: ArrayRef,
) -> Result<(), DataFusionError> {
    let input = session::table_reference(&r.input);
    let all = session.table(input.clone()).await?;
    let only = semi_join(
        session,
        all,
        values,
        &r.key.input_column,
        JoinType::LeftSemi,
    )?;
    session.deregister_table(input.clone())?;
    session.register_table(input, only.into_view())?;
    Ok(())
}

/// The recomputed groups (`df`, left to the touched ones) with the table's rows of all other
/// groups, read at the version the planner saw.
async fn with_other_groups(
    ctx: &TaskContext,
    session: &SessionContext,
    r: &Regroup,
    values: ArrayRef,
    df: DataFrame,
) -> Result<DataFrame, TaskError> {
    let failed = |e: DataFusionError| crate::query_error(&ctx.table, e.into());
    let (pipeline, opts) = (&ctx.pipeline, &ctx.storage_options);
    session::register_table(
        session,
        pipeline,
        opts,
        &ctx.table,
        r.table_version,
        Read::Delta,
    )
    .await?;
    let stored = session
        .table(session::table_reference(&ctx.table))
        .await
        .map_err(failed)?;
    let column = &r.key.output_column;
    let kept = semi_join(session, stored, values.clone(), column, JoinType::LeftAnti);
    let recomputed = semi_join(session, df, values, column, JoinType::LeftSemi);
    kept.and_then(|kept| kept.union(recomputed?))
        .map_err(failed)
}

/// The rows of `df` whose `column` is (`LeftSemi`) or is not (`LeftAnti`) one of `values`.
fn semi_join(
    session: &SessionContext,
    df: DataFrame,
    values: ArrayRef,
    column: &str,
    how: JoinType,
) -> Result<DataFrame, DataFusionError> {
    let field = Field::new(TOUCHED, values.data_type().clone(), true);
    let batch = RecordBatch::try_new(Arc::new(Schema::new(vec![field])), vec![values])?;
    df.join(session.read_batch(batch)?, how, &[column], &[TOUCHED], None)
}
