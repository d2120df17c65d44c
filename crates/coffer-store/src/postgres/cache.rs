//! Current values this node has read, answered again without a database round trip.
//!
//! Several nodes write to one database, so an entry can be stale the moment another node
//! commits a write. Entries are therefore never trusted on their own: every answer from
//! here comes with a [`ReadCheck`], and the request's audit append confirms it in the same
//! transaction (`coffer_append_audit_packed`). A request whose check fails records
//! nothing and is answered again from the database, so a read still returns a value that
//! was current at a moment during the request, as without the cache. Entries are
//! ciphertexts only, and short-lived: they bound the memory and the work a stale entry can
//! cost, not correctness.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::{ParamValue, ReadCheck};

/// How long an entry is used before it is read again.
const TTL: Duration = Duration::from_secs(10);
/// Parameter names cached at most (per node); past this the cache starts over.
const MAX_NAMES: usize = 100_000;

#[derive(Debug)]
struct Entry {
    /// The environment chain the read was made from, nearest first.
    chain: Vec<Uuid>,
    value: ParamValue,
    read_at: Instant,
}

/// Entries by organisation, then by parameter name (one per environment chain read).
#[derive(Debug, Default)]
pub(super) struct ValueCache {
    orgs: Mutex<HashMap<Uuid, HashMap<String, Vec<Entry>>>>,
    names: std::sync::atomic::AtomicUsize,
}

impl ValueCache {
    /// The cached answer to "`name` as seen from `chain`", with what must be confirmed.
    pub(super) fn get(
        &self,
        org: Uuid,
        chain: &[Uuid],
        name: &str,
    ) -> Option<(ParamValue, ReadCheck)> {
        let orgs = self.orgs.lock().ok()?;
        let entry = orgs
            .get(&org)?
            .get(name)?
            .iter()
            .find(|e| e.chain == chain && e.read_at.elapsed() < TTL)?;
        let found_at = chain.iter().position(|e| *e == entry.value.param.env_id)?;
        let check = ReadCheck {
            org_id: org,
            envs: chain[..=found_at].to_vec(),
            name: name.to_owned(),
            param_id: entry.value.param.id,
            version: entry.value.version.version,
        };
        Some((entry.value.clone(), check))
    }

    /// Remember what a read from the database answered (`None`: nothing to remember).
    pub(super) fn put(&self, org: Uuid, chain: &[Uuid], name: &str, value: Option<&ParamValue>) {
        let Ok(mut orgs) = self.orgs.lock() else {
            return;
        };
        let Some(value) = value else {
            if let Some(entries) = orgs.get_mut(&org).and_then(|n| n.get_mut(name)) {
                entries.retain(|e| e.chain != chain);
            }
            return;
        };
        if self.names.load(std::sync::atomic::Ordering::Relaxed) >= MAX_NAMES {
            orgs.clear();
            self.names.store(0, std::sync::atomic::Ordering::Relaxed);
        }
        let names = orgs.entry(org).or_default();
        let entries = names.entry(name.to_owned()).or_insert_with(|| {
            self.names
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Vec::new()
        });
        entries.retain(|e| e.chain != chain && e.read_at.elapsed() < TTL);
        entries.push(Entry {
            chain: chain.to_vec(),
            value: value.clone(),
            read_at: Instant::now(),
        });
    }

    /// Forget every entry for `name` in `org` (it was written, or a check on it failed).
    pub(super) fn forget(&self, org: Uuid, name: &str) {
        if let Ok(mut orgs) = self.orgs.lock()
            && let Some(names) = orgs.get_mut(&org)
            && names.remove(name).is_some()
        {
            self.names
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Forget everything.
    pub(super) fn clear(&self) {
        if let Ok(mut orgs) = self.orgs.lock() {
            orgs.clear();
            self.names.store(0, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ParamRow, ParamVersionRow, VersionAction};

    fn value(org: Uuid, env: Uuid, version: u64) -> ParamValue {
        let id = Uuid::from_u128(7);
        ParamValue {
            param: ParamRow {
                id,
                org_id: org,
                env_id: env,
                name: "K".into(),
                current_version: version,
                deleted: false,
                updated_at: 0,
            },
            version: ParamVersionRow {
                param_id: id,
                version,
                is_secret: true,
                action: VersionAction::Set,
                actor_id: Uuid::nil(),
                created_at: 0,
            },
            ciphertext: None,
        }
    }

    #[test]
    fn answers_come_with_the_check_of_the_environments_up_to_the_one_that_defines_it() {
        let c = ValueCache::default();
        let (org, prod, base) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let chain = [prod, base];
        assert!(c.get(org, &chain, "K").is_none());
        c.put(org, &chain, "K", Some(&value(org, base, 4)));
        let (v, check) = c.get(org, &chain, "K").unwrap();
        assert_eq!(v.version.version, 4);
        assert_eq!(
            check,
            ReadCheck {
                org_id: org,
                envs: vec![prod, base],
                name: "K".into(),
                param_id: Uuid::from_u128(7),
                version: 4,
            }
        );
        // Another chain, another organisation or another name is not this entry.
        assert!(c.get(org, &[base], "K").is_none());
        assert!(c.get(Uuid::from_u128(9), &chain, "K").is_none());
        assert!(c.get(org, &chain, "L").is_none());
        // A newer read replaces it; a read that found nothing removes it.
        c.put(org, &chain, "K", Some(&value(org, base, 5)));
        assert_eq!(c.get(org, &chain, "K").unwrap().1.version, 5);
        c.put(org, &chain, "K", None);
        assert!(c.get(org, &chain, "K").is_none());
    }

    #[test]
    fn written_names_are_forgotten_and_key_changes_forget_everything() {
        let c = ValueCache::default();
        let (org, env) = (Uuid::from_u128(1), Uuid::from_u128(2));
        c.put(org, &[env], "K", Some(&value(org, env, 1)));
        c.forget(org, "K");
        assert!(c.get(org, &[env], "K").is_none());
        c.put(org, &[env], "K", Some(&value(org, env, 1)));
        c.put(Uuid::from_u128(5), &[env], "L", Some(&value(org, env, 1)));
        c.clear();
        assert!(c.get(org, &[env], "K").is_none());
        assert_eq!(c.names.load(std::sync::atomic::Ordering::Relaxed), 0);
    }
}
