//! `/admin/*`: machine types, accounts, password rotation, explain and the audit log, for operators only.
//!
//! No pull token ever gets in: in AWS the admin function's URL uses IAM auth (AWS verified the caller's SigV4
//! signature) and the Lambda wiring hands the caller's ARN over as an [`AdminPrincipal`] request extension, which
//! no HTTP client can set; `metahub serve` compares `Authorization: Bearer <admin secret>` in constant time. Every
//! change is recorded in the store's audit log with the principal, the action and its target.

use crate::admin_ui;
use crate::response::{ApiError, constant_time_eq};
use crate::state::App;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metahub_core::admin::{AdminPort, AdminService, MAX_CHANGES, NewAccount, NewPassword};
use metahub_core::explain::Explanation;
use metahub_core::filter;
use metahub_core::machine::{MachineType, MachineTypeName, MatchMode};
use metahub_core::names::Login;
use metahub_core::nvidia::GpuRequirements;
use metahub_core::ports::{Account, Change, Manifest};
use metahub_core::reference::ImageRef;
use metahub_core::{Error, ErrorCode, Secret};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// An admin secret shorter than this is refused at startup: it must not be guessable.
pub const MIN_ADMIN_SECRET_LEN: usize = 32;
const DEFAULT_CHANGES: usize = 100;
/// Admin bodies are a few hundred bytes; anything near this is not a request worth parsing.
const MAX_BODY: usize = 64 * 1024;

/// How admin requests authenticate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AdminAuth {
    /// No admin API: `router` serves no `/admin/` routes and `admin_router` refuses every request.
    #[default]
    Disabled,
    /// `Authorization: Bearer <secret>` (`metahub serve`); the audit log names the caller `admin-secret`.
    Secret(Secret<String>),
    /// An [`AdminPrincipal`] extension put there by the Lambda wiring from the IAM-authenticated request context.
    Iam,
}

impl AdminAuth {
    /// The secret mode, refusing a secret too short to be safe.
    pub fn secret(secret: &str) -> Result<AdminAuth, Error> {
        let secret = secret.trim();
        if secret.chars().count() < MIN_ADMIN_SECRET_LEN {
            return Err(Error::denied(format!("the admin secret must be at least {MIN_ADMIN_SECRET_LEN} characters")));
        }
        Ok(AdminAuth::Secret(secret.into()))
    }

    pub fn is_enabled(&self) -> bool {
        *self != AdminAuth::Disabled
    }
}

/// The authenticated operator of an admin request (an IAM ARN in AWS), as the audit log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminPrincipal(pub String);

const SECRET_PRINCIPAL: &str = "admin-secret";
/// The admin page signed in with the secret, in the session `id`: the audit log tells two sign-ins apart.
fn page_principal(session_id: &str) -> String {
    format!("admin-secret (page, session {session_id})")
}

pub fn routes(app: Arc<App>) -> Router<Arc<App>> {
    Router::new()
        .route("/admin/machine-types", get(list_machine_types).fallback(method_not_allowed))
        .route(
            "/admin/machine-types/{name}",
            get(get_machine_type).put(put_machine_type).delete(delete_machine_type).fallback(method_not_allowed),
        )
        .route("/admin/accounts", get(list_accounts).fallback(method_not_allowed))
        .route(
            "/admin/accounts/{login}",
            get(get_account).put(put_account).delete(delete_account).fallback(method_not_allowed),
        )
        .route("/admin/accounts/{login}/password", axum::routing::put(rotate_password).fallback(method_not_allowed))
        .route(
            "/admin/accounts/{login}/machine-type",
            axum::routing::put(set_account_machine_type).fallback(method_not_allowed),
        )
        .route("/admin/explain", get(explain).fallback(method_not_allowed))
        .route("/admin/changes", get(changes).fallback(method_not_allowed))
        .route_layer(DefaultBodyLimit::max(MAX_BODY))
        .route_layer(axum::middleware::from_fn_with_state(app, require_admin))
        // Outermost: refusals get the headers too.
        .layer(axum::middleware::from_fn(admin_ui::security_headers))
}

pub(crate) async fn method_not_allowed() -> ApiError {
    Error::new(ErrorCode::Unsupported, "method not allowed on this admin route").into()
}

fn refuse(message: &str, app: &App) -> Response {
    let mut error = ApiError::from(Error::unauthorized(message));
    if matches!(app.admin, AdminAuth::Secret(_)) {
        error = error.with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"metahub-admin\""));
    }
    error.into_response()
}

