//! The Medallion coordinator: plans, dispatches and commits.
//!
//! A run walks the table DAG ([`run`]) while it holds the pipeline's [`lease`] on its lake.
//! For each table the [`planner`] decides the tasks (bronze's files come from [`listing`]),
//! [`dispatch`] hands them to executors (retrying what may pass next time), and [`commit`]
//! checks the result's quality and makes it one Delta version.
//!
//! In a cluster, tasks go to executors in other processes ([`remote`], following
//! [`membership`] in etcd); [`runs`] keeps the leader's runs (state in etcd through [`store`],
//! so a new leader resumes them), [`scheduler`] runs deployed pipelines on their schedules, and
//! [`service`] is the client API. The coordinator never reads source data
//! itself, apart from sampling files to decide the columns of a new bronze table.

pub mod auth;
pub mod commit;
pub mod dispatch;
pub mod flight;
pub mod history;
pub mod lease;
pub mod listing;
pub mod maintenance;
pub mod membership;
pub mod metrics;
pub mod plan;
pub mod planner;
pub mod process;
pub mod quality;
pub mod remote;
pub mod run;
pub mod runs;
pub mod scheduler;
pub mod service;
pub mod snapshots;
pub mod sql;
pub mod store;
#[cfg(test)]
mod testing;
pub mod ui;

pub use dispatch::{RetryPolicy, TaskRunner};
pub use medallion_pipeline::report::{
    CheckResult, Metrics, RunEvent, RunReport, TableReport, TableStatus,
};
pub use planner::BallistaTarget;
pub use run::{Coordinator, Rerun, RunObserver, new_run_id};
