//! The Medallion coordinator: plans, dispatches and commits.
//!
//! A run walks the table DAG. For each table the [`planner`] decides the tasks, [`dispatch`]
//! hands them to executors (retrying what may pass next time), and [`commit`] checks the
//! result's quality and makes it one Delta version. The coordinator never reads source data
//! itself, apart from sampling files to decide the columns of a new bronze table.

pub mod commit;
pub mod dispatch;
pub mod planner;
pub mod quality;
pub mod report;
pub mod run;

pub use dispatch::{RetryPolicy, TaskRunner};
pub use report::{CheckResult, Metrics, RunReport, TableReport, TableStatus};
pub use run::{Coordinator, RunEvent, RunObserver};
