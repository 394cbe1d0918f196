//! The Medallion client library and the `medallion` command line.
//!
//! [`embedded::LocalExecutors`] runs tasks in this process, for a coordinator in this process;
//! [`remote::Remote`] submits the same spec to the leader coordinator of a cluster.

pub mod checks;
pub mod embedded;
pub mod generate;
pub mod pipelines;
pub mod progress;
pub mod remote;
pub mod sql;
pub mod summary;
pub mod tables;
