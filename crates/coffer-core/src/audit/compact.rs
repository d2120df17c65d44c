//! An event's compact stored form (issue 24): its JSON as a template with typed holes, and
//! the texts worth interning per chain (actor, target, user agent, HMACs of a signed-in
//! user, which repeat from request to request).
//!
//! Written by hand in `AuditEvent`'s field order with its skip rules, every leaf through
//! serde_json so escaping is the same; `the_template_renders_the_events_json` (a property
//! test over arbitrary events) keeps the two in step. The store renders every compact form
//! before keeping it and keeps the JSON when the two differ, so a field added to the event
//! without a line here makes rows fall back to JSON, never corrupts them.
//!
//! Only values the service chooses go into a template (actions, outcomes, codes, shapes); a
//! value a caller chooses (a name, a header, a customer's action) is a hole, so callers
//! cannot grow a chain's set of templates.

use std::net::IpAddr;

use coffer_store::audit_codec::{CompactEvent, Hole, time_text, uuid7_prefix};
use uuid::Uuid;

use super::AuditEvent;

/// The compact form of `ev`. `Hole::Ref(i)` stands for `fragments[i]` until the store
/// interns them.
pub fn compact(ev: &AuditEvent) -> Result<CompactEvent, serde_json::Error> {
    let mut w = Writer::default();
    w.lit("{\"id\":\"");
    if uuid7_at(ev.id, ev.time_ms) {
        w.hole(Hole::Uuid7(ev.id));
    } else {
        w.hole(Hole::Uuid(ev.id));
    }
    w.lit("\",\"time\":");
    if time_text(ev.time_ms).as_deref() == Some(ev.time.as_str()) {
        w.lit("\"");
        w.hole(Hole::Time);
        w.lit("\"");
    } else {
        w.text(&ev.time)?;
    }
    w.lit(",\"time_ms\":");
    w.hole(Hole::TimeMs);
    if let Some(r) = &ev.request_id {
        w.lit(",\"request_id\":");
        w.uuid_or_text(r)?;
    }
    if let Some(r) = &ev.client_request_id {
        w.lit(",\"client_request_id\":");
        w.text(r)?;
    }
    if let Some(org) = &ev.org_id {
        // The chain's own organisation: the same in every event of the chain.
        w.lit(",\"org_id\":");
        w.json_lit(org)?;
    }
    let user = ev.actor.kind == "user";
    w.lit(",\"actor\":");
    let actor = serde_json::to_string(&ev.actor)?;
    if user {
        w.fragment(actor);
    } else if ev.actor.id.is_none()
        && ev.actor.name.is_none()
        && ev.actor.auth_method.is_none()
        && matches!(ev.actor.kind.as_str(), "anonymous" | "system")
    {
        w.lit(&actor);
    } else {
        w.hole(Hole::Raw(actor));
    }
    if let Some(source) = &ev.source {
        w.lit(",\"source\":");
        match source.parse::<IpAddr>() {
            Ok(ip) if ip.to_string() == *source => {
                w.lit("\"");
                w.hole(Hole::Ip(ip));
                w.lit("\"");
            }
            _ => w.text(source)?,
        }
    }
    if let Some(ua) = &ev.user_agent {
        w.lit(",\"user_agent\":");
        if user {
            w.fragment(serde_json::to_string(ua)?);
        } else {
            w.text(ua)?;
        }
    }
    w.lit(",\"action\":");
    if ev.customer {
        w.text(&ev.action)?;
    } else {
        w.json_lit(&ev.action)?;
    }
    w.lit(",\"target\":");
    let target = serde_json::to_string(&ev.target)?;
    let resolved = ev.target.project_id.is_some()
        || ev.target.env_id.is_some()
        || ev.target.param_id.is_some();
    if target == "{}" {
        w.lit(&target);
    } else if user && resolved {
        w.fragment(target);
    } else {
        w.hole(Hole::Raw(target));
    }
    w.lit(",\"outcome\":");
    w.json_lit(&ev.outcome)?;
    w.lit(",\"status\":");
    w.json_lit(&ev.status)?;
    if let Some(code) = &ev.error_code {
        w.lit(",\"error_code\":");
        w.json_lit(code)?;
    }
    w.lit(",\"customer\":");
    w.json_lit(&ev.customer)?;
    if let Some(detail) = &ev.detail {
        w.lit(",\"detail\":");
        w.hole(Hole::Raw(serde_json::to_string(detail)?));
    }
    if !ev.hmac.is_empty() {
        w.lit(",\"hmac\":");
        let hmac = serde_json::to_string(&ev.hmac)?;
        if user {
            w.fragment(hmac);
        } else {
            w.hole(Hole::Raw(hmac));
        }
    }
    w.lit("}");
    Ok(w.out)
}

