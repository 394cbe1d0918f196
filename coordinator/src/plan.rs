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
use std::fmt;

use anyhow::Result;
use medallion_pipeline::report::{Engine, Refresh};
use medallion_pipeline::{Layer, Pipeline, TableRef};
use medallion_proto::task::Work;
use serde::Serialize;

use crate::planner::RunContext;

/// What a run would do to one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Bronze: new source files to ingest.
    Ingest,
    /// Silver or gold: computed again.
    Recompute,
    UpToDate,
}

#[derive(Debug, Clone, Serialize)]
pub struct TablePlan {
    pub table: String,
    pub action: Action,
    /// Why it changes, for people.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Silver and gold: from the new input rows only, or from all of them and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh: Option<Refresh>,
    /// Bronze: the source files it would ingest.
    pub new_files: usize,
    /// An estimate of the bytes read: bronze the new files; silver and gold their inputs as
    /// they are now (all of them for a full refresh), plus what bronze would add.
    pub input_bytes: u64,
    /// Gold: where its query would run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<Engine>,
}

/// What a run would do, table by table in dependency order.
#[derive(Debug, Clone, Serialize)]
pub struct RunPlan {
    pub pipeline: String,
    pub tables: Vec<TablePlan>,
}

impl RunPlan {
    /// Whether a run would change any table.
    pub fn changes(&self) -> bool {
        self.tables.iter().any(|t| t.action != Action::UpToDate)
    }
}

/// Plans a run of `pipeline` (with `--full-refresh` when `full_refresh`) without running it.
pub async fn plan(pipeline: &Pipeline, full_refresh: bool) -> Result<RunPlan> {
    let mut pending = BTreeSet::new();
    let mut new_bytes: BTreeMap<TableRef, u64> = BTreeMap::new();
    let mut tables = Vec::new();
    let rebuild = BTreeSet::new();
    let storage_options = pipeline.storage_options.clone().into_iter().collect();
    for table in pipeline.dag.topological_order().unwrap_or_default() {
        let run = RunContext {
            run_id: "plan",
            pipeline,
            storage_options: pipeline.storage_options.clone().into_iter().collect(),
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
        let uri = pipeline.table_uri(&table);
        let exists = medallion_lake::open_table(&uri, &storage_options)
            .await?
            .is_some();
        if !exists && table.layer != Layer::Bronze {
            // Its inputs may not exist yet either: nothing to plan against.
            let upstream: u64 = inputs.iter().filter_map(|t| new_bytes.get(*t)).sum();
            let reason = "the table is new".to_string();
            tables.push(TablePlan {
                table: table.to_string(),
                action: Action::Recompute,
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
            action: Action::UpToDate,
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
                plan.action = Action::Ingest;
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
                plan.action = Action::Recompute;
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

impl fmt::Display for RunPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<32}  {:<10}  {:<11}  {:>10}  WHY",
            "TABLE", "ACTION", "REFRESH", "INPUT"
        )?;
        for t in &self.tables {
            let action = match t.action {
                Action::Ingest => "ingest",
                Action::Recompute => "recompute",
                Action::UpToDate => "up to date",
            };
            let refresh = match &t.refresh {
                Some(Refresh::Incremental { .. }) => "incremental",
                Some(Refresh::Full { .. }) => "full",
                None => "",
            };
            let bytes = if t.action == Action::UpToDate {
                String::new()
            } else {
                indicatif::HumanBytes(t.input_bytes).to_string()
            };
            let engine = match t.engine {
                Some(Engine::Ballista) => " (on Ballista)",
                _ => "",
            };
            writeln!(
                f,
                "{:<32}  {action:<10}  {refresh:<11}  {bytes:>10}  {}{engine}",
                t.table, t.reason
            )?;
        }
        let changing = self
            .tables
            .iter()
            .filter(|t| t.action != Action::UpToDate)
            .count();
        match changing {
            0 => writeln!(f, "\nnothing to do: every table is up to date"),
            n => writeln!(
                f,
                "\na run would change {n} of {} tables",
                self.tables.len()
            ),
        }
    }
}
