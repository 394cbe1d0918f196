//! Restoring a table to an earlier version (the `medallion restore` command): one new commit
//! whose files are that version's, so readers see its rows again and the history keeps
//! everything in between.
//!
//! The new commit carries what Medallion recorded about how the restored version was computed
//! (its `medallion.*` commit info: the input versions and the spec it came from), so the next
//! run treats the table as computed from those inputs: tables that read it see a new version
//! and are computed again, and the table itself is brought up to date from its inputs'
//! changes since then.
//!
//! ```no_run
//! # async fn roll_back(opts: &medallion_lake::StorageOptions) -> anyhow::Result<()> {
//! let restored = medallion_lake::restore::restore("lake/silver/orders", opts, 3).await?;
//! println!("version {} holds version 3's rows", restored.version);
//! # Ok(())
//! # }
//! ```

use anyhow::{Context, Result, bail};
use deltalake::kernel::transaction::CommitProperties;
use serde::Serialize;

use crate::{StorageOptions, open_table, recorded_info};

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Restored {
    /// The new version, holding the restored version's files.
    pub version: u64,
    pub restored_version: u64,
    pub files_removed: usize,
    pub files_restored: usize,
}

/// `commitInfo` key of a restore commit: the version it brought back.
pub const INFO_RESTORED_VERSION: &str = "medallion.restored_version";

/// Makes the table at `uri` hold what it held at `version`, in one new commit. Fails if the
/// version's files were vacuumed away, or when `version` is the latest already.
pub async fn restore(uri: &str, opts: &StorageOptions, version: u64) -> Result<Restored> {
    let table = open_table(uri, opts)
        .await?
        .with_context(|| format!("{uri} is not a Delta table (yet)"))?;
    let latest = table.version().context("a table without a version")?;
    if version >= latest {
        bail!("{uri}: version {version} is not before the latest version ({latest})");
    }
    let mut info = recorded_info(&table, version).await?;
    info.push((INFO_RESTORED_VERSION.to_string(), version.into()));
    let (table, metrics) = table
        .restore()
        .with_version_to_restore(version)
        .with_commit_properties(CommitProperties::default().with_metadata(info))
        .await
        .with_context(|| format!("restoring {uri} to version {version}"))?;
    Ok(Restored {
        version: table
            .version()
            .context("restored table without a version")?,
        restored_version: version,
        files_removed: metrics.num_removed_file,
        files_restored: metrics.num_restored_file,
    })
}