/// Whether `id`'s first 48 bits are `time_ms` (as in a UUIDv7 made at that time).
fn uuid7_at(id: Uuid, time_ms: i64) -> bool {
    uuid7_prefix(time_ms).is_some_and(|p| id.as_bytes()[..6] == p)
}

#[derive(Default)]
struct Writer {
    out: CompactEvent,
}

impl Writer {
    fn lit(&mut self, s: &str) {
        self.out.template.push_str(s);
    }

    /// A value the service chose, in the template.
    fn json_lit(&mut self, v: &impl serde::Serialize) -> Result<(), serde_json::Error> {
        self.lit(&serde_json::to_string(v)?);
        Ok(())
    }

    fn hole(&mut self, h: Hole) {
        self.out.template.push(char::from(h.marker()));
        self.out.holes.push(h);
    }

    /// A string a caller chose: a hole holding its JSON (quotes included).
    fn text(&mut self, s: &str) -> Result<(), serde_json::Error> {
        self.hole(Hole::Str(serde_json::to_string(s)?));
        Ok(())
    }

    fn uuid_or_text(&mut self, s: &str) -> Result<(), serde_json::Error> {
        match Uuid::parse_str(s) {
            Ok(u) if u.hyphenated().to_string() == s => {
                self.lit("\"");
                self.hole(Hole::Uuid(u));
                self.lit("\"");
                Ok(())
            }
            _ => self.text(s),
        }
    }

