//! MetaHub's upstream adapter: the [`metahub_core::ports::Upstream`] port over the distribution HTTP API.
//!
//! [`UpstreamRouter`] picks the configured upstream for a name (longest prefix); [`RegistryClient`] talks to one
//! registry: digest verification, blob redirects, one error table. [`auth`] is how every request to an upstream
//! authenticates (credentials, challenges, the realm allow-list, the token cache), for this crate's pull client and
//! `metahub-publish`'s push client alike. Layering: this crate depends on `metahub-core` and never the other way.

pub mod auth;
mod body;
mod client;
mod config;
mod router;

pub use auth::{Credentials, UpstreamAuth, UpstreamCredentials};
pub use body::{RegistryError, read_limited, registry_errors};
pub use client::RegistryClient;
pub use config::{ClientOptions, DEFAULT_UPSTREAM, UpstreamConfig};
pub use router::UpstreamRouter;

pub use metahub_core::filter::ACCEPT_ALL;

/// The start of every reqwest client in MetaHub. reqwest is built with `rustls-no-provider` and takes the process's
/// default crypto provider, installed here once: ring, the one the AWS SDK's client uses too
/// (`metahub_store_dynamodb::https_client`), so each binary carries one crypto library.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    static PROVIDER: std::sync::Once = std::sync::Once::new();
    // An error means another provider is already the default: reqwest then uses that one, which is as good.
    PROVIDER.call_once(|| drop(rustls::crypto::ring::default_provider().install_default()));
    reqwest::Client::builder()
}
