//! Gold: the table's SQL over pinned versions of the tables it reads, on this executor's
//! DataFusion or, when the planner chose it, on Ballista across the cluster. Either way this
//! executor writes the result's files and the coordinator commits them once.

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
    for (input, version) in work.inputs().map_err(TaskError::permanent)? {
        let read = if ballista { Read::Files } else { Read::Delta };
        let (pipeline, opts) = (&ctx.pipeline, &ctx.storage_options);
        bytes_read +=
            session::register_table(&session, pipeline, opts, &input, version, read).await?;
    }
    let df = session
        .sql(&spec.sql.value)
        .await
        .map_err(|e| crate::query_error(&ctx.table, e.into()))?;
    let rows = df
        .execute_stream()
        .await
        .map_err(|e| crate::query_error(&ctx.table, e.into()))?;
    let metrics = TaskMetrics {
        bytes_read,
        ..Default::default()
    };
    match crate::write_screened(ctx, rows, metrics).await {
        // The SQL planned, so a distributed run that fails met the cluster (a lost executor,
        // lost shuffle data): another attempt may pass.
        Err(e) if ballista => Err(TaskError::transient(format!("on Ballista: {e}"))),
        written => written,
    }
}