    /// A text to intern: `Hole::Ref` to its place among the fragments.
    fn fragment(&mut self, text: String) {
        let i = self.out.fragments.len() as u64;
        self.out.fragments.push(text);
        self.hole(Hole::Ref(i));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use proptest::prelude::*;

    use super::*;
    use crate::audit::{AuditActor, AuditTarget};

    fn text() -> impl Strategy<Value = String> {
        "[ -~\\x00-\\x1f\"\\\\é€😀]{0,10}"
    }

    fn opt<T: std::fmt::Debug + Clone>(
        s: impl Strategy<Value = T>,
    ) -> impl Strategy<Value = Option<T>> {
        proptest::option::of(s)
    }

    fn uuid() -> impl Strategy<Value = Uuid> {
        any::<[u8; 16]>().prop_map(Uuid::from_bytes)
    }

    prop_compose! {
        fn actor()(
            kind in prop_oneof![Just("user".to_owned()), Just("anonymous".to_owned()), Just("system".to_owned()), text()],
            id in opt(uuid()),
            name in opt(text()),
            auth_method in opt(prop_oneof![Just("session".to_owned()), text()]),
        ) -> AuditActor {
            AuditActor { kind, id, name, auth_method }
        }
    }

    prop_compose! {
        fn target()(
            project in opt(text()), env in opt(text()), name in opt(text()),
            project_id in opt(uuid()), env_id in opt(uuid()), param_id in opt(uuid()),
        ) -> AuditTarget {
            AuditTarget { project, env, name, project_id, env_id, param_id }
        }
    }

    prop_compose! {
        fn event()(
            time_ms in prop_oneof![0i64..(1 << 48), any::<i64>()],
            canonical_time in any::<bool>(),
            other_time in text(),
            v7_tail in opt(any::<[u8; 10]>()),
            other_id in uuid(),
            request_id in opt(prop_oneof![uuid().prop_map(|u| u.to_string()), text()]),
            client_request_id in opt(text()),
            org_id in opt(uuid()),
            actor in actor(),
            source in opt(prop_oneof![
                any::<[u8; 4]>().prop_map(|b| IpAddr::from(b).to_string()),
                any::<[u8; 16]>().prop_map(|b| IpAddr::from(b).to_string()),
                text(),
            ]),
            user_agent in opt(text()),
            action in prop_oneof![Just("param.get".to_owned()), text()],
            target in target(),
            outcome in prop_oneof![Just("success".to_owned()), text()],
            status in any::<u16>(),
            error_code in opt(text()),
            customer in any::<bool>(),
            detail in opt(prop_oneof![
                text().prop_map(|t| serde_json::json!({ "note": t, "n": 1.5 })),
                Just(serde_json::json!({"z": [1, {"b": null, "a": true}]})),
            ]),
            hmac in proptest::collection::btree_map(text(), "[0-9a-f]{64}", 0..3),
        ) -> AuditEvent {
            let id = match v7_tail {
                Some(tail) if (0..(1 << 48)).contains(&time_ms) => {
                    let mut b = [0u8; 16];
                    b[..6].copy_from_slice(&(time_ms as u64).to_be_bytes()[2..]);
                    b[6..].copy_from_slice(&tail);
                    Uuid::from_bytes(b)
                }
                _ => other_id,
            };
            let time = match time_text(time_ms) {
                Some(t) if canonical_time => t,
                _ => other_time,
            };
            AuditEvent {
                id, time, time_ms, request_id, client_request_id, org_id, actor, source,
                user_agent, action, target, outcome, status, error_code, customer, detail, hmac,
            }
        }
    }

    proptest! {
        #[test]
        fn the_template_renders_the_events_json(ev in event()) {
            let c = compact(&ev).unwrap();
            prop_assert_eq!(c.render(ev.time_ms).unwrap(), serde_json::to_string(&ev).unwrap());
        }

        #[test]
        fn callers_choices_never_reach_the_template(a in event(), names in (text(), text(), text(), text())) {
            // The same event with every caller-chosen string replaced: the same template.
            let mut b = a.clone();
            b.client_request_id = b.client_request_id.map(|_| names.0.clone());
            b.user_agent = b.user_agent.map(|_| names.1.clone());
            b.target.project = b.target.project.map(|_| names.2.clone());
            b.target.name = b.target.name.map(|_| names.3.clone());
            if b.customer {
                b.action = names.0.clone();
            }
            if b.actor.kind != "user" {
                b.actor.name = b.actor.name.map(|_| names.1.clone());
            }
            prop_assert_eq!(compact(&a).unwrap().template, compact(&b).unwrap().template);
        }
    }

    #[test]
    fn a_users_secret_read_is_a_few_dozen_bytes_beside_its_interned_texts() {
        let mut ev = AuditEvent::now("param.get");
        ev.request_id = Some(Uuid::new_v4().to_string());
        ev.org_id = Some(Uuid::new_v4());
        ev.actor = AuditActor {
            kind: "user".into(),
            id: Some(Uuid::new_v4()),
            name: Some("alice".into()),
            auth_method: Some("api_key".into()),
        };
        ev.source = Some("10.1.2.3".into());
        ev.user_agent = Some("coffer-cli/0.1.0".into());
        ev.target = AuditTarget {
            project: Some("web".into()),
            env: Some("production".into()),
            name: Some("API_KEY".into()),
            project_id: Some(Uuid::new_v4()),
            env_id: Some(Uuid::new_v4()),
            param_id: Some(Uuid::new_v4()),
        };
        ev.hmac.insert("session".into(), "ab".repeat(32));
        let c = compact(&ev).unwrap();
        let json = serde_json::to_string(&ev).unwrap();
        assert_eq!(c.render(ev.time_ms).unwrap(), json);
        // Interned per chain: the actor, user agent, target and HMACs.
        assert_eq!(c.fragments.len(), 4);
        let body = coffer_store::audit_codec::encode(300, &c.holes);
        assert!(
            body.len() < 48,
            "{} bytes for {} of JSON",
            body.len(),
            json.len()
        );
        let mut holes: Vec<u8> = c.holes.iter().map(Hole::marker).collect();
        holes.sort_unstable();
        // id (v7), time, time_ms, request id, actor, source, user agent, target, hmac.
        assert_eq!(holes, [1, 2, 3, 4, 5, 7, 7, 7, 7]);
    }
}
