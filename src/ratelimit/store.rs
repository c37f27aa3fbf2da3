//! A governor state store whose memory is bounded: an attacker rotating source addresses (or
//! client ids) cannot grow it past `max_keys`.
//!
//! governor's own keyed stores (`DashMap`, `HashMap`) grow with every new key until someone
//! calls `retain_recent`, which only drops keys whose state is indistinguishable from fresh: a
//! flood of fresh addresses inside one replenish period keeps every entry alive. Here each shard
//! has a fixed capacity; inserting into a full shard evicts the entry with the earliest
//! theoretical arrival time (TAT), i.e. the key closest to (or past) full replenishment. Such a
//! key loses the least by being forgotten; a key that is being throttled right now has a TAT far
//! in the future and is evicted last, so rotating through fresh keys evicts the rotator's own
//! entries rather than freeing the throttled one.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Mutex, PoisonError};

use governor::nanos::Nanos;
use governor::state::StateStore;

/// Shards keep lock contention low; each holds at most `max_keys / SHARDS` keys.
const SHARDS: usize = 16;

/// Cloning shares the same memory, so the owner can keep a handle for introspection after
/// giving the store to governor.
pub struct BoundedStore<K>(Arc<Shards<K>>);

impl<K> Clone for BoundedStore<K> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

struct Shards<K> {
    shards: [Mutex<HashMap<K, Nanos>>; SHARDS],
    per_shard: usize,
    hasher: std::hash::RandomState,
}

impl<K: Hash + Eq + Clone> BoundedStore<K> {
    /// A store holding at most `max_keys` keys (rounded up to a multiple of the shard count).
    pub fn new(max_keys: usize) -> Self {
        let per_shard = max_keys.div_ceil(SHARDS).max(1);
        Self(Arc::new(Shards {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            per_shard,
            hasher: std::hash::RandomState::new(),
        }))
    }

    /// The most keys this store will ever hold.
    pub fn capacity(&self) -> usize {
        self.0.per_shard * SHARDS
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.0
            .shards
            .iter()
            .map(|shard| shard.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[allow(clippy::indexing_slicing)] // The index is reduced modulo the array's length.
    fn shard(&self, key: &K) -> &Mutex<HashMap<K, Nanos>> {
        let hash = self.0.hasher.hash_one(key);
        &self.0.shards[(hash % SHARDS as u64) as usize]
    }
}

impl<K: Hash + Eq + Clone> StateStore for BoundedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // A poisoned shard only means another thread panicked mid-update of a u64: the map is
        // still consistent, so keep limiting rather than failing open or closed.
        let mut map = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let previous = map.get(key).copied();
        let (outcome, updated) = f(previous)?;
        if previous.is_none() && map.len() >= self.0.per_shard {
            let oldest = map
                .iter()
                .min_by_key(|(_, tat)| **tat)
                .map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                map.remove(&oldest);
            }
        }
        map.insert(key.clone(), updated);
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use governor::clock::FakeRelativeClock;
    use governor::{Quota, RateLimiter};

    use super::*;

    type TestLimiter = RateLimiter<
        u32,
        BoundedStore<u32>,
        FakeRelativeClock,
        governor::middleware::NoOpMiddleware<governor::nanos::Nanos>,
    >;

    fn limiter(max_keys: usize) -> TestLimiter {
        let quota = Quota::per_hour(NonZeroU32::new(2).unwrap());
        RateLimiter::new(
            quota,
            BoundedStore::new(max_keys),
            FakeRelativeClock::default(),
        )
    }

    #[test]
    fn rotating_keys_never_exceed_the_capacity() {
        let limiter = limiter(64);
        for key in 0..10_000u32 {
            let _ = limiter.check_key(&key);
        }
        let store = limiter.into_state_store();
        assert!(store.len() <= store.capacity(), "{} keys", store.len());
        assert_eq!(store.capacity(), 64);
    }

    #[test]
    fn a_throttled_key_survives_a_rotation_flood() {
        let limiter = limiter(64);
        let victim = u32::MAX;
        // Exhaust the burst of `victim`: it is now throttled for an hour.
        while limiter.check_key(&victim).is_ok() {}
        // Each fresh key spends one cell: its TAT is one period ahead, the victim's two.
        for key in 0..10_000u32 {
            let _ = limiter.check_key(&key);
        }
        assert!(
            limiter.check_key(&victim).is_err(),
            "flooding fresh keys must not reset a throttled key"
        );
    }
}
