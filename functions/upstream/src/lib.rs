//! MetaHub's upstream adapter: the [`metahub_core::ports::Upstream`] port over the distribution HTTP API.
//!
//! [`UpstreamRouter`] picks the configured upstream for a name (longest prefix); [`RegistryClient`] talks to one
//! registry: token flow, digest verification, blob redirects, one error table. Layering: this crate depends on
//! `metahub-core` and never the other way.

pub mod challenge;
mod client;
mod config;
mod credentials;
mod router;

pub use client::RegistryClient;
pub use config::{ClientOptions, DEFAULT_UPSTREAM, UpstreamConfig};
pub use credentials::{Credentials, UpstreamCredentials};
pub use router::UpstreamRouter;

pub use metahub_core::filter::ACCEPT_ALL;