/// Authenticates the operator and leaves an [`AdminPrincipal`] for the handlers; refuses with 401 otherwise.
pub(crate) async fn require_admin(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    match &app.admin {
        AdminAuth::Disabled => return refuse("the admin API is not enabled on this server", &app),
        AdminAuth::Iam => {
            if request.extensions().get::<AdminPrincipal>().is_none_or(|p| p.0.is_empty()) {
                return refuse("admin requests must be signed with AWS credentials (IAM)", &app);
            }
        }
        AdminAuth::Secret(secret) => {
            let secret = secret.expose_str();
            match crate::auth::bearer(request.headers()) {
                // No Authorization header: the admin page, signed in with a session cookie.
                None => match admin_ui::check_session(&app, request.method(), request.headers(), secret).await {
                    Ok(session) => {
                        request.extensions_mut().insert(AdminPrincipal(page_principal(&session.id)));
                    }
                    Err(why) => return refuse(why, &app),
                },
                // A pull token is a JWT: it never equals the secret.
                Some(given) if !constant_time_eq(given.as_bytes(), secret.as_bytes()) => {
                    tracing::warn!("admin request with wrong credentials refused");
                    return refuse("invalid admin credentials", &app);
                }
                Some(_) => {
                    request.extensions_mut().insert(AdminPrincipal(SECRET_PRINCIPAL.to_owned()));
                }
            }
        }
    }
    next.run(request).await
}

/// The operator acting on an admin request: the use cases, recorded as done by the principal `require_admin`
/// authenticated. Its absence is a wiring bug, refused rather than trusted.
pub(crate) struct Operator(pub(crate) AdminService);

impl FromRequestParts<Arc<App>> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let principal = parts
            .extensions
            .get::<AdminPrincipal>()
            .map(|p| p.0.clone())
            .ok_or_else(|| Error::unauthorized("admin credentials required"))?;
        Ok(Operator(AdminService::new(app.registry.store().clone(), principal)))
    }
}

/// A JSON body of `T`, refused with a 400 that says what is wrong.
pub(crate) fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(invalid("request body: expected a JSON object, got nothing").into());
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| invalid(format!("request body: {e}")))?;
    // serde would take a list for a struct too; the API speaks objects only.
    if !value.is_object() {
        return Err(invalid("request body: expected a JSON object").into());
    }
    serde_json::from_value(value).map_err(|e| invalid(format!("request body: {e}")).into())
}

pub(crate) fn invalid(message: impl Into<String>) -> Error {
    Error::invalid(message)
}

pub(crate) fn ok_json(value: Value) -> Response {
    (StatusCode::OK, axum::Json(value)).into_response()
}

async fn list_machine_types(Operator(admin): Operator) -> Result<Response, ApiError> {
    let all = admin.machine_types().await?;
    Ok(ok_json(all.iter().map(MachineType::to_json).collect()))
}

/// What an admin handler answers.
type Answer = Result<Response, ApiError>;

