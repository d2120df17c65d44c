//! A bounded cache of current parameter ciphertexts, in front of SQLite.
//!
//! An embedded SQLite file belongs to exactly one server process, and every write goes
//! through this process's writer, so the cache can be kept exact: each committed write
//! invalidates its key before the writer replies. A generation counter stops a read that
//! raced with a write from inserting what it read before the commit. Only ciphertexts are
//! held — never plaintext — so the cache adds nothing an attacker with memory access of a
//! sealed server could use.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use uuid::Uuid;

use crate::ParamValue;

const MAX_ENTRIES: usize = 100_000;

type Key = (Uuid, Uuid, String);

#[derive(Debug, Default)]
pub(super) struct ValueCache {
    generation: AtomicU64,
    map: RwLock<HashMap<Key, Option<ParamValue>>>,
}

impl ValueCache {
    /// The cached answer for (org, env, name): `Some(None)` is a cached "no such parameter".
    pub(super) fn get(&self, org: Uuid, env: Uuid, name: &str) -> Option<Option<ParamValue>> {
        let map = self.map.read().ok()?;
        map.get(&(org, env, name.to_owned())).cloned()
    }

    /// Take before reading from the database; pass to [`ValueCache::insert`].
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Store a database answer, unless a write committed since `generation` was taken.
    pub(super) fn insert(
        &self,
        generation: u64,
        org: Uuid,
        env: Uuid,
        name: &str,
        value: Option<ParamValue>,
    ) {
        if let Ok(mut map) = self.map.write() {
            if self.generation.load(Ordering::Acquire) != generation {
                return;
            }
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
            map.insert((org, env, name.to_owned()), value);
        }
    }

    /// Called after a write commits, before the writer is answered.
    pub(super) fn invalidate(&self, org: Uuid, env: Uuid, name: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut map) = self.map.write() {
            map.remove(&(org, env, name.to_owned()));
        }
    }

    /// Forget everything (ciphertexts were rewrapped or deleted in bulk).
    pub(super) fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut map) = self.map.write() {
            map.clear();
        }
    }
}
