//! The OpenAPI document of the management API, generated from the handlers' annotations and
//! the types of [`super::types`], served at `/v1/openapi.json`.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::snapshots::{__path_create_snapshot, __path_delete_snapshot, __path_list_snapshots};
use super::*;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "rtgt management API",
        version = "1",
        description = "Targets, LUNs, portal groups and sessions of a running rtgt. Every change is applied at once \
            and written to the configuration file. Errors are JSON objects {\"error\": message}. When a token is \
            configured every request but /v1/health needs 'Authorization: Bearer TOKEN'."
    ),
    servers((url = "http://127.0.0.1:3261")),
    security((), ("bearer" = [])),
    modifiers(&BearerToken),
    paths(
        health, version, openapi, show_config, reload,
        list_targets, create_target, show_target, delete_target, bind_portal_groups, set_auth, set_acl,
        list_luns, create_lun, show_lun, delete_lun, grow_lun,
        list_snapshots, create_snapshot, delete_snapshot,
        list_portal_groups, create_portal_group, show_portal_group, delete_portal_group, add_portal, remove_portal,
        list_sessions, show_session, logout_session,
        stats, prometheus,
    )
)]
struct ApiDoc;

/// The `bearer` security scheme the document's `security` names.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The document as pretty JSON.
pub fn json() -> String {
    openapi().to_pretty_json().expect("the OpenAPI document serializes")
}
