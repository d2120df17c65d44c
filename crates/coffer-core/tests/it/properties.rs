//! Property tests: audit chain verification, environment inheritance, and the permission
//! matrix.

use coffer_core::audit::{CheckpointRow, Cx, Verifier};
use coffer_core::{CoreError, Role, SetParam};
use coffer_crypto::audit::{AuditSigningKey, GENESIS, checkpoint_message, event_hash};
use proptest::prelude::*;
use proptest::sample::Index;
use uuid::Uuid;

/// A chain of `bodies` in the system chain (nil organisation): (seq, prev, hash, body).
fn chain(bodies: &[String]) -> Vec<(u64, [u8; 32], [u8; 32], String)> {
    let mut prev = GENESIS;
    bodies
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let seq = i as u64 + 1;
            let hash = event_hash(&prev, seq, b);
            let out = (seq, prev, hash, b.clone());
            prev = hash;
            out
        })
        .collect()
}

fn verify(
    entries: &[(u64, [u8; 32], [u8; 32], String)],
    key: &AuditSigningKey,
    signed: &[u64],
    original: &[(u64, [u8; 32], [u8; 32], String)],
    head: Option<(u64, [u8; 32])>,
) -> bool {
    // Checkpoints signed over the original chain, as the server made them.
    let checkpoints = signed
        .iter()
        .map(|&seq| {
            let (_, _, hash, _) = &original[seq as usize - 1];
            CheckpointRow {
                org_id: Uuid::nil(),
                seq,
                hash: *hash,
                created_at: 7,
                signature: key
                    .sign(&checkpoint_message(Uuid::nil(), seq, hash, 7))
                    .to_vec(),
            }
        })
        .collect();
    let mut v = Verifier::new(
        Uuid::nil(),
        Some(key.public_key().to_vec()),
        checkpoints,
        None,
    );
    for (seq, prev, hash, body) in entries {
        v.push(*seq, prev, hash, body);
    }
    v.finish(head).ok
}

#[derive(Debug, Clone)]
enum Tamper {
    /// Change an entry's body, keeping its stored hash.
    Edit(Index),
    /// Delete an entry that is not the last.
    Delete(Index),
    /// Swap two neighbours.
    Swap(Index),
    /// Rewrite the chain from an entry on, every later hash recomputed.
    Rewrite(Index),
    /// Cut off the end (the chain head still says where it was).
    Cut(Index),
}

fn tamper() -> impl Strategy<Value = Tamper> {
    prop_oneof![
        any::<Index>().prop_map(Tamper::Edit),
        any::<Index>().prop_map(Tamper::Delete),
        any::<Index>().prop_map(Tamper::Swap),
        any::<Index>().prop_map(Tamper::Rewrite),
        any::<Index>().prop_map(Tamper::Cut),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// An untouched chain verifies; every tampering is reported — a rewrite with
    /// recomputed hashes only where a signature covers the rewritten part, as documented.
    #[test]
    fn the_verifier_reports_every_tampering(
        n in 2usize..24,
        t in tamper(),
        signed_at in any::<Index>(),
    ) {
        let key = AuditSigningKey::generate().unwrap();
        let bodies: Vec<String> = (0..n).map(|i| format!("{{\"action\":\"e{i}\"}}")).collect();
        let original = chain(&bodies);
        let last = original[n - 1].2;
        let signed = [signed_at.index(n) as u64 + 1];
        prop_assert!(verify(&original, &key, &signed, &original, Some((n as u64, last))));

        let mut e = original.clone();
        let head = Some((n as u64, last));
        let expect_caught = match &t {
            Tamper::Edit(i) => {
                e[i.index(n)].3.push(' ');
                true
            }
            Tamper::Delete(i) => {
                e.remove(i.index(n - 1));
                true
            }
            Tamper::Swap(i) => {
                e.swap(i.index(n - 1), i.index(n - 1) + 1);
                true
            }
            Tamper::Rewrite(i) => {
                let from = i.index(n);
                let mut bodies = bodies.clone();
                bodies[from] = "{\"action\":\"forged\"}".into();
                e = chain(&bodies);
                // Caught where a signature covers an entry at or after the rewrite.
                signed[0] as usize > from
            }
            Tamper::Cut(i) => {
                e.truncate(i.index(n - 1) + 1);
                true
            }
        };
        let rewritten_head = if matches!(t, Tamper::Rewrite(_)) {
            Some((n as u64, e[n - 1].2))
        } else {
            head
        };
        let ok = verify(&e, &key, &signed, &original, rewritten_head);
        prop_assert_eq!(ok, !expect_caught, "{:?} with a signature at {}", t, signed[0]);
    }
}

/// Random environment trees with values set at random environments: every environment
/// resolves a name to the value of its nearest ancestor (itself included) that sets it.
#[test]
fn every_environment_resolves_to_its_nearest_definition() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let f = rt.block_on(crate::fixture());
    let (c, p, cx) = (&f.coffer, &f.owner, Cx::default());
    let tree = proptest::collection::vec((any::<Index>(), any::<Option<u8>>()), 1..7);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(24));
    let case = std::sync::atomic::AtomicU32::new(0);
    runner
        .run(&tree, |envs| {
            let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            rt.block_on(async {
                let project = format!("p{n}");
                c.projects().create_project(&cx, p, &project).await.unwrap();
                // Environment 0 is `default`; environment i > 0 inherits from one before it.
                let mut names = vec!["default".to_owned()];
                let mut parents = vec![None];
                let mut values = vec![None];
                for (i, (parent, value)) in envs.iter().enumerate() {
                    if i > 0 {
                        let parent = parent.index(i);
                        let name = format!("e{i}");
                        c.projects()
                            .create_env(&cx, p, &project, &name, Some(&names[parent]))
                            .await
                            .unwrap();
                        names.push(name);
                        parents.push(Some(parent));
                    }
                    values.push(*value);
                }
                values.truncate(names.len());
                for (i, v) in values.iter().enumerate() {
                    if let Some(v) = v {
                        let value = v.to_string();
                        c.params()
                            .set_param(
                                &cx,
                                p,
                                &project,
                                &names[i],
                                SetParam {
                                    name: "K",
                                    value: value.as_bytes(),
                                    secret: Some(false),
                                },
                            )
                            .await
                            .unwrap();
                    }
                }
                for (i, env) in names.iter().enumerate() {
                    let mut at = Some(i);
                    let mut expected = None;
                    while let Some(j) = at {
                        if let Some(v) = values[j] {
                            expected = Some(v.to_string());
                            break;
                        }
                        at = parents[j];
                    }
                    let got = c.params().get_param(&cx, p, &project, env, "K").await;
                    match (expected, got) {
                        (Some(e), Ok(v)) => {
                            assert_eq!(
                                v.value.unwrap().expose_secret(),
                                e.as_bytes(),
                                "{envs:?} at {i}"
                            )
                        }
                        (None, Err(CoreError::NotFound { .. })) => {}
                        (e, g) => panic!("{envs:?} at {i}: expected {e:?}, got {g:?}"),
                    }
                }
            });
            Ok(())
        })
        .unwrap();
}

