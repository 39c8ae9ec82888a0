//! Helpers shared by the integration tests: free ports, a fake upstream built from a closure, test data.
#![allow(dead_code)]

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, Method, Response};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub type Handler = Arc<dyn Fn(&Method, &str, &HeaderMap) -> Response<Body> + Send + Sync>;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A fake upstream on 127.0.0.1: every request goes to `handler(method, path_and_query, headers)`.
pub struct Fake {
    pub url: String,
    pub port: u16,
    pub requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Fake {
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a fake whose handler gets its own base URL first (for realms and redirects).
pub async fn fake(make: impl FnOnce(String) -> Handler) -> Fake {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let handler = make(url.clone());
    let requests = Arc::new(AtomicUsize::new(0));
    let count = requests.clone();
    let app = axum::Router::new().fallback(move |req: Request| {
        let handler = handler.clone();
        count.fetch_add(1, Ordering::SeqCst);
        async move {
            let pq = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
            handler(req.method(), &pq, req.headers())
        }
    });
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Fake { url, port, requests, task }
}

pub fn response(status: u16, headers: &[(&str, &str)], body: impl Into<Body>) -> Response<Body> {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(body.into()).unwrap()
}

pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

pub fn accept_all() -> Vec<String> {
    metahub_upstream::ACCEPT_ALL.iter().map(|s| s.to_string()).collect()
}

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
