//! `medallion checks`: a run's quality check results, read back from the pipeline's check
//! results Delta table (the same table users query for the history).

use anyhow::{Result, bail};
use datafusion::arrow::record_batch::RecordBatch;
use medallion_pipeline::Pipeline;
use medallion_pipeline::sql::quote_literal;

/// The check results of `run_id`, in the order the tables finished. Fails when the run wrote
/// none (unknown run, or a run without checks).
pub async fn of_run(pipeline: &Pipeline, run_id: &str) -> Result<Vec<RecordBatch>> {
    let uri = pipeline.check_results_uri();
    let opts = pipeline.lake_options();
    let sql = format!(
        "SELECT \"table\", \"check\", check_type, severity, passed, rows_checked, rows_failed, \
         detail, checked_at FROM check_results WHERE run_id = {} \
         ORDER BY checked_at, \"table\", \"check\"",
        quote_literal(run_id)
    );
    let Some(batches) = medallion_lake::query_table(&uri, &opts, "check_results", &sql).await?
    else {
        bail!("no check results yet: {uri} does not exist");
    };
    if batches.iter().all(|b| b.num_rows() == 0) {
        bail!("no check results for run '{run_id}' in {uri}");
    }
    Ok(batches)
}
