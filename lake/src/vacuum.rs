//! Deleting the files of a table that no version within retention needs (`medallion vacuum`).
//!
//! Three kinds of file go:
//! - **expired**: removed from the table by a commit older than the retention period (Delta's
//!   VACUUM; time travel to versions before that commit then fails);
//! - **untracked**: in the table's directory but in no version, and older than the retention
//!   period (what another writer or a crash left behind);
//! - **abandoned**: in the dispatch directory of a task (`<run>-<task>-<n>/`) that never
//!   committed, whatever its age. Only when the caller holds the pipeline's run lease
//!   ([`VacuumOptions::abandoned`]): then no run can be about to commit them.
//!
//! A file the latest version reads, or that a commit within retention removed, is never
//! deleted. The VACUUM commits carry the latest computation's `medallion.*` commit info, so
//! the next run does not see the table as changed.
//!
//! ```no_run
//! # async fn clean(opts: &medallion_lake::StorageOptions) -> anyhow::Result<()> {
//! use medallion_lake::vacuum::{VacuumOptions, vacuum};
//! let plan = vacuum("lake/silver/orders", opts, &VacuumOptions { dry_run: true, ..Default::default() }).await?;
//! for file in &plan.files {
//!     println!("would delete {} ({:?})", file.path, file.why);
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::vacuum::VacuumMode;
use deltalake::table::config::TablePropertiesExt as _;
use deltalake::{ObjectStore as _, ObjectStoreError, Path};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::{StorageOptions, open_table, recorded_info};

/// What to delete.
#[derive(Debug, Clone, Default)]
pub struct VacuumOptions {
    /// Files removed (or untracked) for longer than this go; the table's
    /// `delta.deletedFileRetentionDuration` (7 days unless set) when `None`.
    pub retention: Option<Duration>,
    /// Allow a retention shorter than the table's: time travel to the versions in between
    /// stops working, and a reader still on one of them fails.
    pub allow_short_retention: bool,
    /// List what would be deleted, delete nothing.
    pub dry_run: bool,
    /// Delete the uncommitted files of dispatch directories whatever their age: set only
    /// while holding the pipeline's run lease.
    pub abandoned: bool,
}

/// Why a file is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Why {
    Expired,
    Untracked,
    Abandoned,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VacuumedFile {
    /// Relative to the table's root.
    pub path: String,
    pub bytes: u64,
    pub why: Why,
}

/// What a vacuum deleted (or, in a dry run, would delete).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vacuumed {
    pub dry_run: bool,
    /// The retention applied, in seconds.
    pub retention_seconds: u64,
    pub files: Vec<VacuumedFile>,
}

