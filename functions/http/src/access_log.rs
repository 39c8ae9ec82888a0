//! One structured access-log line and one set of metrics per request, from what the core noted while answering it
//! ([`metahub_core::observe`]) and what the HTTP exchange shows (route, status, duration, digest served).
//!
//! Never logged: the query string (token requests carry scopes and, from some clients, more), headers other than
//! the digest, `Location` (presigned URLs carry signatures), bodies. Metrics go to the `metrics` facade: whatever
//! recorder the process installed (Prometheus for `metahub serve`, CloudWatch EMF in Lambda) receives them.

use crate::auth::source_of;
use crate::registry::{CONTENT_DIGEST, Route, parse_route};
use crate::state::App;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use metahub_core::observe::{self, Answer, Record};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The request id the platform assigned (Lambda's), inserted as an extension by the function's wiring.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The target of access lines: `RUST_LOG=metahub::access=off` silences them alone.
pub const TARGET: &str = "metahub::access";

/// What the access line says about one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Access {
    pub request_id: String,
    pub method: String,
    /// `ping`, `manifest`, `blob`, `token`, `admin` or `other`.
    pub route: &'static str,
    pub repository: Option<String>,
    pub reference: Option<String>,
    pub digest: Option<String>,
    pub client: Option<String>,
    pub status: u16,
    pub duration: Duration,
    pub record: Record,
}

fn classify(path: &str) -> (&'static str, Option<String>, Option<String>) {
    if path == "/v2" || path == "/v2/" {
        return ("ping", None, None);
    }
    if let Some(rest) = path.strip_prefix("/v2/") {
        return match parse_route(rest) {
            Ok(Route::Manifest(name, reference)) => ("manifest", Some(name.to_string()), Some(reference.to_string())),
            Ok(Route::Blob(name, digest)) => ("blob", Some(name.to_string()), Some(digest.to_string())),
            Ok(Route::Tags(name)) => ("tags", Some(name.to_string()), None),
            Ok(Route::Referrers(name, digest)) => ("referrers", Some(name.to_string()), Some(digest.to_string())),
            Err(_) => ("other", None, None),
        };
    }
    if path == "/token" {
        return ("token", None, None);
    }
    if path == "/admin" || path.starts_with("/admin/") {
        return ("admin", None, None);
    }
    ("other", None, None)
}

/// A process-unique id when the platform gave none: `metahub serve` has no request ids of its own.
fn local_request_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{:x}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The outermost layer of the router: runs the request inside a fresh record, then logs and counts it.
pub async fn layer(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let (route, repository, reference) = classify(request.uri().path());
    let method = request.method().clone();
    let request_id = request.extensions().get::<RequestId>().map_or_else(local_request_id, |RequestId(id)| id.clone());
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| *addr);
    let client = source_of(&app, request.headers(), peer);
    let (response, record) = observe::record(next.run(request)).await;
    let digest = response.headers().get(CONTENT_DIGEST).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let access = Access {
        request_id,
        method: method_name(&method),
        route,
        repository,
        reference,
        digest,
        client,
        status: response.status().as_u16(),
        duration: started.elapsed(),
        record,
    };
    access.log();
    access.count();
    response
}

/// Methods as they are for the ones a registry sees; anything else is `other` (the method is client-chosen text).
fn method_name(method: &Method) -> String {
    match *method {
        Method::GET | Method::HEAD | Method::POST | Method::PUT | Method::PATCH | Method::DELETE | Method::OPTIONS => {
            method.as_str().to_owned()
        }
        _ => "other".to_owned(),
    }
}

fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

impl Access {
    /// How a manifest request ended, for `metahub_pulls_total`: its answer, or `error`.
    pub fn pull_result(&self) -> &'static str {
        match self.record.answer {
            Some(answer) if self.status < 400 => answer.as_str(),
            _ => "error",
        }
    }

    pub fn log(&self) {
        let r = &self.record;
        let upstream_ms = millis(r.upstream.iter().map(|c| c.duration).sum());
        tracing::info!(
            target: TARGET,
            request_id = %self.request_id,
            method = %self.method,
            route = self.route,
            repository = self.repository.as_deref(),
            reference = self.reference.as_deref(),
            digest = self.digest.as_deref(),
            machine_type = r.machine_type.as_deref(),
            answer = r.answer.map(Answer::as_str),
            upstream = %r.upstream_summary(),
            upstream_requests = r.upstream.len(),
            upstream_ms,
            cache_hits = r.cache_hits(),
            cache_misses = r.cache_misses(),
            login = r.login.as_ref().map(|(login, _)| login.as_str()),
            login_result = r.login.as_ref().map(|(_, result)| result.as_str()),
            client = self.client.as_deref(),
            status = self.status,
            duration_ms = millis(self.duration),
            "access"
        );
    }

    /// The metrics of one request. Labels are bounded sets (routes, statuses, error codes, configured machine
    /// types): never a repository, login or client address.
    pub fn count(&self) {
        let r = &self.record;
        let status = self.status.to_string();
        metrics::counter!("metahub_requests_total", "route" => self.route, "status" => status).increment(1);
        metrics::histogram!("metahub_request_duration_seconds", "route" => self.route)
            .record(self.duration.as_secs_f64());
        if self.route == "manifest"
            && let Some(machine_type) = &r.machine_type
        {
            metrics::counter!("metahub_pulls_total", "machine_type" => machine_type.clone(), "result" => self.pull_result())
                .increment(1);
        }
        if r.answer == Some(Answer::Stale) {
            metrics::counter!("metahub_stale_answers_total").increment(1);
        }
        for call in &r.upstream {
            let kind = call.kind.as_str();
            metrics::counter!("metahub_upstream_requests_total", "kind" => kind, "result" => call.result).increment(1);
            metrics::histogram!("metahub_upstream_request_duration_seconds", "kind" => kind)
                .record(call.duration.as_secs_f64());
        }
        for (cache, hit) in &r.cache {
            let result = if *hit { "hit" } else { "miss" };
            metrics::counter!("metahub_cache_lookups_total", "cache" => cache.as_str(), "result" => result)
                .increment(1);
        }
        if let Some((_, result)) = &r.login {
            metrics::counter!("metahub_logins_total", "result" => result.as_str()).increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_name_the_repository_and_reference_but_nothing_else_of_the_path() {
        assert_eq!(classify("/v2/"), ("ping", None, None));
        assert_eq!(
            classify("/v2/org/app/manifests/latest"),
            ("manifest", Some("org/app".into()), Some("latest".into()))
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            classify(&format!("/v2/org/app/blobs/{digest}")),
            ("blob", Some("org/app".into()), Some(digest.clone()))
        );
        assert_eq!(classify("/v2/org/APP/manifests/latest"), ("other", None, None));
        assert_eq!(classify("/token"), ("token", None, None));
        assert_eq!(classify("/admin/accounts/x"), ("admin", None, None));
        assert_eq!(classify("/nowhere"), ("other", None, None));
    }

    #[test]
    fn a_pull_result_is_its_answer_unless_it_failed() {
        let mut access = Access {
            request_id: "1".into(),
            method: "GET".into(),
            route: "manifest",
            repository: None,
            reference: None,
            digest: None,
            client: None,
            status: 200,
            duration: Duration::ZERO,
            record: Record { answer: Some(Answer::Stale), ..Record::default() },
        };
        assert_eq!(access.pull_result(), "stale");
        access.status = 404;
        assert_eq!(access.pull_result(), "error");
    }
}
