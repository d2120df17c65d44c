//! One load at a time per key: when a cached entry expires under load, one caller loads it
//! again and the others wait for that result, instead of each going to the database or the
//! key service.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Debug)]
pub(crate) struct Flights<K>(Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>);

impl<K> Default for Flights<K> {
    fn default() -> Self {
        Self(Mutex::new(HashMap::new()))
    }
}

impl<K: Eq + Hash> Flights<K> {
    /// The lock to hold while loading `key`; check the cache again once it is held.
    pub(crate) fn lock(&self, key: K) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        // Locks nobody holds or waits for are dropped, so the map stays small.
        m.retain(|_, l| Arc::strong_count(l) > 1);
        m.entry(key).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_load_at_a_time_per_key() {
        let f = Flights::default();
        let a = f.lock(1u8);
        let held = a.lock().await;
        assert!(f.lock(1).try_lock().is_err(), "the same key waits");
        assert!(f.lock(2).try_lock().is_ok(), "another key does not");
        drop(held);
        assert!(f.lock(1).try_lock().is_ok());
        drop(a);
        f.lock(3);
        assert_eq!(f.0.lock().unwrap().len(), 1, "unused locks are dropped");
    }
}
