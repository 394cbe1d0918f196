//! What a table's commits changed between two versions, for readers of only the new rows.
//!
//! A table that only grows (bronze: every run appends) can be read incrementally: the rows
//! committed after version `from` are exactly the rows of the files those commits added. That
//! holds while no commit removed rows or changed the schema; compaction (files removed and
//! added with `dataChange: false`) changes no rows and is skipped.

use anyhow::{Context, Result};
use deltalake::kernel::{Action, Add};
use deltalake::logstore::get_actions;

use crate::{StagedFiles, StorageOptions, arrow_schema, open_version};

/// What commits `from + 1 ..= to` of a table did.
#[derive(Debug)]
pub enum Changes {
    /// They only added rows, held in these files.
    Appended(Vec<Add>),
    /// They removed or rewrote rows, or changed the schema: why, for the run report.
    Rewritten(String),
}

/// The changes of the table at `uri` after version `from`, up to and including `to`.
pub async fn changes(uri: &str, opts: &StorageOptions, from: u64, to: u64) -> Result<Changes> {
    if to < from {
        return Ok(Changes::Rewritten(format!(
            "its version went back from {from} to {to} (the table was recreated)"
        )));
    }
    let table = crate::table_handle(uri, opts)?;
    let store = table.log_store();
    let mut added = Vec::new();
    for version in from + 1..=to {
        let Some(bytes) = store.read_commit_entry(version).await? else {
            return Ok(Changes::Rewritten(format!(
                "version {version} is no longer in its log"
            )));
        };
        let actions = get_actions(version, &bytes)
            .with_context(|| format!("reading version {version} of {uri}"))?;
        let operation = actions
            .iter()
            .find_map(|a| match a {
                Action::CommitInfo(c) => c.operation.clone(),
                _ => None,
            })
            .unwrap_or_else(|| "an unnamed operation".into());
        for action in actions {
            match action {
                Action::Add(add) if add.data_change => {
                    if add.deletion_vector.is_some() {
                        return Ok(Changes::Rewritten(format!(
                            "version {version} ({operation}) added deletion vectors"
                        )));
                    }
                    added.push(add);
                }
                Action::Remove(r) if r.data_change => {
                    return Ok(Changes::Rewritten(format!(
                        "version {version} ({operation}) removed rows"
                    )));
                }
                Action::Metadata(_) => {
                    return Ok(Changes::Rewritten(format!(
                        "version {version} ({operation}) changed its schema"
                    )));
                }
                _ => {}
            }
        }
    }
    Ok(Changes::Appended(added))
}

/// The rows committed to the table at `uri` after version `from` up to `to`, read as one
/// table with the schema of version `to`; an error when those commits did more than append.
pub async fn appended_rows(
    uri: &str,
    opts: &StorageOptions,
    from: u64,
    to: u64,
) -> Result<StagedFiles> {
    let files = match changes(uri, opts, from, to).await? {
        Changes::Appended(files) => files,
        Changes::Rewritten(why) => {
            anyhow::bail!("{uri} cannot be read from version {from} on: {why}")
        }
    };
    let table = open_version(uri, opts, to).await?;
    let snapshot = table.snapshot()?;
    let schema = arrow_schema(&snapshot.schema())?;
    let partition_columns = snapshot.metadata().partition_columns().to_vec();
    StagedFiles::new(uri, &schema, &partition_columns, files)
}

/// The table property that turns on Delta's change data feed.
pub const CHANGE_DATA_FEED: &str = "delta.enableChangeDataFeed";

/// Whether the loaded version of the table records its row changes (Delta's change data
/// feed): then [`changed_rows`] can read the changes of every later commit.
pub fn records_changes(t: &deltalake::DeltaTable) -> Result<bool> {
    let snapshot = t.snapshot()?;
    Ok(snapshot
        .metadata()
        .configuration()
        .get(CHANGE_DATA_FEED)
        .is_some_and(|v| v.eq_ignore_ascii_case("true")))
}

/// The row changes of commits `from + 1 ..= to` from the change data feed, as a table: every
/// column plus `_change_type` (`insert`, `delete`, `update_preimage`, `update_postimage`).
pub async fn changed_rows(
    uri: &str,
    opts: &StorageOptions,
    from: u64,
    to: u64,
) -> Result<std::sync::Arc<dyn datafusion::catalog::TableProvider>> {
    let table = open_version(uri, opts, to).await?;
    let feed = table
        .scan_cdf()
        .with_starting_version(from + 1)
        .with_ending_version(to);
    let provider = deltalake::delta_datafusion::DeltaCdfTableProvider::try_new(feed)
        .with_context(|| format!("reading the change data feed of {uri}"))?;
    Ok(std::sync::Arc::new(provider))
}
