//! Upkeep of the tables a run committed, at the end of the run (`maintenance:` in the spec):
//! compaction of small files, vacuum, and checkpoints at an interval.
//!
//! It runs inside the run, so the run lease keeps other runs of the pipeline out, and after
//! every table is computed, so no table of the run reads a table being compacted. Each step
//! changes no rows and carries the table's `medallion.*` commit info, so the next run finds
//! the table, and what reads it, up to date. A failure is a warning in the table's report:
//! the run's commits stand, and the next run tries again.
//!
//! The vacuum here keeps to the retention period: uncommitted files of killed runs go once
//! older than it. `medallion vacuum`, holding the run lease itself, removes them at once.

use std::collections::HashMap;

use anyhow::Result;
use medallion_lake::optimize::OptimizeOptions;
use medallion_lake::vacuum::VacuumOptions;
use medallion_pipeline::report::{Maintenance, TableReport, TableStatus};
use medallion_pipeline::spec::MaintenanceSpec;
use medallion_pipeline::{Pipeline, TableRef};

/// Maintains each table of `tables` that the run committed (and its quarantine table), as the
/// pipeline's spec asks; records what was done in the table's report.
pub async fn after_run(
    pipeline: &Pipeline,
    storage_options: &HashMap<String, String>,
    tables: &mut [TableReport],
) {
    let spec = &pipeline.spec.maintenance;
    if spec.checkpoint_interval.is_none() && spec.optimize.is_none() && spec.vacuum.is_none() {
        return;
    }
    for report in tables.iter_mut() {
        if !matches!(report.status, TableStatus::Committed { .. }) {
            continue;
        }
        let Ok(table) = report.table.parse::<TableRef>() else {
            continue;
        };
        let mut done = Maintenance::default();
        for t in std::iter::once(table.clone()).chain(pipeline.quarantine_table(&table)) {
            let uri = pipeline.table_uri(&t);
            if let Err(e) = maintain(spec, &t, &uri, storage_options, &mut done).await {
                tracing::warn!(table = %t, error = format!("{e:#}"), "maintenance failed");
                done.error = Some(format!("{t}: {e:#}"));
                break;
            }
        }
        report.maintenance = Some(done);
    }
}

/// One table's upkeep: compaction, then vacuum, then a checkpoint of the result.
async fn maintain(
    spec: &MaintenanceSpec,
    table: &TableRef,
    uri: &str,
    storage_options: &HashMap<String, String>,
    done: &mut Maintenance,
) -> Result<()> {
    if let Some(o) = &spec.optimize {
        let name = table.to_string();
        let options = OptimizeOptions {
            target_size: o.target_file_size.as_ref().and_then(|s| {
                let bytes = medallion_pipeline::size::parse_size(&s.value).ok()?;
                std::num::NonZeroU64::new(bytes as u64)
            }),
            sort_by: o
                .sort_by
                .get(&name)
                .map(|c| c.value.clone())
                .unwrap_or_default(),
            min_files: usize::try_from(o.min_files()).unwrap_or(usize::MAX),
        };
        let optimized = medallion_lake::optimize::optimize(uri, storage_options, &options).await?;
        if optimized.version.is_some() {
            let (removed, added) = done.compacted.unwrap_or_default();
            done.compacted = Some((
                removed + optimized.files_removed,
                added + optimized.files_added,
            ));
        }
    }
    if let Some(v) = &spec.vacuum {
        let options = VacuumOptions {
            retention: v
                .retention
                .as_ref()
                .and_then(|r| humantime::parse_duration(&r.value).ok()),
            ..VacuumOptions::default()
        };
        let vacuumed = medallion_lake::vacuum::vacuum(uri, storage_options, &options).await?;
        *done.files_vacuumed.get_or_insert(0) += vacuumed.files.len() as u64;
    }
    if let Some(interval) = &spec.checkpoint_interval {
        let checkpoint =
            medallion_lake::checkpoint::checkpoint_if_due(uri, storage_options, interval.value)
                .await?;
        done.checkpoint = done.checkpoint.or(checkpoint);
    }
    Ok(())
}
