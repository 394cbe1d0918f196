//! The memory pool a process's queries share: fair shares for the operators that can spill, as
//! DataFusion's `FairSpillPool` gives them, and the memory none of them holds lent to those
//! that need more.
//!
//! `FairSpillPool` caps every consumer that can spill at an equal share of the pool, counting
//! every consumer registered, busy or not (apache/datafusion#22036). A gold query registers
//! about ten: two aggregates, the channels of its repartitions, partial aggregates that stopped
//! aggregating. At 50M orders under 1 GiB, customer_360's two busy aggregates could hold a
//! tenth of what the hash join left each and spilled 147 times (5.1 GB) while the pool was
//! mostly empty. Here:
//!
//! - a reservation of a consumer that can spill may grow within its fair share, whatever the
//!   others hold (the guarantee `FairSpillPool` gives), or beyond it while the pool has room
//!   (a loan);
//! - a consumer that cannot spill (a hash join's build side) may grow while the pool has room,
//!   counting what each spilling consumer holds only up to an equal part of the pool: what they
//!   borrowed beyond that does not make it fail, as it would with `FairSpillPool`.
//!
//! A borrower is refused its next growth once the pool is full, and spills: so loans come back
//! as soon as the borrowers grow again, and the pool is exceeded only by guarantees met while
//! loans were out, by at most those loans.
//!
//! ```
//! use std::sync::Arc;
//! use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool};
//! use medallion_lake::pool::LendingSpillPool;
//!
//! let pool: Arc<dyn MemoryPool> = Arc::new(LendingSpillPool::new(100));
//! let busy = MemoryConsumer::new("busy").with_can_spill(true).register(&pool);
//! let _idle = MemoryConsumer::new("idle").with_can_spill(true).register(&pool);
//! busy.try_grow(90).unwrap(); // a fair share is 50; the other 40 are lent
//! assert!(busy.try_grow(20).is_err()); // the pool is full: spill
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};

use datafusion::common::{DataFusionError, Result};
use datafusion::execution::memory_pool::{
    MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation, human_readable_size,
};

/// A fair spill pool that lends the memory its spilling consumers leave idle (module doc).
#[derive(Debug)]
pub struct LendingSpillPool {
    size: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Consumers that can spill, registered (holding memory or not): a fair share divides by it.
    spillers: usize,
    /// Bytes each spilling consumer holds, by consumer id (all its reservations together);
    /// only those holding any.
    held: HashMap<usize, usize>,
    spillable: usize,
    unspillable: usize,
}

impl State {
    /// What each spilling consumer is sure to get: the memory the unspillable ones leave,
    /// divided equally.
    fn fair_share(&self, size: usize) -> usize {
        size.saturating_sub(self.unspillable) / self.spillers.max(1)
    }

    fn add(&mut self, consumer: &MemoryConsumer, bytes: usize) {
        if consumer.can_spill() {
            *self.held.entry(consumer.id()).or_default() += bytes;
            self.spillable += bytes;
        } else {
            self.unspillable += bytes;
        }
    }

    fn remove(&mut self, consumer: &MemoryConsumer, bytes: usize) {
        if consumer.can_spill() {
            if let Some(held) = self.held.get_mut(&consumer.id()) {
                *held = held.saturating_sub(bytes);
                if *held == 0 {
                    self.held.remove(&consumer.id());
                }
            }
            self.spillable = self.spillable.saturating_sub(bytes);
        } else {
            self.unspillable = self.unspillable.saturating_sub(bytes);
        }
    }
}

