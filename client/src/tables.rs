//! Table operations on a pipeline's lake: `medallion history` (a table version by version),
//! `restore` (an earlier version back), `vacuum` (files no version needs) and `optimize`
//! (small files compacted). They read and write the lake directly (the spec names it); all
//! but history hold the pipeline's run lease, so they never land in the middle of a run.

use std::fmt;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use indicatif::HumanBytes;
use medallion_coordinator::lease::RunLease;
use medallion_lake::history::TableVersion;
use medallion_lake::optimize::{OptimizeOptions, Optimized};
use medallion_lake::restore::Restored;
use medallion_lake::vacuum::{VacuumOptions, Vacuumed, Why};
use medallion_pipeline::{Pipeline, TableRef};
use serde::Serialize;

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

/// A table's versions, newest first (`medallion history`).
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct History(pub Vec<TableVersion>);

impl fmt::Display for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:>7}  {:<24}  {:<12}  {:>10}  {:>10}  {:>6}  {:>6}  RUN",
            "VERSION", "COMMITTED", "OPERATION", "ROWS +", "ROWS -", "FILES+", "FILES-"
        )?;
        for v in &self.0 {
            let when = v
                .timestamp
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map_or_else(String::new, |t| {
                    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
                });
            writeln!(
                f,
                "{:>7}  {:<24}  {:<12}  {:>10}  {:>10}  {:>6}  {:>6}  {}",
                v.version,
                when,
                v.operation,
                v.rows_added,
                v.rows_removed,
                v.files_added,
                v.files_removed,
                v.run_id.as_deref().unwrap_or_default()
            )?;
        }
        Ok(())
    }
}

/// The latest `limit` versions of a table, newest first.
pub async fn history(pipeline: &Pipeline, name: &str, limit: usize) -> Result<History> {
    let (_, uri) = table_of(pipeline, name)?;
    let opts = pipeline.lake_options();
    let versions = medallion_lake::history::history(&uri, &opts, limit).await?;
    Ok(History(versions))
}

/// What `medallion restore` did.
#[derive(Debug, Serialize)]
pub struct TableRestore {
    pub table: String,
    #[serde(flatten)]
    pub restored: Restored,
}

impl fmt::Display for TableRestore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.restored;
        writeln!(
            f,
            "{}: version {} holds version {}'s rows ({} files back, {} files out)",
            self.table, r.version, r.restored_version, r.files_restored, r.files_removed
        )
    }
}

/// Brings back `version` of a table as a new version, waiting for a run of the pipeline in
/// this lake to end first (or not, without `wait`).
pub async fn restore(
    pipeline: &Pipeline,
    name: &str,
    version: u64,
    wait: bool,
) -> Result<TableRestore> {
    let (table, uri) = table_of(pipeline, name)?;
    let _lease = RunLease::acquire(pipeline, &format!("restore of {table}"), wait).await?;
    let restored = medallion_lake::restore::restore(&uri, &pipeline.lake_options(), version)
        .await
        .with_context(|| format!("{table}"))?;
    Ok(TableRestore {
        table: table.to_string(),
        restored,
    })
}

/// The tables `names` of a pipeline (`gold.customer_360`), or all of them with their
/// quarantine tables when `names` is empty.
fn tables_of(pipeline: &Pipeline, names: &[String]) -> Result<Vec<(TableRef, String)>> {
    if !names.is_empty() {
        return names.iter().map(|n| table_of(pipeline, n)).collect();
    }
    Ok(pipeline
        .dag
        .tables()
        .flat_map(|t| [Some(t.clone()), pipeline.quarantine_table(t)])
        .flatten()
        .map(|t| {
            let uri = pipeline.table_uri(&t);
            (t, uri)
        })
        .collect())
}

/// What `medallion vacuum` did to a pipeline.
#[derive(Debug, Serialize)]
pub struct PipelineVacuum {
    pub tables: Vec<TableVacuum>,
    /// Staging directories of runs that ended without removing them (a killed run's), under
    /// `<lake>/_medallion/staging/`.
    pub staging: Vec<String>,
    /// Whether uncommitted files went whatever their age (the run lease was held).
    pub abandoned: bool,
}

#[derive(Debug, Serialize)]
pub struct TableVacuum {
    pub table: String,
    #[serde(flatten)]
    pub vacuumed: Vacuumed,
}

impl fmt::Display for PipelineVacuum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dry_run = self.tables.iter().any(|t| t.vacuumed.dry_run);
        let verb = if dry_run { "would delete" } else { "deleted" };
        for t in &self.tables {
            let v = &t.vacuumed;
            let retention = Duration::from_secs(v.retention_seconds);
            writeln!(
                f,
                "{}: {verb} {} files, {} (retention {})",
                t.table,
                v.files.len(),
                HumanBytes(v.bytes()),
                humantime::format_duration(retention)
            )?;
            for file in v.files.iter().filter(|_| dry_run) {
                let why = match file.why {
                    Why::Expired => "expired",
                    Why::Untracked => "untracked",
                    Why::Abandoned => "abandoned",
                };
                writeln!(f, "  {}  {}  {why}", file.path, HumanBytes(file.bytes))?;
            }
        }
        for dir in &self.staging {
            writeln!(f, "staging of run {dir}: {verb}")?;
        }
        if !self.abandoned {
            writeln!(
                f,
                "(no run lease on this lake: files of killed runs go once older than the retention)"
            )?;
        }
        Ok(())
    }
}