/// Nobody hands out a role above their own: for every pair (creator, requested), an
/// invitation, an API key and a role change succeed only if the requested role is at most
/// the creator's — and an Admin never makes or changes an Owner.
#[test]
fn no_role_grants_more_than_it_has() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let f = crate::fixture().await;
        let (c, cx) = (&f.coffer, Cx::default());
        let roles = [Role::Viewer, Role::Contributor, Role::Admin, Role::Owner];
        let mut creators = Vec::new();
        for (i, r) in roles.iter().enumerate() {
            let name = format!("creator{i}");
            let pw = format!("{name} long password");
            c.identity()
                .create_member(&f.owner, &name, &pw, *r)
                .await
                .unwrap();
            let s = c
                .identity()
                .login(&cx, &name, &pw, None, "test")
                .await
                .unwrap()
                .session()
                .unwrap();
            creators.push(s.principal);
        }
        for creator in &creators {
            for (j, requested) in roles.iter().enumerate() {
                let invited = c
                    .identity()
                    .invite(&cx, creator, &format!("x{j}@example.com"), *requested)
                    .await
                    .is_ok();
                let keyed = c
                    .identity()
                    .create_api_key(
                        &cx,
                        creator,
                        coffer_core::apikeys::NewApiKey {
                            name: format!("k{j}"),
                            role: *requested,
                            read_only: false,
                            projects: Vec::new(),
                            envs: Vec::new(),
                            ttl: std::time::Duration::from_secs(3600),
                        },
                    )
                    .await
                    .is_ok();
                // A target member to change: a Viewer each time, made by the Owner.
                let target = format!("t{}{j}", creator.username);
                c.identity()
                    .create_member(&f.owner, &target, "target long password", Role::Viewer)
                    .await
                    .unwrap();
                let changed = c
                    .identity()
                    .set_member_role(&cx, creator, &target, *requested)
                    .await
                    .is_ok();
                let may = |owner_only: bool| {
                    creator.role >= Role::Admin
                        && *requested <= creator.role
                        && (!owner_only || *requested < Role::Owner || creator.role == Role::Owner)
                };
                assert!(
                    !invited || may(true),
                    "{:?} invited {requested:?}",
                    creator.role
                );
                assert!(
                    !changed || may(true),
                    "{:?} made {requested:?}",
                    creator.role
                );
                assert!(
                    !keyed || *requested <= creator.role,
                    "{:?} keyed {requested:?}",
                    creator.role
                );
            }
        }
    });
}
