//! Appended events in their stored form (see `audit_codec`): the texts they share interned
//! per chain, each body packed with the ids of its texts, or kept as JSON when its compact
//! form does not render back to exactly the JSON that is hashed.
//!
//! Each writer resolves what its [`Dictionary`] does not know in its own way (SQLite inside
//! the append's transaction, PostgreSQL in a call of its own before it), so the work is cut
//! in three: [`Plan::new`] prepares the batch, [`Plan::needs`] says what must be looked up,
//! [`Plan::pack`] makes the bodies once everything is known.

use std::collections::{BTreeMap, HashMap};

use uuid::Uuid;

use crate::audit_codec::{self, CompactEvent, FORMAT_JSON, Hole};
use crate::{NewAuditEvent, StoreError};

/// Interned texts a node keeps ids of: far more than the templates, actors, user agents and
/// targets that recur in a busy window, a few megabytes at most.
const MAX_STRINGS: usize = 1 << 16;

/// A text to intern in an organisation's chain.
pub(crate) type Text = ([u8; 32], String);

/// Ids of chains and interned texts. Only ids whose rows are committed belong here: an id
/// from a transaction that rolled back may be given to another text.
#[derive(Default)]
pub(crate) struct Dictionary {
    chains: HashMap<Uuid, i64>,
    strings: HashMap<(Uuid, [u8; 32]), i64>,
}

impl std::fmt::Debug for Dictionary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dictionary")
            .field("chains", &self.chains.len())
            .field("strings", &self.strings.len())
            .finish()
    }
}

impl Dictionary {
    pub(crate) fn chain(&self, org: Uuid) -> Option<i64> {
        self.chains.get(&org).copied()
    }

    fn string(&self, org: Uuid, digest: &[u8; 32]) -> Option<i64> {
        self.strings.get(&(org, *digest)).copied()
    }

    pub(crate) fn learn_chain(&mut self, org: Uuid, chain: i64) {
        self.chains.insert(org, chain);
    }

    pub(crate) fn learn_string(&mut self, org: Uuid, digest: [u8; 32], id: i64) {
        if self.strings.len() >= MAX_STRINGS
            && let Some(k) = self.strings.keys().next().copied()
        {
            // One entry makes room; the cache stays warm for the rest.
            self.strings.remove(&k);
        }
        self.strings.insert((org, digest), id);
    }

    /// Keep what a committed transaction interned.
    pub(crate) fn merge(&mut self, learned: Dictionary) {
        for (org, chain) in learned.chains {
            self.learn_chain(org, chain);
        }
        for ((org, digest), id) in learned.strings {
            self.learn_string(org, digest, id);
        }
    }

    /// Forget everything (after an append failed in a way that may be this cache's fault).
    pub(crate) fn clear(&mut self) {
        self.chains.clear();
        self.strings.clear();
    }
}

/// The dictionary, even if a thread panicked holding it (a cache of committed ids, each
/// entry written whole).
pub(crate) fn lock(dict: &std::sync::Mutex<Dictionary>) -> std::sync::MutexGuard<'_, Dictionary> {
    dict.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An event's compact form, checked: its texts (the template first) and its holes.
#[derive(Debug)]
struct Prepared {
    texts: Vec<Text>,
    holes: Vec<Hole>,
}

/// An event's compact form if it renders to exactly the JSON that is hashed; otherwise the
/// event is stored as JSON (and counted, see [`compact_fallbacks`]).
fn prepare(e: &NewAuditEvent) -> Option<Prepared> {
    let c: &CompactEvent = e.compact.as_ref()?;
    if c.render(e.time).ok().as_deref() != Some(e.body.as_str()) {
        FALLBACKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            action = %e.action,
            "an audit event's compact form does not render to its JSON; stored as JSON"
        );
        return None;
    }
    let texts = std::iter::once(&c.template)
        .chain(&c.fragments)
        .map(|t| (coffer_crypto::sha256(t.as_bytes()), t.clone()))
        .collect();
    Some(Prepared {
        texts,
        holes: c.holes.clone(),
    })
}

static FALLBACKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Events this process stored as JSON because their compact form did not render back.
pub fn compact_fallbacks() -> u64 {
    FALLBACKS.load(std::sync::atomic::Ordering::Relaxed)
}

/// What a batch needs looked up: per organisation, whether its chain is unknown and which
/// of its texts are.
#[derive(Debug, Default)]
pub(crate) struct Needs {
    pub orgs: BTreeMap<Uuid, OrgNeeds>,
}

#[derive(Debug, Default)]
pub(crate) struct OrgNeeds {
    pub chain: bool,
    pub texts: Vec<Text>,
}

/// A batch of events on its way to being stored.
#[derive(Debug)]
pub(crate) struct Plan<'a> {
    events: &'a [&'a NewAuditEvent],
    prepared: Vec<Option<Prepared>>,
}

impl<'a> Plan<'a> {
    pub(crate) fn new(events: &'a [&'a NewAuditEvent]) -> Self {
        Self {
            events,
            prepared: events.iter().map(|e| prepare(e)).collect(),
        }
    }

    /// What neither `dict` nor `learned` knows yet.
    pub(crate) fn needs(&self, dict: &Dictionary, learned: &Dictionary) -> Needs {
        let mut needs = Needs::default();
        for (e, p) in self.events.iter().zip(&self.prepared) {
            let known_chain = dict.chain(e.org_id).or(learned.chain(e.org_id)).is_some();
            if !known_chain {
                needs.orgs.entry(e.org_id).or_default().chain = true;
            }
            for (digest, text) in p.iter().flat_map(|p| &p.texts) {
                if dict.string(e.org_id, digest).is_none()
                    && learned.string(e.org_id, digest).is_none()
                {
                    let org = needs.orgs.entry(e.org_id).or_default();
                    if !org.texts.iter().any(|(d, _)| d == digest) {
                        org.texts.push((*digest, text.clone()));
                    }
                }
            }
        }
        needs
    }

    /// Each event's chain and stored body, once `dict` and `learned` know every id.
    pub(crate) fn pack(
        &self,
        dict: &Dictionary,
        learned: &Dictionary,
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        let missing = || {
            tracing::error!("an audit event's chain or text was not interned");
            StoreError::CommitFailed
        };
        self.events
            .iter()
            .zip(&self.prepared)
            .map(|(e, p)| {
                let org = e.org_id;
                let chain = dict.chain(org).or(learned.chain(org)).ok_or_else(missing)?;
                let body = match p {
                    None => {
                        let mut b = Vec::with_capacity(1 + e.body.len());
                        b.push(FORMAT_JSON);
                        b.extend_from_slice(e.body.as_bytes());
                        b
                    }
                    Some(p) => {
                        let ids = p
                            .texts
                            .iter()
                            .map(|(d, _)| dict.string(org, d).or(learned.string(org, d)))
                            .map(|id| id.and_then(|id| u64::try_from(id).ok()))
                            .collect::<Option<Vec<u64>>>()
                            .ok_or_else(missing)?;
                        let holes = p
                            .holes
                            .iter()
                            .map(|h| match h {
                                Hole::Ref(i) => usize::try_from(*i)
                                    .ok()
                                    .and_then(|i| ids.get(i + 1))
                                    .map(|id| Hole::Ref(*id))
                                    .ok_or_else(missing),
                                h => Ok(h.clone()),
                            })
                            .collect::<Result<Vec<_>, _>>()?;
                        audit_codec::encode(ids[0], &holes)
                    }
                };
                Ok((chain, body))
            })
            .collect()
    }
}
