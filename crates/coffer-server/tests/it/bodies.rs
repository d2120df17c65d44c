//! The API's JSON bodies under arbitrary input (the property-test form of fuzzing them):
//! any body, well-formed JSON of any shape or not JSON at all, gets an answer below 500;
//! a refusal is the JSON error with its code and never repeats the input.

use axum::body::Body;
use axum::http::{Request, header};
use proptest::prelude::*;
use serde_json::Value;

use crate::router::{Api, api};

/// Arbitrary JSON, every string marked so that an echo in an answer is found.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,40}".prop_map(|s| Value::String(format!("CANARY{s}"))),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("name".to_owned()),
                    Just("value".to_owned()),
                    Just("secret".to_owned()),
                    Just("role".to_owned()),
                    Just("email".to_owned()),
                    Just("password".to_owned()),
                    Just("username".to_owned()),
                    "[a-z_]{1,12}",
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const ROUTES: [(&str, &str); 8] = [
    ("PUT", "/v1/projects/app/envs/default/params/K"),
    ("POST", "/v1/projects"),
    ("POST", "/v1/projects/app/envs"),
    ("POST", "/v1/org/api-keys"),
    ("POST", "/v1/org/invitations"),
    ("POST", "/v1/invitations/accept"),
    ("POST", "/v1/auth/login"),
    ("POST", "/v1/projects/app/envs/default/params/K/rollback"),
];

/// The router with the project `app` the routes above write to.
async fn api_with_app() -> Api {
    let a = api().await;
    a.call(
        "POST",
        "/v1/projects",
        Some(serde_json::json!({"name": "app"})),
        true,
    )
    .await;
    a
}

async fn send(a: &Api, method: &str, uri: &str, body: Vec<u8>) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {}", a.token))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.clone()))
        .unwrap();
    let (status, _, answer) = a.raw(req).await;
    assert!(
        status.as_u16() < 500,
        "{method} {uri} {:?} -> {status} {answer}",
        String::from_utf8_lossy(&body)
    );
    if !status.is_success() {
        assert!(
            answer["error"]["code"].is_string(),
            "{method} {uri} -> {status} {answer}"
        );
        assert!(
            !answer.to_string().contains("CANARY"),
            "{method} {uri}: the refusal repeats the input: {answer}"
        );
    }
}

#[test]
fn any_body_gets_an_answer_below_500_and_refusals_echo_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let a = rt.block_on(api_with_app());
    let input = (
        0..ROUTES.len(),
        prop_oneof![
            json().prop_map(|v| v.to_string().into_bytes()),
            proptest::collection::vec(any::<u8>(), 0..256),
        ],
    );
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(256));
    runner
        .run(&input, |(route, body)| {
            let (method, uri) = ROUTES[route];
            rt.block_on(send(&a, method, uri, body));
            Ok(())
        })
        .unwrap();
}

/// A NUL inside a string is valid JSON that PostgreSQL cannot store or even compare: every
/// route refuses it (or finds nobody, for a login) instead of failing with 500. Found by
/// the property test above on PostgreSQL.
#[tokio::test]
async fn a_nul_in_any_string_is_refused_not_a_server_error() {
    let a = api_with_app().await;
    let nul = "CANARY\u{0}x";
    for (method, uri) in ROUTES {
        for field in [
            "name",
            "value",
            "role",
            "email",
            "password",
            "username",
            "description",
        ] {
            let mut body = serde_json::json!({"name": "n", "value": "v", "role": "viewer"});
            body[field] = Value::from(nul);
            send(&a, method, uri, body.to_string().into_bytes()).await;
        }
        let tuple = serde_json::json!([nul, nul]);
        send(&a, method, uri, tuple.to_string().into_bytes()).await;
    }
    let (status, _, _) = a
        .raw(
            Request::builder()
                .method("POST")
                .uri("/v1/auth/login")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(
                    serde_json::json!({"username": "admin\u{0}", "password": nul}).to_string(),
                ))
                .unwrap(),
        )
        .await;
    assert_eq!(status.as_u16(), 401);
}
