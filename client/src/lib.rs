//! The Medallion client library and the `medallion` command line.
//!
//! [`embedded::LocalExecutors`] runs tasks in this process, for a coordinator in this process;
//! the cluster client will submit the same spec to a remote coordinator.

pub mod embedded;
pub mod generate;
pub mod progress;
pub mod summary;
