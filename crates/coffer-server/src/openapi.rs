use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{ErrorBody, ErrorCode, ErrorDetail};
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
    modifiers(&BearerAuth, &CommonResponses),
)]
struct ApiDoc;

/// The error answers any operation can give besides its own (docs/api.md, "Errors"), added
/// to every operation that does not list them: malformed input (400), a refused credential
/// (401, on operations that take one), the request head or body limits (431, 413, 415),
/// an internal error (500), and the sealed server or unavailable storage or audit log (503).
struct CommonResponses;

/// A name: no control characters, `/` or `=`, no `..`, no whitespace at either end.
const NAME_PATTERN: &str =
    r"^(?!.*\.\.)[^\x00-\x1f\x7f-\x9f/=\s]([^\x00-\x1f\x7f-\x9f/=]*[^\x00-\x1f\x7f-\x9f/=\s])?$";

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
                            utoipa::openapi::schema::ObjectBuilder::new()
                                .schema_type(utoipa::openapi::schema::Type::String)
                                .min_length(Some(1))
                                .max_length(Some(256))
                                .pattern(Some(NAME_PATTERN))
                                .build(),
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
