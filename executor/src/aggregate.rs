//! Gold: the table's SQL over pinned versions of the tables it reads, on this executor's
//! DataFusion or, when the planner chose it, on Ballista across the cluster. Either way this
//! executor writes the result's files and the coordinator commits them once.
//!
//! An incremental refresh ([`medallion_pipeline::regroup`]) reads the changed input's change
//! data feed for the values of the group key its changes touched, computes the query over
//! only the input rows with those values, and writes those groups together with the table's
//! rows of every other group.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, new_empty_array};
use datafusion::arrow::compute::{concat, filter, is_not_null};
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::arrow::error::ArrowError;
use datafusion::common::{JoinType, TableReference};
use datafusion::error::DataFusionError;
use datafusion::prelude::{DataFrame, SessionContext, col};
use medallion_pipeline::TableRef;
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
    let mut rows_read = 0;
    let mut touched = None;
    if let Some(r) = work.regroup().map_err(TaskError::permanent)? {
        let version = inputs
            .iter()
            .find_map(|(t, v)| (*t == r.input).then_some(*v))
            .ok_or_else(|| TaskError::permanent(format!("{} is not an input", r.input)))?;
        let found = touched_groups(ctx, &session, &r, version).await?;
        rows_read = found.changes;
        // A NULL key is matched by no join: then every group is recomputed.
        if !found.has_null {
            touched = Some((r, found.values));
        }
    }
    if let Some((r, values)) = &touched {
        let input = table_reference(&r.input);
        let changed = session.table(input.clone()).await.map_err(failed)?;
        let column = &r.key.input_column;
        let only = semi_join(
            &session,
            changed,
            values.clone(),
            column,
            JoinType::LeftSemi,
        )
        .map_err(failed)?;
        session.deregister_table(input.clone()).map_err(failed)?;
        session
            .register_table(input, only.into_view())
            .map_err(failed)?;
    }
    let mut df = session.sql(&spec.sql.value).await.map_err(failed)?;
    if let Some((r, values)) = touched {
        let (pipeline, opts) = (&ctx.pipeline, &ctx.storage_options);
        let read = Read::Delta;
        session::register_table(&session, pipeline, opts, &ctx.table, r.table_version, read)
            .await?;
        let stored = session
            .table(table_reference(&ctx.table))
            .await
            .map_err(failed)?;
        let column = &r.key.output_column;
        let kept = semi_join(&session, stored, values.clone(), column, JoinType::LeftAnti);
        let recomputed = semi_join(&session, df, values, column, JoinType::LeftSemi);
        df = kept
            .and_then(|kept| kept.union(recomputed?))
            .map_err(failed)?;
    }
    let rows = df.execute_stream().await.map_err(failed)?;
    let metrics = TaskMetrics {
        bytes_read,
        rows_read,
        ..Default::default()
    };
    match crate::write_screened(ctx, rows, metrics).await {
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

fn table_reference(t: &TableRef) -> TableReference {
    TableReference::partial(t.layer.as_str(), t.name.as_str())
}

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
    let changes = key.clone().count().await.map_err(failed)? as u64;
    let batches = key
        .distinct()
        .map_err(failed)?
        .collect()
        .await
        .map_err(failed)?;
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
