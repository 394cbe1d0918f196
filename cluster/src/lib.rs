//! What the three Medallion binaries share: where the cluster keeps its state in etcd, leases
//! that survive an etcd restart, server flags and start-up, exiting, logging and size flags.
//!
//! The coordinator and the executors meet only through etcd (membership, leadership, run
//! state) and gRPC (`medallion-proto`); this crate keeps the etcd side in one place.

pub mod etcd;
pub mod logging;
pub mod metrics;
pub mod retry;
pub mod server;
pub mod signal;
pub mod tls;

pub use etcd::{EtcdArgs, KeptLease, Keys, Leases};
pub use logging::LogArgs;
pub use server::ServerArgs;
pub use tls::{ClientTls, Target, TlsArgs};

use std::process::ExitCode;

/// The allocator of every Medallion binary (they all link this crate). DataFusion allocates
/// and frees per batch, from many threads: mimalloc keeps that fast and returns memory to the
/// OS, where glibc's arenas let the resident set grow.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// This machine's name, as `/etc/hostname` gives it (a pod's name on Kubernetes).
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
}

/// A server's exit: logs why it stopped, as the last line of its log.
pub fn exit_code(server: &str, outcome: anyhow::Result<()>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "{server} stopped");
            ExitCode::FAILURE
        }
    }
}
