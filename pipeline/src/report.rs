//! What a run did, table by table (counters, quality checks and commits), and its progress
//! as it goes: shared by the coordinator, which makes them, and the clients that show them.
//! Their wire form is in `medallion-proto`'s `convert` module.

use serde::{Deserialize, Serialize};

use crate::TableRef;
use crate::spec::{Action, CheckKind, Severity};

/// Progress of a run, for a CLI or a UI to show.
#[derive(Debug, Clone)]
pub enum RunEvent {
    TablePlanned {
        table: TableRef,
        tasks: usize,
    },
    TaskFinished {
        table: TableRef,
        task_id: String,
        ok: bool,
    },
    TaskRetried {
        table: TableRef,
        task_id: String,
        error: String,
    },
    TableFinished {
        /// Boxed: a report is much larger than the other events.
        report: Box<TableReport>,
    },
}

/// Where a gold table's query ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// In the task's executor.
    Local,
    /// On the Ballista scheduler, across the executors.
    Ballista,
}

/// How a silver table was computed: from the input rows committed since it was last
/// computed, or from all of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Refresh {
    /// Only the input rows committed after `after_version` of the input were read and merged.
    Incremental { after_version: u64 },
    /// Every input row was read, for `reason`.
    Full { reason: String },
}

impl Refresh {
    /// What a summary says: `incremental: 120 new rows` or `full: the spec changed`.
    pub fn describe(&self, rows_read: u64) -> String {
        match self {
            Refresh::Incremental { .. } => format!("incremental: {rows_read} new rows"),
            Refresh::Full { reason } => format!("full: {reason}"),
        }
    }
}

/// The outcome of one pipeline run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub run_id: String,
    pub pipeline: String,
    /// The run's logical date (its interval's start, `YYYY-MM-DD`).
    #[serde(default)]
    pub ds: String,
    pub started_at: String,
    pub duration_ms: u64,
    pub succeeded: bool,
    /// In dependency order.
    pub tables: Vec<TableReport>,
}

/// What happened to one table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TableStatus {
    /// New data was committed as this Delta version (for a merge that changed no row, a
    /// version that records the inputs it read).
    Committed { version: u64 },
    /// Nothing new to ingest, or inputs and spec unchanged since the last commit: the table
    /// was left as it was.
    UpToDate,
    /// The table failed; nothing was committed.
    Failed { error: String },
    /// Not run because a table it reads failed.
    Skipped { reason: String },
    /// Left as an earlier run committed it: a re-run of that run's failures.
    Kept { from_run: String },
}

impl TableStatus {
    /// The status in a word or two, for people (`committed v3`, `up to date`).
    pub fn label(&self) -> String {
        match self {
            TableStatus::Committed { version } => format!("committed v{version}"),
            TableStatus::UpToDate => "up to date".into(),
            TableStatus::Failed { .. } => "FAILED".into(),
            TableStatus::Skipped { .. } => "skipped".into(),
            TableStatus::Kept { .. } => "kept".into(),
        }
    }
}

/// Source files that changed in place since bronze ingested them, and what it did about it
/// (the source's `on_change`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedFiles {
    /// Identities (`_source_file`), sorted.
    pub files: Vec<String>,
    pub action: crate::spec::OnChange,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableReport {
    /// `layer.name`
    pub table: String,
    #[serde(flatten)]
    pub status: TableStatus,
    pub tasks: usize,
    /// Where a gold query ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<Engine>,
    /// Whether a silver table read only new input rows, and if not, why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<Refresh>,
    /// Columns a bronze table gained in this run, from fields new in its files
    /// (`schema_evolution: add_new_columns`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns_added: Vec<String>,
    /// Columns of a bronze table whose type widened in this run (`name: from -> to`), to the
    /// type its declared schema or its files give them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns_widened: Vec<String>,
    /// Source files a bronze table ingested before that changed in place since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_changed: Option<ChangedFiles>,
    /// What the spec's `maintenance:` did to the table after the run committed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Maintenance>,
    /// Task attempts beyond the first.
    pub retries: usize,
    /// Each task as it ended: where and how long it ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub task_runs: Vec<TaskRun>,
    pub metrics: Metrics,
    pub checks: Vec<CheckResult>,
    /// When the table started, counted from the start of the run.
    pub started_ms: u64,
    pub duration_ms: u64,
}

