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
mod throttle;
mod token;
mod verified;

use axum::Router;
use axum::routing::{any, get};
use metahub_core::Secret;
use metahub_core::machine::MachineTypeName;
use metahub_core::service::RegistryService;
use metahub_core::token::TokenKeys;
use std::sync::Arc;

pub use admin::{AdminAuth, AdminPrincipal, MIN_ADMIN_SECRET_LEN};
pub use response::ApiError;

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

/// Shared by every handler.
pub struct App {
    pub registry: RegistryService,
    pub keys: TokenKeys,
    pub config: HttpConfig,
    /// How `/admin/*` authenticates. Kept out of `HttpConfig` so that the functions that serve no admin routes
    /// need not name it.
    pub admin: AdminAuth,
    throttle: throttle::LoginThrottle,
    hashing: throttle::HashingGate,
    accounts: auth::AccountCheck,
    verified: verified::VerifiedLogins,
}

impl App {
    pub fn new(registry: RegistryService, keys: TokenKeys, config: HttpConfig) -> Arc<App> {
        Self::with_admin(registry, keys, config, AdminAuth::Disabled)
    }

    /// An app whose `/admin/*` routes authenticate with `admin`.
    pub fn with_admin(registry: RegistryService, keys: TokenKeys, config: HttpConfig, admin: AdminAuth) -> Arc<App> {
        Arc::new(App {
            registry,
            keys,
            config,
            admin,
            throttle: throttle::LoginThrottle::default(),
            hashing: throttle::HashingGate::for_this_machine(),
            accounts: auth::AccountCheck::default(),
            verified: verified::VerifiedLogins::default(),
        })
    }

    /// `login`'s account was written or deleted through this process: its verified credentials and the state tokens
    /// are checked against are dropped at once (other processes see it within [`auth::ACCOUNT_RECHECK`]).
    pub fn account_changed(&self, login: &str) {
        self.verified.forget(login);
        self.accounts.forget(login);
    }

    /// Password hashes checked since start (argon2id runs): what logins cost, for tests and benchmarks.
    pub fn password_checks(&self) -> u64 {
        self.hashing.checks()
    }
}

fn registry_routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v2", any(registry::ping))
        .route("/v2/", any(registry::ping))
        .route("/v2/{*path}", any(registry::dispatch))
}

const TOKEN_BODY_LIMIT: usize = 64 * 1024;

fn token_routes() -> Router<Arc<App>> {
    Router::new()
        .route("/token", get(token::get_token).post(token::post_token).fallback(response::unsupported))
        // A token form is a few hundred bytes.
        .layer(axum::extract::DefaultBodyLimit::max(TOKEN_BODY_LIMIT))
}

fn finish(routes: Router<Arc<App>>, app: Arc<App>) -> Router {
    routes
        .fallback(response::not_found)
        .layer(axum::middleware::from_fn_with_state(app.clone(), response::common_layer))
        .layer(axum::middleware::from_fn(response::head_without_body))
        // Outermost: requests refused by the origin check are logged too.
        .layer(axum::middleware::from_fn_with_state(app.clone(), access_log::layer))
        .with_state(app)
}

/// `/v2/*` only: the registry function's routes.
pub fn registry_router(app: Arc<App>) -> Router {
    finish(registry_routes(), app)
}

/// `/token` only: the token function's routes.
pub fn token_router(app: Arc<App>) -> Router {
    finish(token_routes(), app)
}

/// `/admin/*` only: the admin function's routes. Every request is refused unless `app.admin` is enabled.
pub fn admin_router(app: Arc<App>) -> Router {
    finish(admin_routes(app.clone()), app)
}

/// The admin API and the admin page.
fn admin_routes(app: Arc<App>) -> Router<Arc<App>> {
    admin::routes(app.clone()).merge(admin_ui::routes(app))
}

/// Every route in one service, as `metahub serve` runs it; `/admin/*` only when the admin API is enabled.
pub fn router(app: Arc<App>) -> Router {
    let mut routes = registry_routes().merge(token_routes());
    if app.admin.is_enabled() {
        routes = routes.merge(admin_routes(app.clone()));
    }
    finish(routes, app)
}
