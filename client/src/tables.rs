//! `medallion history` and `medallion restore`: a pipeline's table, version by version, and
//! bringing an earlier version back. Both read and write the lake directly (the spec names
//! it); restore holds the pipeline's run lease, so it never lands in the middle of a run.

use anyhow::{Context, Result, bail};
use medallion_coordinator::lease::RunLease;
use medallion_lake::history::TableVersion;
use medallion_lake::restore::Restored;
use medallion_pipeline::{Pipeline, TableRef};

/// The table `name` (`gold.customer_360`) of `pipeline`, and where it lives.
fn table_of(pipeline: &Pipeline, name: &str) -> Result<(TableRef, String)> {
    let table: TableRef = name.parse().map_err(anyhow::Error::msg)?;
    if !pipeline.dag.contains(&table) {
        let known: Vec<String> = pipeline.dag.tables().map(ToString::to_string).collect();
        bail!(
            "pipeline '{}' has no table {table} (it has {})",
            pipeline.name(),
            known.join(", ")
        );
    }
    let uri = pipeline.table_uri(&table);
    Ok((table, uri))
}

fn storage_options(pipeline: &Pipeline) -> medallion_lake::StorageOptions {
    pipeline.storage_options.clone().into_iter().collect()
}

/// The latest `limit` versions of a table, newest first.
pub async fn history(pipeline: &Pipeline, name: &str, limit: usize) -> Result<Vec<TableVersion>> {
    let (_, uri) = table_of(pipeline, name)?;
    medallion_lake::history::history(&uri, &storage_options(pipeline), limit).await
}

/// Brings back `version` of a table as a new version, waiting for a run of the pipeline in
/// this lake to end first (or not, without `wait`).
pub async fn restore(
    pipeline: &Pipeline,
    name: &str,
    version: u64,
    wait: bool,
) -> Result<Restored> {
    let (table, uri) = table_of(pipeline, name)?;
    let _lease = RunLease::acquire(pipeline, &format!("restore of {table}"), wait).await?;
    medallion_lake::restore::restore(&uri, &storage_options(pipeline), version)
        .await
        .with_context(|| format!("{table}"))
}
