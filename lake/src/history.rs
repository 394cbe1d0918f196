//! A table's history: what each of its latest versions did, newest first, read from its Delta
//! log (the `medallion history` command).
//!
//! ```no_run
//! # async fn show(opts: &medallion_lake::StorageOptions) -> anyhow::Result<()> {
//! for v in medallion_lake::history::history("lake/gold/customer_360", opts, 20).await? {
//!     println!("{} {} +{} -{}", v.version, v.operation, v.rows_added, v.rows_removed);
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result};
use deltalake::kernel::Action;
use deltalake::logstore::get_actions;
use serde::Serialize;

use crate::{StorageOptions, open_table, open_version};

/// One version of a table, as its commit describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableVersion {
    pub version: u64,
    /// When it was committed, in milliseconds since the Unix epoch.
    pub timestamp: Option<i64>,
    /// What made it: `WRITE`, `MERGE`, `RESTORE`, `OPTIMIZE`, ...
    pub operation: String,
    /// The Medallion run that committed it, if a run did.
    pub run_id: Option<String>,
    /// The versions of the input tables it was computed from (silver and gold commits).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, u64>,
    /// Rows of the files it added and removed (compaction's rewrites not counted).
    pub rows_added: u64,
    pub rows_removed: u64,
    pub files_added: usize,
    pub files_removed: usize,
}

/// The latest `limit` versions of the table at `uri`, newest first. Versions whose log entry
/// was cleaned up are left out.
pub async fn history(uri: &str, opts: &StorageOptions, limit: usize) -> Result<Vec<TableVersion>> {
    let table = open_table(uri, opts)
        .await?
        .with_context(|| format!("{uri} is not a Delta table (yet)"))?;
    let latest = table.version().context("a table without a version")?;
    let store = table.log_store();
    let mut versions = Vec::new();
    for version in ((latest + 1).saturating_sub(limit as u64)..=latest).rev() {
        let Some(bytes) = store.read_commit_entry(version).await? else {
            continue;
        };
        let actions = get_actions(version, &bytes)
            .with_context(|| format!("reading version {version} of {uri}"))?;
        let mut entry = TableVersion {
            version,
            timestamp: None,
            operation: String::new(),
            run_id: None,
            inputs: BTreeMap::new(),
            rows_added: 0,
            rows_removed: 0,
            files_added: 0,
            files_removed: 0,
        };
        let mut removed = Vec::new();
        for action in actions {
            match action {
                Action::CommitInfo(info) => {
                    entry.timestamp = info.timestamp;
                    entry.operation = info.operation.unwrap_or_default();
                    entry.run_id = info
                        .info
                        .get("medallion.run_id")
                        .and_then(|v| v.as_str())
                        .map(str::to_string);
                    let inputs = info
                        .info
                        .get("medallion.inputs")
                        .and_then(|v| v.as_object());
                    entry.inputs = inputs
                        .into_iter()
                        .flatten()
                        .filter_map(|(table, v)| Some((table.clone(), v.as_u64()?)))
                        .collect();
                }
                Action::Add(add) => {
                    entry.files_added += 1;
                    if add.data_change {
                        entry.rows_added += records(add.stats.as_deref());
                    }
                }
                Action::Remove(remove) => {
                    entry.files_removed += 1;
                    if remove.data_change {
                        removed.push(remove.path);
                    }
                }
                _ => {}
            }
        }
        if !removed.is_empty() && version > 0 {
            entry.rows_removed = rows_of(uri, opts, version - 1, &removed).await?;
        }
        versions.push(entry);
    }
    Ok(versions)
}

/// `numRecords` of an add action's statistics (0 without them).
fn records(stats: Option<&str>) -> u64 {
    stats
        .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
        .and_then(|s| s.get("numRecords")?.as_u64())
        .unwrap_or(0)
}

/// The rows `paths` held in `version` (removes carry no statistics: the adds that made them
/// do, in the version before).
async fn rows_of(uri: &str, opts: &StorageOptions, version: u64, paths: &[String]) -> Result<u64> {
    let table = open_version(uri, opts, version).await?;
    let rows: HashMap<String, u64> = table
        .snapshot()?
        .log_data()
        .into_iter()
        .map(|f| (f.path().into_owned(), f.num_records().unwrap_or(0) as u64))
        .collect();
    Ok(paths.iter().filter_map(|p| rows.get(p)).sum())
}
