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
    modifiers(&BearerAuth),
)]
struct ApiDoc;

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