async fn get_machine_type(Operator(admin): Operator, Path(name): Path<String>) -> Answer {
    Ok(ok_json(admin.machine_type(&name.parse()?).await?.to_json()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MachineTypeBody {
    /// Optional, must equal the path's: lets `get` output be sent back as is.
    name: Option<String>,
    features: Vec<String>,
    #[serde(rename = "match")]
    match_mode: Option<String>,
}

async fn put_machine_type(
    Operator(admin): Operator,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: MachineTypeBody = parse_body(&body)?;
    let name: MachineTypeName = name.parse()?;
    if let Some(given) = &body.name
        && *given != *name.as_str()
    {
        return Err(invalid(format!("body names machine type {given:?} but the path names {name:?}")).into());
    }
    let match_mode: MatchMode = body.match_mode.as_deref().unwrap_or("best").parse()?;
    let written = admin.put_machine_type(MachineType::new(name, body.features, match_mode)?).await?;
    Ok(ok_json(written.to_json()))
}

/// Deletes one machine type, recorded: 204, or `NAME_UNKNOWN` when there is none of that name.
async fn delete_machine_type(Operator(admin): Operator, Path(name): Path<String>) -> Answer {
    admin.delete_machine_type(&name.parse()?).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Deletes one account, recorded: 204, or `NAME_UNKNOWN` when there is none of that login.
async fn delete_account(State(app): State<Arc<App>>, Operator(admin): Operator, Path(login): Path<String>) -> Answer {
    let login: Login = login.parse()?;
    let deleted = admin.delete_account(&login).await;
    // Even after an error: a failed audit record follows an applied change.
    app.account_changed(login.as_str());
    deleted?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_accounts(Operator(admin): Operator) -> Result<Response, ApiError> {
    let all = admin.accounts().await?;
    Ok(ok_json(all.iter().map(Account::to_json).collect()))
}

async fn get_account(Operator(admin): Operator, Path(login): Path<String>) -> Answer {
    Ok(ok_json(admin.account(&login.parse()?).await?.to_json()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AccountBody {
    login: Option<String>,
    machine_type: String,
    password: Option<String>,
    password_hash: Option<String>,
    /// Repository prefixes the account may pull; absent or empty: every repository.
    #[serde(default)]
    repositories: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PasswordBody {
    password: Option<String>,
    password_hash: Option<String>,
}

async fn put_account(
    State(app): State<Arc<App>>,
    Operator(admin): Operator,
    Path(login): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let login: Login = login.parse()?;
    let body: AccountBody = parse_body(&body)?;
    if let Some(given) = &body.login
        && *given != *login.as_str()
    {
        return Err(invalid(format!("body names login {given:?} but the path names {login:?}")).into());
    }
    let account = NewAccount {
        login,
        machine_type: body.machine_type.parse()?,
        password: NewPassword::from_fields(body.password, body.password_hash)?,
        repositories: body.repositories,
    };
    let changed = account.login.clone();
    account_written(&app, &changed, admin.put_account(account).await)
}

/// The answer to an account write. This process forgets what it verified of the login first, even after an error:
/// a failed audit record follows an applied change.
fn account_written(app: &App, login: &Login, written: Result<Account, Error>) -> Result<Response, ApiError> {
    app.account_changed(login.as_str());
    Ok(ok_json(written?.to_json()))
}

async fn rotate_password(
    State(app): State<Arc<App>>,
    Operator(admin): Operator,
    Path(login): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let login: Login = login.parse()?;
    let body: PasswordBody = parse_body(&body)?;
    let password = NewPassword::from_fields(body.password, body.password_hash)?;
    account_written(&app, &login, admin.rotate_password(&login, password).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MachineTypeOfAccount {
    machine_type: String,
}

/// Moves an account to another machine type, keeping its password (which the API cannot read back to resend).
async fn set_account_machine_type(
    State(app): State<Arc<App>>,
    Operator(admin): Operator,
    Path(login): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let login: Login = login.parse()?;
    let body: MachineTypeOfAccount = parse_body(&body)?;
    account_written(&app, &login, admin.move_account(&login, body.machine_type.parse()?).await)
}

pub(crate) fn query_param<'a>(query: &'a HashMap<String, String>, name: &str) -> Result<&'a str, Error> {
    query
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| invalid(format!("query parameter {name} is required")))
}

async fn changes(
    Operator(admin): Operator,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let limit = match query.get("limit") {
        None => DEFAULT_CHANGES,
        // out of range: refused by the service, in the same words
        Some(v) => {
            v.parse::<usize>().map_err(|_| invalid(format!("limit must be a number from 1 to {MAX_CHANGES}")))?
        }
    };
    let all = admin.changes(limit).await?;
    Ok(ok_json(all.iter().map(Change::to_json).collect()))
}

/// Every entry of an image's index for a machine type: fits or not, why, and what a pull is served. The core's
/// [`Explanation`], as `metahub explain --json` and the matrix's cells answer it.
async fn explain(
    State(app): State<Arc<App>>,
    Operator(admin): Operator,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let name: MachineTypeName = query_param(&query, "machineType")?.parse()?;
    let image: ImageRef = query_param(&query, "image")?.parse()?;
    let machine = admin.machine_type(&name).await?;
    let manifest = app.registry.upstream_manifest(&image).await?;
    let requirements = gpu_requirements(&app, &image, &manifest).await?;
    Ok(ok_json(Explanation::new(&image, &manifest, &machine, &requirements)?.to_json()))
}

/// The NVIDIA requirements of an index's children (through the service's store and caches), none for a manifest.
pub(crate) async fn gpu_requirements(
    app: &App,
    image: &ImageRef,
    manifest: &Manifest,
) -> Result<GpuRequirements, Error> {
    if !filter::is_index_media_type(&manifest.media_type) {
        return Ok(GpuRequirements::new());
    }
    app.registry.gpu_requirements(&image.name, manifest).await
}