/// One task of a table, as it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRun {
    pub task_id: String,
    /// The executor its last attempt ran on; empty when it failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub executor: String,
    pub attempts: u32,
    /// When the attempt that succeeded started to run on its executor (after any wait for a
    /// free slot), counted from the start of its table; for a task that failed, when it was
    /// first dispatched.
    pub started_ms: u64,
    /// How long the attempt that succeeded ran; for a task that failed, from its first
    /// dispatch to its last failure (waits and retries included).
    pub duration_ms: u64,
    pub rows_read: u64,
    pub rows_written: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl TableReport {
    pub fn new(table: &TableRef, status: TableStatus) -> Self {
        Self {
            table: table.to_string(),
            status,
            tasks: 0,
            engine: None,
            refresh: None,
            columns_added: Vec::new(),
            columns_widened: Vec::new(),
            files_changed: None,
            maintenance: None,
            retries: 0,
            task_runs: Vec::new(),
            metrics: Metrics::default(),
            checks: Vec::new(),
            started_ms: 0,
            duration_ms: 0,
        }
    }

    pub fn succeeded(&self) -> bool {
        matches!(
            self.status,
            TableStatus::Committed { .. } | TableStatus::UpToDate | TableStatus::Kept { .. }
        )
    }
}

/// Upkeep of a committed table at the end of a run (`maintenance:` in the spec).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Maintenance {
    /// Small files compacted, and the files they became.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compacted: Option<(u64, u64)>,
    /// Files a vacuum deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_vacuumed: Option<u64>,
    /// The version a checkpoint was written at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<u64>,
    /// What failed: the run's commit stands, the next run tries again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Row counters of one table in one run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Metrics {
    pub files_read: u64,
    pub rows_read: u64,
    pub rows_written: u64,
    /// Rows kept with something in `_rescued_data` (bronze).
    pub rows_rescued: u64,
    /// Of `rows_rescued`, those that did not parse or had a value that did not fit its column;
    /// the others only carried fields the table's columns do not have.
    #[serde(default)]
    pub rows_malformed: u64,
    /// Rows dropped by silver filters.
    pub rows_filtered: u64,
    /// Older duplicates of a key dropped by silver.
    pub rows_deduplicated: u64,
    /// Rows updated in place by a silver merge.
    pub rows_updated: u64,
    /// Rows inserted by a silver merge.
    pub rows_inserted: u64,
    /// Rows a silver merge took out: the stored rows of a CDC table's recomputed keys that its
    /// changes deleted or replaced.
    #[serde(default)]
    pub rows_deleted: u64,
    /// Data files a silver merge rewrote to replace rows in them.
    #[serde(default)]
    pub files_rewritten: u64,
    pub bytes_written: u64,
    /// Rows removed by `drop` checks.
    #[serde(default)]
    pub rows_dropped: u64,
    /// Rows moved to `<table>__quarantine` by `quarantine` checks.
    #[serde(default)]
    pub rows_quarantined: u64,
    /// Bytes of source files or input table versions the table's tasks read.
    #[serde(default)]
    pub bytes_read: u64,
    /// Task time spent encoding and writing data files, summed over the table's tasks.
    #[serde(default)]
    pub write_ms: u64,
    /// Time the table's tasks ran on their executors, summed over its tasks (`write_ms` is
    /// part of it); time a task waited for a free slot is not in it.
    #[serde(default)]
    pub run_ms: u64,
    /// Time the coordinator spent on the table's commit once its tasks were done: checks,
    /// a merge, the Delta commit.
    #[serde(default)]
    pub commit_ms: u64,
    /// Of `commit_ms`, the time spent judging the table's next version by its checks.
    #[serde(default)]
    pub check_ms: u64,
}

/// The result of one quality check on a table's next version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    pub check: CheckKind,
    pub severity: Severity,
    pub action: Action,
    pub passed: bool,
    /// Rows that break the check (for `unique`: rows beyond the first of each value).
    pub failing_rows: u64,
    pub total_rows: u64,
    /// Why a check of the whole table (`row_count`, `freshness`) failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}
