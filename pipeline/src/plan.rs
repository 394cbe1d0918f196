//! What a run would do, table by table (`medallion plan`); computed by the coordinator's
//! planner (`medallion_coordinator::plan`), sent over the wire as JSON like the run report.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::report::{Engine, Refresh};

/// What a run would do to one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Bronze: new source files to ingest.
    Ingest,
    /// Silver or gold: computed again.
    Recompute,
    UpToDate,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TablePlan {
    pub table: String,
    pub action: Change,
    /// Why it changes, for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Silver and gold: from the new input rows only, or from all of them and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<Refresh>,
    /// Bronze: the source files it would ingest.
    pub new_files: usize,
    /// An estimate of the bytes read: bronze the new files; silver and gold their inputs as
    /// they are now (all of them for a full refresh), plus what bronze would add.
    pub input_bytes: u64,
    /// Gold: where its query would run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<Engine>,
}

/// What a run would do, table by table in dependency order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunPlan {
    pub pipeline: String,
    pub tables: Vec<TablePlan>,
}

impl RunPlan {
    /// Whether a run would change any table.
    pub fn changes(&self) -> bool {
        self.tables.iter().any(|t| t.action != Change::UpToDate)
    }
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
                Change::Ingest => "ingest",
                Change::Recompute => "recompute",
                Change::UpToDate => "up to date",
            };
            let refresh = match &t.refresh {
                Some(Refresh::Incremental { .. }) => "incremental",
                Some(Refresh::Full { .. }) => "full",
                None => "",
            };
            let bytes = if t.action == Change::UpToDate {
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
            .filter(|t| t.action != Change::UpToDate)
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
