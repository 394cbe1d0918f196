//! What the three Medallion binaries share: where the cluster keeps its state in etcd, leases
//! that survive an etcd restart, logging and size flags.
//!
//! The coordinator and the executors meet only through etcd (membership, leadership, run
//! state) and gRPC (`medallion-proto`); this crate keeps the etcd side in one place.

pub mod etcd;
pub mod logging;
pub mod signal;
pub mod size;

pub use etcd::{EtcdArgs, KeptLease, Keys};
pub use logging::LogArgs;
