//! Which handler answers which path: one router per function (`/v2/*`, `/token`, `/admin/*`) and the one
//! `metahub serve` runs, all finished with the same layers.

use crate::state::App;
use crate::{access_log, admin, admin_ui, registry, response, token};
use axum::Router;
use axum::routing::{any, get};
use std::sync::Arc;

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
