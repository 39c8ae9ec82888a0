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