/// Vacuums tables of a pipeline (all when `names` is empty). Holds the run lease, so the
/// uncommitted files of runs that were killed go at any age; on object storage, where there
/// is no lease, they go once older than the retention like any untracked file.
pub async fn vacuum(
    pipeline: &Pipeline,
    names: &[String],
    mut options: VacuumOptions,
    wait: bool,
) -> Result<PipelineVacuum> {
    let tables = tables_of(pipeline, names)?;
    let lease = RunLease::acquire(pipeline, "vacuum", wait).await?;
    options.abandoned = lease.is_exclusive();
    let opts = pipeline.lake_options();
    let mut done = Vec::new();
    for (table, uri) in tables {
        let vacuumed = medallion_lake::vacuum::vacuum(&uri, &opts, &options)
            .await
            .with_context(|| format!("{table}"))?;
        done.push(TableVacuum {
            table: table.to_string(),
            vacuumed,
        });
    }
    let staging = if options.abandoned && names.is_empty() {
        abandoned_staging(pipeline, options.dry_run)?
    } else {
        Vec::new()
    };
    Ok(PipelineVacuum {
        tables: done,
        staging,
        abandoned: options.abandoned,
    })
}

/// The staging directories of this pipeline's runs left in a local lake (a run removes its
/// own when it ends; only a killed one leaves it), removed unless `dry_run`. Only called
/// with the run lease held.
fn abandoned_staging(pipeline: &Pipeline, dry_run: bool) -> Result<Vec<String>> {
    let Some(lake) = medallion_lake::local_dir(&pipeline.lake_root) else {
        return Ok(Vec::new());
    };
    let dir = lake.join("_medallion").join("staging");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_run_of(pipeline.name(), &name) {
            continue;
        }
        if !dry_run {
            std::fs::remove_dir_all(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
        }
        found.push(name);
    }
    found.sort();
    Ok(found)
}

/// Whether `run_id` is an id [`medallion_coordinator::run::new_run_id`] made for `pipeline`
/// (`<pipeline>-<yyyymmdd>T<hhmmss>Z-<hex>`), so `shop` does not claim `shop-eu`'s runs.
fn is_run_of(pipeline: &str, run_id: &str) -> bool {
    let Some(rest) = run_id
        .strip_prefix(pipeline)
        .and_then(|r| r.strip_prefix('-'))
    else {
        return false;
    };
    let Some((time, suffix)) = rest.split_once('-') else {
        return false;
    };
    chrono::NaiveDateTime::parse_from_str(time, "%Y%m%dT%H%M%SZ").is_ok()
        && !suffix.is_empty()
        && suffix.chars().all(|c| c.is_ascii_hexdigit())
}

/// What `medallion optimize` did to each table.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct PipelineOptimize(pub Vec<TableOptimize>);

#[derive(Debug, Serialize)]
pub struct TableOptimize {
    pub table: String,
    #[serde(flatten)]
    pub optimized: Optimized,
}

impl fmt::Display for PipelineOptimize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for t in &self.0 {
            let o = &t.optimized;
            match o.version {
                Some(version) => writeln!(
                    f,
                    "{}: version {version}: {} files ({}) into {} ({})",
                    t.table,
                    o.files_removed,
                    HumanBytes(o.bytes_removed),
                    o.files_added,
                    HumanBytes(o.bytes_added)
                )?,
                None => writeln!(
                    f,
                    "{}: nothing to compact ({} files)",
                    t.table, o.files_before
                )?,
            }
        }
        Ok(())
    }
}

/// Compacts tables of a pipeline (all when `names` is empty), holding the run lease: a
/// compaction landing during a run would make the run's commit conflict.
pub async fn optimize(
    pipeline: &Pipeline,
    names: &[String],
    options: &OptimizeOptions,
    wait: bool,
) -> Result<PipelineOptimize> {
    let tables = tables_of(pipeline, names)?;
    let _lease = RunLease::acquire(pipeline, "optimize", wait).await?;
    let opts = pipeline.lake_options();
    let mut done = Vec::new();
    for (table, uri) in tables {
        let optimized = medallion_lake::optimize::optimize(&uri, &opts, options)
            .await
            .with_context(|| format!("{table}"))?;
        done.push(TableOptimize {
            table: table.to_string(),
            optimized,
        });
    }
    Ok(PipelineOptimize(done))
}
