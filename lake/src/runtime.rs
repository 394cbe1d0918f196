//! The memory and disk queries get: one runtime per process, shared by every query it runs
//! (the executors' tasks, and the coordinator's checks and merges at commit), so a memory
//! limit bounds them all together.

use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::Arc;

use datafusion::execution::memory_pool::{FairSpillPool, MemoryLimit, TrackConsumersPool};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};

/// How many of the largest consumers a refused query names.
const TOP_CONSUMERS: NonZeroUsize = NonZeroUsize::new(5).unwrap();

/// A runtime whose queries share `memory_limit` bytes and spill to disk beyond it (sorts,
/// aggregates, joins), under `spill_dir` (DataFusion's own temporary directory when `None`);
/// without a limit, memory is not bounded.
///
/// The pool is DataFusion's `FairSpillPool`: each consumer that can spill gets an equal share,
/// counting idle ones (apache/datafusion#22036), which leaves room for what cannot spill: a
/// sort's merges. A pool that lent idle shares to busy consumers made gold faster at 50M
/// orders but failed silver's two concurrent dedupe sorts there (PROFILE.md). A query refused
/// memory names the five consumers holding the most.
pub fn query_runtime(
    memory_limit: Option<usize>,
    spill_dir: Option<&Path>,
) -> datafusion::error::Result<Arc<RuntimeEnv>> {
    let mut builder = RuntimeEnvBuilder::new();
    if let Some(dir) = spill_dir {
        builder = builder.with_temp_file_path(dir);
    }
    if let Some(limit) = memory_limit {
        let pool = TrackConsumersPool::new(FairSpillPool::new(limit), TOP_CONSUMERS);
        builder = builder.with_memory_pool(Arc::new(pool));
    }
    builder.build_arc()
}

/// A session on `runtime`.
pub fn session(runtime: &Arc<RuntimeEnv>) -> SessionContext {
    SessionContext::new_with_config_rt(session_config(runtime), runtime.clone())
}

/// The configuration of a session on `runtime`. DataFusion keeps 10 MiB per sort aside to
/// merge what it spilled, more than a small pool can give (under 16 MiB, three rows could not
/// be sorted); under a memory limit a sort keeps a 32nd of the pool at most.
pub fn session_config(runtime: &RuntimeEnv) -> SessionConfig {
    let config = SessionConfig::new().with_information_schema(false);
    match runtime.memory_pool.memory_limit() {
        MemoryLimit::Finite(limit) => {
            let default = config.options().execution.sort_spill_reservation_bytes;
            config.with_sort_spill_reservation_bytes(default.min(limit / 32))
        }
        _ => config,
    }
}
