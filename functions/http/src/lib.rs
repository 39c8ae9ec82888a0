//! The one router of MetaHub: `/v2/*` and `/token`, over [`metahub_core::service::RegistryService`].
//! `metahub serve` runs it with `axum::serve`; each Lambda function runs it with `lambda_http::run`.

mod auth;
mod registry;
mod response;
mod token;

use axum::Router;
use axum::routing::{any, get};
use metahub_core::service::RegistryService;
use metahub_core::token::TokenKeys;
use std::fmt;
use std::sync::Arc;

pub use response::ApiError;

/// What the router needs to know about where it runs.
#[derive(Clone)]
pub struct HttpConfig {
    /// The URL clients reach MetaHub at (CloudFront's domain in AWS); the token realm is built from it.
    pub public_url: String,
    /// The `service` of challenges and the audience of tokens.
    pub service: String,
    /// When set, a token request without credentials is granted this machine type.
    pub anonymous_machine_type: Option<String>,
    /// When set, every request must carry `X-Origin-Verify` with this value (CloudFront adds it).
    pub origin_secret: Option<String>,
}

impl fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConfig")
            .field("public_url", &self.public_url)
            .field("service", &self.service)
            .field("anonymous_machine_type", &self.anonymous_machine_type)
            .field("origin_secret", &self.origin_secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Shared by every handler.
pub struct App {
    pub registry: RegistryService,
    pub keys: TokenKeys,
    pub config: HttpConfig,
    throttle: auth::LoginThrottle,
}

impl App {
    pub fn new(registry: RegistryService, keys: TokenKeys, config: HttpConfig) -> Arc<App> {
        Arc::new(App { registry, keys, config, throttle: auth::LoginThrottle::default() })
    }
}

fn registry_routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v2", any(registry::ping))
        .route("/v2/", any(registry::ping))
        .route("/v2/{*path}", any(registry::dispatch))
}

fn token_routes() -> Router<Arc<App>> {
    Router::new().route("/token", get(token::get_token).post(token::post_token).fallback(response::unsupported))
}

fn finish(routes: Router<Arc<App>>, app: Arc<App>) -> Router {
    routes
        .fallback(response::not_found)
        .layer(axum::middleware::from_fn_with_state(app.clone(), response::common_layer))
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

/// Every route in one service, as `metahub serve` runs it.
pub fn router(app: Arc<App>) -> Router {
    finish(registry_routes().merge(token_routes()), app)
}
