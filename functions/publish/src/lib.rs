//! MetaHub's publishing side (`metahub index create|inspect`): per-microarchitecture images assembled into one index
//! whose entries carry `platform.features`, pushed to the upstream registry.
//!
//! Layering: [`assemble`] is pure (parse `--from`, build the index bytes); [`client`] is a small push client (blob HEAD
//! and cross-repository mount, manifest PUT; `pull,push` tokens through `metahub_upstream::auth`, the pull side's
//! auth); [`publish`] reads sources through the `metahub_core::ports::Upstream` port, validates everything, and only
//! then writes.

pub mod assemble;
pub mod client;
pub mod publish;

pub use assemble::{Assembled, Entry, Format, Platform, SourceSpec, assemble};
pub use client::{Access, Credentials, PushClient};
pub use publish::{Child, InspectedEntry, Inspection, Plan, PushReport, inspect, plan, push, resolve};
