//! Delta checkpoints at an interval of our choosing (`maintenance.checkpoint_interval`): a
//! checkpoint is a Parquet summary of the log up to a version, so a reader replays only the
//! JSON commits after it. delta-rs writes one at every 100th version on its own.

use anyhow::{Context, Result};
use datafusion::object_store::ObjectStoreExt as _;
use deltalake::Path;

use crate::{StorageOptions, open_table};

/// Writes a checkpoint of the latest version of the table at `uri` when it has `interval` or
/// more commits since its last checkpoint (or since it was created); the version
/// checkpointed, if any.
pub async fn checkpoint_if_due(
    uri: &str,
    opts: &StorageOptions,
    interval: u64,
) -> Result<Option<u64>> {
    let Some(table) = open_table(uri, opts).await? else {
        return Ok(None);
    };
    let version = table.version().context("a table without a version")?;
    let last = last_checkpoint(&table).await?;
    let since = last.map_or(version + 1, |last| version.saturating_sub(last));
    if since < interval {
        return Ok(None);
    }
    deltalake::checkpoints::create_checkpoint(&table, None)
        .await
        .with_context(|| format!("writing a checkpoint of {uri} at version {version}"))?;
    Ok(Some(version))
}

/// The version of the table's latest checkpoint, from `_delta_log/_last_checkpoint`.
async fn last_checkpoint(table: &deltalake::DeltaTable) -> Result<Option<u64>> {
    let store = table.log_store().object_store(None);
    let bytes = match store.get(&Path::from("_delta_log/_last_checkpoint")).await {
        Ok(found) => found.bytes().await?,
        Err(deltalake::ObjectStoreError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let last: serde_json::Value = serde_json::from_slice(&bytes)?;
    Ok(last.get("version").and_then(serde_json::Value::as_u64))
}
