use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{ErrorBody, ErrorCode, ErrorDetail};
use crate::links::Links;
use crate::routes;

#[derive(OpenApi)]
#[openapi(
    info(title = "Coffer API", description = "Secrets and configuration management. All routes act on the organisation of the authenticated session."),
    paths(
        routes::sys::health, routes::sys::seal_status, routes::sys::init, routes::sys::unseal, routes::sys::seal, routes::sys::rekey, routes::sys::migrate_seal,
        routes::auth::login, routes::auth::logout, routes::auth::whoami, routes::auth::mfa_verify,
        routes::auth::oidc, routes::auth::token, routes::auth::change_password, routes::auth::set_email,
        routes::auth::sessions, routes::auth::revoke_session, routes::auth::mfa_enroll,
        routes::auth::mfa_confirm, routes::auth::mfa_disable,
        routes::orgs::list, routes::orgs::create, routes::orgs::switch, routes::orgs::members,
        routes::orgs::set_role, routes::orgs::remove, routes::orgs::invite, routes::orgs::invitations,
        routes::orgs::accept, routes::orgs::settings, routes::orgs::update_settings,
        routes::keys::status, routes::keys::rotate, routes::keys::attach_external, routes::keys::detach_external, routes::orgs::delete,
        routes::apikeys::create, routes::apikeys::list, routes::apikeys::revoke,
        routes::projects::list, routes::projects::create, routes::projects::list_envs, routes::projects::create_env,
        routes::params::list, routes::params::get, routes::params::set, routes::params::delete,
        routes::params::history, routes::params::rollback, routes::params::diff,
        routes::sys::metrics, routes::audit::list, routes::audit::log, routes::audit::verify,
        routes::audit::checkpoint, routes::audit::export,
    ),
    components(schemas(ErrorBody, ErrorDetail, ErrorCode)),
    modifiers(&BearerAuth, &CommonResponses, &Links, &UnsealRule),
)]
struct ApiDoc;

/// The error answers any operation can give besides its own (docs/api.md, "Errors"), added
/// to every operation that does not list them: malformed input (400), a refused credential
/// (401, on operations that take one), the request head or body limits (431, 413, 415),
/// an internal error (500), and the sealed server or unavailable storage or audit log (503).
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{RefOr, ResponseBuilder, content::ContentBuilder};
        let error = |what: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(what)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                                "ErrorBody",
                            ))))
                            .build(),
                    )
                    .build(),
            )
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            for op in [
                item.get.as_mut(),
                item.put.as_mut(),
                item.post.as_mut(),
                item.delete.as_mut(),
                item.patch.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                // Names in paths follow the name rules (crates/coffer-core/src/names.rs).
                for param in op.parameters.iter_mut().flatten() {
                    let RefOr::T(param) = param else { continue };
                    if matches!(param.parameter_in, utoipa::openapi::path::ParameterIn::Path)
                        && ["project", "env", "name"].contains(&param.name.as_str())
                    {
                        param.schema = Some(RefOr::T(utoipa::openapi::schema::Schema::Object(
                            crate::schema::name(),
                        )));
                    }
                }
                let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
                let body = op.request_body.is_some();
                let mut common = vec![
                    ("400", "malformed request (bad_request, invalid_json)"),
                    (
                        "431",
                        "request line and headers too large (headers_too_large)",
                    ),
                    ("500", "internal error"),
                    ("503", "sealed, storage or the audit log unavailable"),
                ];
                if secured {
                    common.push(("401", "no valid credential (unauthenticated)"));
                    common.push((
                        "403",
                        "the credential's role or scope does not allow this (forbidden)",
                    ));
                }
                if body {
                    common.push(("413", "body over 1 MiB (payload_too_large)"));
                    common.push(("415", "body not application/json (unsupported_media_type)"));
                }
                if path.contains('{') {
                    common.push(("404", "no such resource (not_found)"));
                }
                if path.starts_with("/v1/auth/") || path.starts_with("/v1/invitations/") {
                    common.push((
                        "429",
                        "too many attempts from this address (too_many_requests)",
                    ));
                }
                for (status, what) in common {
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error(what));
                }
            }
        }
    }
}

/// An unseal request carries a share or `reset: true` (the handler refuses anything else):
/// stated as `allOf[fields, anyOf[share given, reset true]]`.
struct UnsealRule;