impl LendingSpillPool {
    /// A pool of `size` bytes.
    pub fn new(size: usize) -> Self {
        Self {
            size,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is updated whole under the lock; a panic elsewhere leaves it consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many more bytes `reservation` may take (module doc).
    fn available(&self, state: &State, reservation: &MemoryReservation) -> usize {
        if reservation.consumer().can_spill() {
            let share = state.fair_share(self.size);
            // Per reservation, as in `FairSpillPool`: an aggregate merging what it spilled
            // takes a new reservation beside the one it spilled from, and needs it granted.
            let held = reservation.size();
            let free = self
                .size
                .saturating_sub(state.unspillable + state.spillable);
            let within_share = share.saturating_sub(held);
            within_share.max(free)
        } else {
            // An equal part of the whole pool, not the fair share: that shrinks as this grows.
            let part = self.size / state.spillers.max(1);
            let guaranteed: usize = state.held.values().map(|&h| h.min(part)).sum();
            self.size.saturating_sub(state.unspillable + guaranteed)
        }
    }

    /// What the pool holds, for errors (under the lock they already have: it is not reentrant).
    fn describe(&self, state: &State) -> String {
        format!(
            "{} pool of {} ({} held by {} of {} consumers that can spill, {} by those that cannot)",
            self.name(),
            human_readable_size(self.size),
            human_readable_size(state.spillable),
            state.held.len(),
            state.spillers,
            human_readable_size(state.unspillable),
        )
    }
}

impl MemoryPool for LendingSpillPool {
    fn name(&self) -> &str {
        "lending fair spill"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        if consumer.can_spill() {
            self.state().spillers += 1;
        }
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        if consumer.can_spill() {
            let mut state = self.state();
            state.spillers = state.spillers.saturating_sub(1);
        }
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.state().add(reservation.consumer(), additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.state().remove(reservation.consumer(), shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        let mut state = self.state();
        let consumer = reservation.consumer();
        let available = self.available(&state, reservation);
        if additional <= available {
            state.add(consumer, additional);
            return Ok(());
        }
        Err(DataFusionError::ResourcesExhausted(format!(
            "Failed to allocate additional {} for {} with {} already allocated for this \
                 reservation - {} remain available for it in the {}",
            human_readable_size(additional),
            consumer.name(),
            human_readable_size(reservation.size()),
            human_readable_size(available),
            self.describe(&state),
        )))
    }

    fn reserved(&self) -> usize {
        let state = self.state();
        state.spillable + state.unspillable
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.size)
    }
}

impl fmt::Display for LendingSpillPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(&self.state()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::execution::memory_pool::FairSpillPool;

    use super::*;

    fn spiller(pool: &Arc<dyn MemoryPool>, name: &str) -> MemoryReservation {
        MemoryConsumer::new(name)
            .with_can_spill(true)
            .register(pool)
    }

    fn unspillable(pool: &Arc<dyn MemoryPool>, name: &str) -> MemoryReservation {
        MemoryConsumer::new(name).register(pool)
    }

    #[test]
    fn idle_spillers_do_not_cap_a_busy_one() {
        let lending: Arc<dyn MemoryPool> = Arc::new(LendingSpillPool::new(100));
        let fair: Arc<dyn MemoryPool> = Arc::new(FairSpillPool::new(100));
        for pool in [&lending, &fair] {
            let busy = spiller(pool, "busy");
            let _idle: Vec<_> = (0..9).map(|i| spiller(pool, &format!("idle{i}"))).collect();
            busy.try_grow(10).unwrap();
            let more = busy.try_grow(80);
            // FairSpillPool keeps a tenth of the pool for each idle one.
            assert_eq!(more.is_ok(), pool.name() != "fair", "{}", pool.name());
            assert_eq!(pool.reserved(), if more.is_ok() { 90 } else { 10 });
        }
    }

    #[test]
    fn a_full_pool_refuses_borrowers_and_keeps_fair_shares() {
        let pool: Arc<dyn MemoryPool> = Arc::new(LendingSpillPool::new(100));
        let (a, b) = (spiller(&pool, "a"), spiller(&pool, "b"));
        a.try_grow(90).unwrap();
        // The pool is full for anything past a's fair share of 50...
        let err = a.try_grow(20).unwrap_err().to_string();
        assert!(
            err.contains("Failed to allocate additional 20.0 B for a"),
            "{err}"
        );
        // ...but b still gets its own, even though a's loan is out: 130 > 100 for a while.
        b.try_grow(40).unwrap();
        assert!(b.try_grow(11).is_err());
        assert_eq!(pool.reserved(), 130);
        // a, over its share with the pool full, is refused even a byte: it spills.
        assert!(a.try_grow(1).is_err());
        a.shrink(90);
        a.try_grow(50).unwrap();
        assert_eq!(pool.reserved(), 90);
    }

    #[test]
    fn a_consumer_that_cannot_spill_gets_what_is_lent() {
        let pool: Arc<dyn MemoryPool> = Arc::new(LendingSpillPool::new(100));
        let (a, _b) = (spiller(&pool, "a"), spiller(&pool, "b"));
        let join = unspillable(&pool, "join");
        a.try_grow(90).unwrap();
        // a's fair share (50) is kept from it; the 40 lent beyond is not.
        join.try_grow(50).unwrap();
        assert!(join.try_grow(1).is_err());
        // With nothing lent, it gets only what the pool has left, as in FairSpillPool.
        a.shrink(90);
        a.try_grow(25).unwrap();
        assert!(join.try_grow(26).is_err());
        join.try_grow(25).unwrap();
    }

    #[test]
    fn each_reservation_is_sure_of_a_share_and_a_consumer_counts_until_it_goes() {
        let pool: Arc<dyn MemoryPool> = Arc::new(LendingSpillPool::new(100));
        let a = spiller(&pool, "a");
        let b = spiller(&pool, "b");
        b.try_grow(100).unwrap();
        // An aggregate that spilled merges its spill files in a new reservation: with the
        // pool full it still gets its share.
        let a2 = a.new_empty();
        a.try_grow(30).unwrap();
        a2.try_grow(30).unwrap();
        assert!(a2.try_grow(21).is_err());
        b.shrink(60);
        drop(a);
        drop(a2);
        assert_eq!(pool.reserved(), 40);
        // b is the only spiller left: the whole pool is its fair share.
        b.try_grow(60).unwrap();
        drop(b);
        assert_eq!(pool.reserved(), 0);
        assert!(matches!(pool.memory_limit(), MemoryLimit::Finite(100)));
    }
}