impl Vacuumed {
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// Vacuums the table at `uri`; nothing to do when there is no table there yet.
pub async fn vacuum(uri: &str, opts: &StorageOptions, options: &VacuumOptions) -> Result<Vacuumed> {
    let Some(table) = open_table(uri, opts).await? else {
        return Ok(Vacuumed {
            dry_run: options.dry_run,
            retention_seconds: options.retention.unwrap_or_default().as_secs(),
            files: Vec::new(),
        });
    };
    let snapshot = table.snapshot()?;
    let minimum = snapshot
        .snapshot()
        .table_properties()
        .deleted_file_retention_duration();
    let retention = options.retention.unwrap_or(minimum);
    if retention < minimum && !options.allow_short_retention {
        bail!(
            "{uri}: a retention of {} is below the table's delta.deletedFileRetentionDuration \
             ({}): versions in between could no longer be read; allow it explicitly to go below",
            humantime::format_duration(retention),
            humantime::format_duration(minimum),
        );
    }
    let store = table.log_store().object_store(None);
    let listed: HashMap<Path, u64> = store
        .list(None)
        .map_ok(|meta| (meta.location, meta.size))
        .try_collect()
        .await
        .with_context(|| format!("listing the files of {uri}"))?;
    let mut referenced: HashSet<Path> = snapshot
        .log_data()
        .into_iter()
        .map(|f| f.object_store_path())
        .collect();
    let mut tombstones = snapshot.all_tombstones(table.log_store().as_ref());
    while let Some(tombstone) = tombstones.next().await {
        let path = tombstone?.path().into_owned();
        // As Delta's VACUUM reads them: percent-encoding kept.
        referenced.insert(Path::parse(&path).unwrap_or_else(|_| Path::from(path.as_str())));
    }
    drop(tombstones);

    let abandoned: Vec<Path> = if options.abandoned {
        listed
            .keys()
            .filter(|p| in_dispatch_dir(p) && !referenced.contains(*p))
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    let info = recorded_info(&table, table.version().unwrap_or_default()).await?;
    // Delta's VACUUM in full mode (expired tombstones and old untracked files); the retention
    // was checked above.
    let period = chrono::Duration::from_std(retention)?;
    let delta = || {
        table
            .clone()
            .vacuum()
            .with_mode(VacuumMode::Full)
            .with_retention_period(period)
            .with_enforce_retention_duration(false)
    };
    let (_, planned) = delta()
        .with_dry_run(true)
        .await
        .with_context(|| format!("planning the vacuum of {uri}"))?;
    let abandoned_set: HashSet<&Path> = abandoned.iter().collect();
    let expired: Vec<Path> = planned
        .files_deleted
        .iter()
        .map(|p| Path::from(p.as_str()))
        .filter(|p| !abandoned_set.contains(p))
        .collect();

    if !options.dry_run {
        if !expired.is_empty() {
            delta()
                .with_commit_properties(CommitProperties::default().with_metadata(info))
                .await
                .with_context(|| format!("vacuuming {uri}"))?;
        }
        store
            .delete_stream(futures::stream::iter(abandoned.clone()).map(Ok).boxed())
            .or_else(|e| async move {
                match e {
                    ObjectStoreError::NotFound { path, .. } => Ok(Path::from(path)),
                    e => Err(e),
                }
            })
            .try_collect::<Vec<_>>()
            .await
            .with_context(|| format!("deleting abandoned files of {uri}"))?;
        remove_empty_dirs(uri);
    }

    let size = |p: &Path| listed.get(p).copied().unwrap_or_default();
    let mut files: Vec<VacuumedFile> = expired
        .iter()
        .map(|p| VacuumedFile {
            path: p.to_string(),
            bytes: size(p),
            why: if referenced.contains(p) {
                Why::Expired
            } else {
                Why::Untracked
            },
        })
        .chain(abandoned.iter().map(|p| VacuumedFile {
            path: p.to_string(),
            bytes: size(p),
            why: Why::Abandoned,
        }))
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Vacuumed {
        dry_run: options.dry_run,
        retention_seconds: retention.as_secs(),
        files,
    })
}

/// Whether a table file is in a task's dispatch directory (`<run>-<task>-<n>/…`): a first
/// path segment of letters, digits and dashes only, so neither `_delta_log`, a hidden
/// directory, nor a partition directory (`column=value`).
fn in_dispatch_dir(path: &Path) -> bool {
    let mut parts = path.parts();
    let (Some(first), Some(_)) = (parts.next(), parts.next()) else {
        return false;
    };
    let first = first.as_ref();
    !first.is_empty() && first.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Removes the directories a local table's vacuum emptied (object stores have no directories).
fn remove_empty_dirs(uri: &str) {
    let Some(root) = crate::local_dir(uri) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(&root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('_') || !entry.path().is_dir() {
            continue;
        }
        // Fails, as it should, on a directory that still holds files.
        let _ = remove_if_empty(&entry.path());
    }
}

/// Removes `dir` and its subdirectories when none of them holds a file.
fn remove_if_empty(dir: &std::path::Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_if_empty(&entry.path())?;
        }
    }
    std::fs::remove_dir(dir)
}
