//! Gold: the table's SQL over pinned versions of the tables it reads.

use medallion_pipeline::TableRef;
use medallion_proto::{AggregateWork, TaskError, TaskMetrics};

use crate::{Output, TaskContext, session};

pub(crate) async fn run(ctx: &TaskContext, work: AggregateWork) -> Result<Output, TaskError> {
    let spec = ctx
        .pipeline
        .gold(&ctx.table.name)
        .ok_or_else(|| TaskError::permanent(format!("no gold table '{}'", ctx.table.name)))?;
    let session = session::new_session(&ctx.runtime);
    for (name, version) in &work.input_versions {
        let input: TableRef = name.parse().map_err(TaskError::permanent)?;
        session::register_table(
            &session,
            &ctx.pipeline,
            &ctx.storage_options,
            &input,
            *version,
        )
        .await?;
    }
    let df = session
        .sql(&spec.sql.value)
        .await
        .map_err(|e| crate::query_error(&ctx.table, e.into()))?;
    let rows = df
        .execute_stream()
        .await
        .map_err(|e| crate::query_error(&ctx.table, e.into()))?;
    let (adds, schema, rows_written) = crate::write_result(ctx, rows).await?;
    Ok(Output {
        adds,
        schema,
        metrics: TaskMetrics {
            rows_written,
            ..Default::default()
        },
    })
}
