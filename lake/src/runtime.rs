//! The memory and disk queries get: one runtime per process, shared by every query it runs
//! (the executors' tasks, and the coordinator's checks and merges at commit), so a memory
//! limit bounds them all together.

use std::fmt;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use datafusion::execution::memory_pool::{
    FairSpillPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation, TrackConsumersPool,
};
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
/// memory names the five consumers holding the most; one refused while the process's resident
/// set is well over the limit has the allocator return freed memory sooner ([`AtTheLimit`]).
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
        builder = builder.with_memory_pool(Arc::new(AtTheLimit::new(pool)));
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

/// How long the allocator keeps freed memory before it returns it to the OS, once the pool has
/// refused memory with the process's resident set over [`resident_budget`]. mimalloc keeps it
/// 1 s by default, so reusing it costs no page faults; but a process spilling at its limit frees
/// and allocates its pool's worth many times a second, and what it kept held the resident set at
/// 1.65x a 1 GiB pool (50M orders, silver and gold). 100 ms held it at 1.19x for ~8% of the
/// time. At 5M orders silver's sort also reaches the pool, but the resident set stays near 1.1x
/// the pool, and 100 ms there would cost ~9% for nothing (PROFILE.md).
const PURGE_DELAY_AT_THE_LIMIT_MS: std::ffi::c_long = 100;

/// mimalloc's `mi_option_purge_delay` (its `mimalloc.h`), which libmimalloc-sys does not name.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The resident set a process with a pool of `limit` bytes may reach before its allocator
/// returns freed memory sooner: the pool and a quarter more (the binary, buffers outside the
/// pool, what the allocator keeps for reuse).
fn resident_budget(limit: usize) -> usize {
    limit + limit / 4
}

/// Whether the allocator has been told to purge sooner: its setting is the process's, so once
/// one pool has set it, no pool of the process reads the resident set again.
static PURGING_SOONER: AtomicBool = AtomicBool::new(false);

/// A pool that, when it refuses memory (the process's queries have reached its limit and spill)
/// while the process's resident set is over [`resident_budget`], has the allocator return freed
/// memory within [`PURGE_DELAY_AT_THE_LIMIT_MS`], so the resident set comes back near the pool.
/// The setting stays in force afterwards.
#[derive(Debug)]
struct AtTheLimit<P> {
    pool: P,
}

impl<P: MemoryPool> AtTheLimit<P> {
    fn new(pool: P) -> Self {
        Self { pool }
    }

    /// Called when the pool refused memory: checks the resident set (one read of
    /// `/proc/self/statm`; refusals come once per spill, not per batch).
    fn refused(&self) {
        if PURGING_SOONER.load(Ordering::Relaxed) {
            return;
        }
        let MemoryLimit::Finite(limit) = self.pool.memory_limit() else {
            return;
        };
        let Some(resident) = memory_stats::memory_stats().map(|m| m.physical_mem) else {
            return;
        };
        if resident > resident_budget(limit) && !PURGING_SOONER.swap(true, Ordering::Relaxed) {
            tracing::info!(
                resident,
                limit,
                purge_delay_ms = PURGE_DELAY_AT_THE_LIMIT_MS,
                "memory limit reached with the resident set over budget: freed memory goes back \
                 to the OS sooner"
            );
            // SAFETY: sets one of mimalloc's options, an atomic store it allows at any time.
            unsafe {
                libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_AT_THE_LIMIT_MS)
            };
        }
    }
}

impl<P: MemoryPool> MemoryPool for AtTheLimit<P> {
    fn name(&self) -> &str {
        self.pool.name()
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.pool.register(consumer)
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.pool.unregister(consumer)
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.pool.grow(reservation, additional)
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.pool.shrink(reservation, shrink)
    }

    fn try_grow(
        &self,
        reservation: &MemoryReservation,
        additional: usize,
    ) -> datafusion::error::Result<()> {
        let grown = self.pool.try_grow(reservation, additional);
        if grown.is_err() {
            self.refused();
        }
        grown
    }

    fn reserved(&self) -> usize {
        self.pool.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        self.pool.memory_limit()
    }
}

impl<P: fmt::Display> fmt::Display for AtTheLimit<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.pool.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn purge_delay() -> std::ffi::c_long {
        // SAFETY: reads one of mimalloc's options.
        unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }
    }

    /// The allocator keeps its default while the pool refuses memory to a process within its
    /// resident budget, and returns freed memory sooner once a refusal finds it over; a refusal
    /// still names the consumers holding the most.
    #[test]
    fn a_pool_refusing_memory_over_the_resident_budget_has_freed_memory_returned_sooner() {
        // mimalloc's default, which also shows the option's number is the purge delay's.
        assert_eq!(purge_delay(), 1000, "before any refusal");
        let roomy = query_runtime(Some(1 << 40), None).unwrap();
        let holder = MemoryConsumer::new("holder").register(&roomy.memory_pool);
        holder.try_grow(1 << 41).unwrap_err();
        assert_eq!(purge_delay(), 1000, "a refusal within the resident budget");

        let small = query_runtime(Some(1 << 20), None).unwrap();
        let holder = MemoryConsumer::new("holder").register(&small.memory_pool);
        holder.try_grow(512 << 10).unwrap();
        let error = holder.try_grow(1 << 20).unwrap_err().to_string();
        assert!(error.contains("holder"), "{error}");
        assert_eq!(purge_delay(), PURGE_DELAY_AT_THE_LIMIT_MS);
        assert_eq!(small.memory_pool.reserved(), 512 << 10);
    }
}
