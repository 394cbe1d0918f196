//! Compacting a table's small files (`medallion optimize`): every run adds files, one or more
//! per task, and a reader pays for each; compaction rewrites them into files of a target size,
//! optionally clustered by columns (Z-order: rows close in those columns land in the same
//! files, so a filter on them skips the others).
//!
//! The commit changes no rows (its files are marked `dataChange: false`, which incremental
//! readers skip) and carries the latest computation's `medallion.*` commit info, so the next
//! run sees the table as computed before. The files it replaced stay until a vacuum after the
//! retention period.
//!
//! ```no_run
//! # async fn compact(opts: &medallion_lake::StorageOptions) -> anyhow::Result<()> {
//! use medallion_lake::optimize::{OptimizeOptions, optimize};
//! let options = OptimizeOptions { sort_by: vec!["customer_id".into()], ..Default::default() };
//! let done = optimize("lake/silver/orders", opts, &options).await?;
//! println!("{} files into {}", done.files_removed, done.files_added);
//! # Ok(())
//! # }
//! ```

use std::num::NonZeroU64;

use anyhow::{Context, Result};
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::optimize::OptimizeType;
use serde::Serialize;

use crate::{StorageOptions, open_table, recorded_info};

/// How to compact.
#[derive(Debug, Clone, Default)]
pub struct OptimizeOptions {
    /// The size files are compacted to; the table's `delta.targetFileSize` (100 MiB unless
    /// set) when `None`.
    pub target_size: Option<NonZeroU64>,
    /// Columns to cluster rows by (Z-order); plain compaction when empty.
    pub sort_by: Vec<String>,
    /// Leave a table with fewer files than this as it is.
    pub min_files: usize,
}

/// What a compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Optimized {
    /// The version it committed; `None` when there was nothing to compact.
    pub version: Option<u64>,
    pub files_before: usize,
    pub files_removed: u64,
    pub files_added: u64,
    pub bytes_removed: u64,
    pub bytes_added: u64,
}

/// Compacts the table at `uri`; nothing to do when there is no table there yet or its files
/// are already as large as they should be.
pub async fn optimize(
    uri: &str,
    opts: &StorageOptions,
    options: &OptimizeOptions,
) -> Result<Optimized> {
    let Some(table) = open_table(uri, opts).await? else {
        return Ok(Optimized::default());
    };
    let before = table.version();
    let files_before = table.snapshot()?.log_data().num_files();
    if files_before < options.min_files {
        return Ok(Optimized {
            version: None,
            files_before,
            ..Optimized::default()
        });
    }
    let info = recorded_info(&table, before.unwrap_or_default()).await?;
    let kind = if options.sort_by.is_empty() {
        OptimizeType::Compact
    } else {
        OptimizeType::ZOrder(options.sort_by.clone())
    };
    let mut builder = table
        .optimize()
        .with_type(kind)
        .with_commit_properties(CommitProperties::default().with_metadata(info));
    if let Some(size) = options.target_size {
        builder = builder.with_target_size(size);
    }
    let (table, metrics) = builder.await.with_context(|| format!("optimizing {uri}"))?;
    Ok(Optimized {
        version: table.version().filter(|v| Some(*v) != before),
        files_before,
        files_removed: metrics.num_files_removed,
        files_added: metrics.num_files_added,
        bytes_removed: metrics.files_removed.total_size.max(0) as u64,
        bytes_added: metrics.files_added.total_size.max(0) as u64,
    })
}
