//! What a run would do, without doing it (`medallion plan`): the planner's own decisions for
//! every table in dependency order, with the tables upstream that would commit treated as
//! changed (`RunContext::pending`), so a table reading one is shown recomputing.
//!
//! Nothing is written: no lease, no task, no commit. What it says is what the run that
//! follows does, unless the sources or the lake change in between.
//!
//! ```no_run
//! # async fn f(pipeline: &medallion_pipeline::Pipeline) -> anyhow::Result<()> {
//! let plan = medallion_coordinator::plan::plan(pipeline, false).await?;
//! if plan.changes() { println!("{plan}"); }
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use medallion_pipeline::plan::{Change, RunPlan, TablePlan};
use medallion_pipeline::report::{Engine, Refresh};
use medallion_pipeline::{Layer, Pipeline, TableRef};
use medallion_proto::task::Work;

use crate::planner::RunContext;

/// Plans a run of `pipeline` (with `--full-refresh` when `full_refresh`) without running it.
pub async fn plan(pipeline: &Pipeline, full_refresh: bool) -> Result<RunPlan> {
    let mut pending = BTreeSet::new();
    let mut new_bytes: BTreeMap<TableRef, u64> = BTreeMap::new();
    let mut tables = Vec::new();
    let rebuild = BTreeSet::new();
    let storage_options = pipeline.lake_options();
    for table in pipeline.dag.topological_order().unwrap_or_default() {
        let run = RunContext {
            run_id: "plan",
            pipeline,
            storage_options: storage_options.clone(),
            ingested_at_micros: 0,
            ballista: None,
            full_refresh,
            rebuild: &rebuild,
            pending: &pending,
        };
        let inputs: Vec<&TableRef> = pipeline.dag.deps(&table).iter().collect();
        let changed: Vec<String> = inputs
            .iter()
            .filter(|t| pending.contains(**t))
            .map(ToString::to_string)
            .collect();
        let new = table.layer != Layer::Bronze && {
            let uri = pipeline.table_uri(&table);
            medallion_lake::open_table(&uri, &storage_options)
                .await?
                .is_none()
        };
        if new {
            // Its inputs may not exist yet either: nothing to plan against.
            let upstream: u64 = inputs.iter().filter_map(|t| new_bytes.get(*t)).sum();
            let reason = "the table is new".to_string();
            tables.push(TablePlan {
                table: table.to_string(),
                action: Change::Recompute,
                reason: reason.clone(),
                refresh: Some(Refresh::Full { reason }),
                new_files: 0,
                input_bytes: upstream,
                engine: (table.layer == Layer::Gold).then_some(Engine::Local),
            });
            new_bytes.insert(table.clone(), upstream);
            pending.insert(table.clone());
            continue;
        }
        let stage = run.plan(&table).await?;
        let mut plan = TablePlan {
            table: table.to_string(),
            action: Change::UpToDate,
            reason: String::new(),
            refresh: None,
            new_files: 0,
            input_bytes: 0,
            engine: None,
        };
        if !stage.tasks.is_empty() {
            if table.layer == Layer::Bronze {
                let files: Vec<_> = stage
                    .tasks
                    .iter()
                    .filter_map(|t| match &t.work {
                        Some(Work::Ingest(w)) => Some(&w.files),
                        _ => None,
                    })
                    .flatten()
                    .collect();
                plan.action = Change::Ingest;
                plan.new_files = files.len();
                plan.input_bytes = files.iter().map(|f| f.size.max(0) as u64).sum();
                plan.reason = format!("{} new files", files.len());
                if let Some(c) = &stage.source_changes.files_changed {
                    plan.reason += &format!(", {} changed in place", c.files.len());
                }
            } else {
                let upstream: u64 = inputs.iter().filter_map(|t| new_bytes.get(*t)).sum();
                let current = if matches!(stage.refresh, Some(Refresh::Incremental { .. })) {
                    0
                } else {
                    let mut bytes = 0;
                    for input in &inputs {
                        let uri = pipeline.table_uri(input);
                        if let Some(t) = medallion_lake::open_table(&uri, &storage_options).await? {
                            bytes += medallion_lake::data_bytes(&t)?;
                        }
                    }
                    bytes
                };
                plan.action = Change::Recompute;
                plan.input_bytes = current + upstream;
                plan.reason = match (&stage.refresh, changed.is_empty()) {
                    (_, false) => format!("{} would change", changed.join(", ")),
                    (Some(Refresh::Full { reason }), true) => reason.clone(),
                    _ => "its inputs changed".to_string(),
                };
                plan.refresh = stage.refresh.clone();
                plan.engine = stage.engine;
            }
            new_bytes.insert(table.clone(), plan.input_bytes);
            pending.insert(table.clone());
        }
        tables.push(plan);
    }
    Ok(RunPlan {
        pipeline: pipeline.name().to_string(),
        tables,
    })
}
