//! MetaHub's upstream adapter: the [`metahub_core::ports::Upstream`] port over the distribution HTTP API.
//!
//! [`UpstreamRouter`] picks the configured upstream for a name (longest prefix); [`RegistryClient`] talks to one
//! registry: token flow, digest verification, blob redirects, one error table. Layering: this crate depends on
//! `metahub-core` and never the other way.

mod challenge;
mod client;
mod config;
mod router;

pub use client::RegistryClient;
pub use config::{ClientOptions, UpstreamConfig};
pub use router::UpstreamRouter;

/// Manifest media types sent upstream, most capable first: indexes, then single manifests, schema 1 last. Sent whole so
/// a Docker manifest list is never answered with its amd64 child.
pub const ACCEPT_ALL: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];
