//! The one router of MetaHub: `/v2/*`, `/token`, `/admin/*` and the admin page at `/admin/`, over [`metahub_core::service::RegistryService`].
//! `metahub serve` runs it with `axum::serve`; each Lambda function runs it with `lambda_http::run`.

pub mod access_log;
mod admin;
mod admin_ui;
pub mod app;
mod auth;
mod listing;
mod registry;
mod response;
mod router;
mod state;
mod throttle;
mod token;
mod verified;

use metahub_core::Secret;
use metahub_core::machine::MachineTypeName;

pub use admin::{AdminAuth, AdminPrincipal, MIN_ADMIN_SECRET_LEN};
pub use response::ApiError;
pub use router::{admin_router, registry_router, router, token_router};
pub use state::App;

/// What the router needs to know about where it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// The URL clients reach MetaHub at; the token realm is built from it. Behind CloudFront (an origin secret is
    /// configured) the viewer's host in `X-Forwarded-Host` takes precedence, so it may be empty there.
    pub public_url: String,
    /// The `service` of challenges and the audience of tokens.
    pub service: String,
    /// When set, a token request without credentials is granted this machine type.
    pub anonymous_machine_type: Option<MachineTypeName>,
    /// When set, every request must carry `X-Origin-Verify` with one of these values (CloudFront adds it).
    pub origin_secret: Option<OriginSecrets>,
}

/// The `X-Origin-Verify` values accepted: the current one and, while CloudFront's edges move over to it after a
/// rotation, the previous one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginSecrets {
    pub current: Secret<String>,
    pub previous: Option<Secret<String>>,
}

impl OriginSecrets {
    /// Whether `given` is one of the accepted values (in constant time per value).
    pub fn accepts(&self, given: &[u8]) -> bool {
        let current = response::constant_time_eq(given, self.current.expose_str().as_bytes());
        let previous =
            self.previous.as_ref().is_some_and(|p| response::constant_time_eq(given, p.expose_str().as_bytes()));
        current | previous
    }
}