impl Modify for UnsealRule {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        use utoipa::openapi::schema::{AllOfBuilder, AnyOfBuilder, ObjectBuilder, Schema, Type};
        let Some(c) = openapi.components.as_mut() else {
            return;
        };
        let Some(fields) = c.schemas.remove("UnsealRequest") else {
            return;
        };
        let share = ObjectBuilder::new().required("share");
        let reset = ObjectBuilder::new()
            .property(
                "reset",
                ObjectBuilder::new()
                    .schema_type(Type::Boolean)
                    .enum_values(Some([true])),
            )
            .required("reset");
        let rule = AllOfBuilder::new()
            .item(fields)
            .item(AnyOfBuilder::new().item(share).item(reset))
            .build();
        c.schemas
            .insert("UnsealRequest".into(), RefOr::T(Schema::AllOf(rule)));
    }
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(c) = openapi.components.as_mut() {
            c.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// The OpenAPI 3.1 document, generated from the handlers' annotations.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|_| "{}".to_owned())
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    fn doc() -> Value {
        serde_json::from_str(&super::openapi_json()).unwrap()
    }

    fn operations(doc: &Value) -> Vec<(String, String, Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                out.push((method.clone(), path.clone(), op.clone()));
            }
        }
        out
    }

    #[test]
    fn operation_ids_are_unique_and_every_operation_lists_the_common_errors() {
        let doc = doc();
        let mut ids = std::collections::BTreeSet::new();
        for (method, path, op) in operations(&doc) {
            let id = op["operationId"].as_str().unwrap().to_owned();
            assert!(
                ids.insert(id.clone()),
                "{method} {path}: operationId {id} twice"
            );
            for status in ["400", "431", "500", "503"] {
                assert!(
                    op["responses"][status].is_object(),
                    "{method} {path}: no {status}"
                );
            }
            if op["security"].as_array().is_some_and(|s| !s.is_empty()) {
                assert!(
                    op["responses"]["401"].is_object(),
                    "{method} {path}: no 401"
                );
            }
        }
    }

    /// Query parameters are declared in the query, names with the name rules, and the
    /// literal copies of the name pattern are the pattern.
    #[test]
    fn parameters_are_where_they_are_sent_with_their_rules() {
        let doc = doc();
        for (method, path, op) in operations(&doc) {
            for p in op["parameters"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().unwrap();
                if p["in"] == "path" {
                    assert!(
                        path.contains(&format!("{{{name}}}")),
                        "{method} {path}: {name}"
                    );
                }
                if ["project", "env", "name", "a", "b"].contains(&name) {
                    assert_eq!(
                        p["schema"]["pattern"].as_str(),
                        Some(crate::schema::NAME_PATTERN),
                        "{method} {path}: {name}"
                    );
                }
            }
        }
        let diff = &doc["paths"]["/v1/projects/{project}/diff"]["get"]["parameters"];
        let a = diff
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "a")
            .unwrap();
        assert_eq!(a["in"], "query");
        assert_eq!(a["required"], true);
    }

    /// Every link names an operation that exists, with parameters that operation has.
    #[test]
    fn links_lead_to_operations_with_those_parameters() {
        let doc = doc();
        let ops = operations(&doc);
        let mut seen = 0;
        for (method, path, op) in &ops {
            for (status, response) in op["responses"].as_object().unwrap() {
                for (name, link) in response["links"].as_object().into_iter().flatten() {
                    seen += 1;
                    let target = link["operationId"].as_str().unwrap();
                    let (_, _, t) = ops
                        .iter()
                        .find(|(_, _, o)| o["operationId"] == target)
                        .unwrap_or_else(|| panic!("{method} {path} {status}: {name} → {target}"));
                    for p in link["parameters"].as_object().unwrap().keys() {
                        assert!(
                            t["parameters"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .any(|tp| tp["name"] == p.as_str()),
                            "{method} {path} {status}: {target} has no parameter {p}"
                        );
                    }
                }
            }
        }
        assert!(seen >= 12, "{seen} links");
    }

    /// Request bodies refuse unknown fields, and say so.
    #[test]
    fn request_bodies_forbid_unknown_fields() {
        let doc = doc();
        for (method, path, op) in operations(&doc) {
            let Some(r) =
                op["requestBody"]["content"]["application/json"]["schema"]["$ref"].as_str()
            else {
                continue;
            };
            let name = r.rsplit('/').next().unwrap();
            let schema = &doc["components"]["schemas"][name];
            // A rule across fields wraps the fields in allOf (UnsealRule).
            let schema = schema["allOf"].get(0).unwrap_or(schema);
            assert_eq!(
                schema["additionalProperties"], false,
                "{method} {path}: {name} takes unknown fields"
            );
        }
    }
}
