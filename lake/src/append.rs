//! Appending to the small tables the coordinator keeps itself (run history, check results),
//! with group commit.
//!
//! Every run that ends appends a row. A backfill ends thousands of runs, several at a time:
//! as one Delta commit each, they would race for the same next version and each would reload
//! the table's snapshot, so the cost per run grows with the table. Instead, appends to one
//! table from this process queue their rows; one caller at a time commits everything queued
//! (its rows and those of the callers that arrived while the previous commit was made), on a
//! table handle kept loaded between commits. Each caller still returns only once its rows are
//! committed, so "the run ended" still means "its row is in the table".

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use anyhow::{Context, Result, anyhow};
use datafusion::arrow::record_batch::RecordBatch;
use deltalake::DeltaTable;
use tokio::sync::oneshot::{self, error::TryRecvError};

use crate::{StorageOptions, open_table, table_handle};

/// Appends `batch` to the table at `uri`, creating the table on first use, together with the
/// rows other callers of this process are appending to it (see the module docs). Returns the
/// version that holds the rows.
pub async fn append(uri: &str, opts: &StorageOptions, batch: RecordBatch) -> Result<u64> {
    let group = group(uri);
    let (done, mut outcome) = oneshot::channel();
    let queue = |queued: &mut Vec<Queued>| queued.push((batch.clone(), done));
    queue(&mut group.queued.lock().expect("queued rows"));
    let mut table = group.table.lock().await;
    let committed = match outcome.try_recv() {
        // Committed by the caller before us.
        Ok(committed) => committed,
        Err(e) => {
            // Commit everything queued, ours included.
            let queued = std::mem::take(&mut *group.queued.lock().expect("queued rows"));
            let (mut batches, waiting): (Vec<_>, Vec<_>) = queued.into_iter().unzip();
            if e == TryRecvError::Closed {
                // The caller that took our rows was cancelled before it answered.
                batches.push(batch);
            }
            let committed = commit(&mut table, uri, opts, batches).await;
            let committed = committed.map_err(|e| format!("{e:#}"));
            for done in waiting {
                let _ = done.send(committed.clone());
            }
            committed
        }
    };
    drop(table);
    committed
        .map_err(|e| anyhow!(e))
        .with_context(|| format!("appending to Delta table {uri}"))
}

type Queued = (RecordBatch, oneshot::Sender<Result<u64, String>>);

/// The appends to one table.
#[derive(Default)]
struct Group {
    queued: Mutex<Vec<Queued>>,
    /// The table as last committed by this process; held by the caller committing.
    table: tokio::sync::Mutex<Option<DeltaTable>>,
}

fn group(uri: &str) -> Arc<Group> {
    static GROUPS: LazyLock<Mutex<HashMap<String, Arc<Group>>>> = LazyLock::new(Default::default);
    let mut groups = GROUPS.lock().expect("append groups");
    groups.entry(uri.to_string()).or_default().clone()
}

/// Commits `batches` in one commit. A second attempt starts from a freshly opened table: two
/// processes creating the table at once (one creates it, the other then appends), or a kept
/// handle that no longer matches the table.
async fn commit(
    table: &mut Option<DeltaTable>,
    uri: &str,
    opts: &StorageOptions,
    batches: Vec<RecordBatch>,
) -> Result<u64> {
    let first = match attempt(table.take(), uri, opts, batches.clone()).await {
        Ok(written) => return Ok(keep(table, uri, written).await),
        Err(first) => first,
    };
    let written = attempt(None, uri, opts, batches)
        .await
        .map_err(|last| last.context(format!("(a first attempt failed with: {first:#})")))?;
    Ok(keep(table, uri, written).await)
}

/// Files of a bookkeeping table past which an append compacts it.
const COMPACT_AT: usize = 32;

/// Keeps the table as written, compacted first when it has [`COMPACT_AT`] files: each commit
/// costs in proportion to the files in the table, so a history with a small file per run
/// would make every run slower than the last (as Delta Live Tables optimizes its event log).
async fn keep(slot: &mut Option<DeltaTable>, uri: &str, written: DeltaTable) -> u64 {
    let version = written.version().unwrap_or_default();
    let files = written.snapshot().map_or(0, |s| s.log_data().num_files());
    *slot = Some(written.clone());
    if files >= COMPACT_AT {
        match written.optimize().await {
            Ok((compacted, _)) => *slot = Some(compacted),
            // Another writer's commit in between, say: the next append tries again.
            Err(e) => tracing::warn!(table = uri, error = %e, "could not compact"),
        }
    }
    version
}

async fn attempt(
    kept: Option<DeltaTable>,
    uri: &str,
    opts: &StorageOptions,
    batches: Vec<RecordBatch>,
) -> Result<DeltaTable> {
    let table = match kept {
        Some(mut table) => {
            // Commits of other processes since ours.
            table.update_incremental(None).await?;
            table
        }
        None => match open_table(uri, opts).await? {
            Some(table) => table,
            None => table_handle(uri, opts)?,
        },
    };
    Ok(table
        .write(batches)
        .with_save_mode(deltalake::protocol::SaveMode::Append)
        // A newer version's columns (the run history's `report`) join older tables.
        .with_schema_mode(deltalake::operations::write::SchemaMode::Merge)
        .await?)
}
