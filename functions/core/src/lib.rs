//! MetaHub's domain.
//!
//! Layering rule, kept: transports (HTTP router, Lambda, CLI) → this crate ← adapters (stores, upstream client).
//! Nothing here names an AWS, HTTP or Lambda type; adapters implement the traits in [`ports`].

pub mod admin;
pub mod cache;
pub mod cosign;
pub mod error;
pub mod explain;
pub mod files;
pub mod filter;
pub mod login;
pub mod machine;
pub mod names;
pub mod nvidia;
pub mod observe;
pub mod password;
pub mod ports;
pub mod reference;
pub mod secret;
pub mod service;
pub mod settings;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod token;

pub use error::{Error, ErrorCode, Result};
pub use secret::Secret;
