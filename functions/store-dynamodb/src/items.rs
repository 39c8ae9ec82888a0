//! The item codec: `Item`, the key of each kind of item (see the table in lib.rs), attribute helpers, and the
//! decoding of machine types, accounts and audit log entries, accepting what an operator may type with put-item.

use aws_sdk_dynamodb::types::AttributeValue;
use metahub_core::machine::{MachineType, MatchMode};
use metahub_core::names::Login;
use metahub_core::ports::{Account, Change};
use metahub_core::reference::{Digest, RepositoryName};
use metahub_core::{Error, Result};
use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) type Item = HashMap<String, AttributeValue>;

pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(crate) fn key(pk: String, sk: &str) -> Item {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

pub(crate) fn mt_key(name: &str) -> Item {
    key(format!("MT#{name}"), "MT")
}

pub(crate) fn account_key(login: &str) -> Item {
    key(format!("ACCT#{login}"), "ACCT")
}

pub(crate) fn manifest_key(repository: &RepositoryName, digest: &Digest) -> Item {
    key(format!("MAN#{}@{}", repository.as_str(), digest.as_str()), "MAN")
}

/// A child record sits beside the generated indexes (`MAN#…`, which the registry function may write), under its own
/// sort key: never read as a manifest, and never scanned as a machine type or account.
pub(crate) fn child_key(repository: &RepositoryName, digest: &Digest) -> Item {
    key(format!("MAN#{}@{}", repository.as_str(), digest.as_str()), "CHILD")
}

/// The NVIDIA requirements of a child manifest, by its digest (any repository: the digest fixes the config).
pub(crate) fn gpu_key(digest: &Digest) -> Item {
    key(format!("GPU#{}", digest.as_str()), "GPU")
}

pub(crate) fn signing_key_key() -> Item {
    key("META".to_owned(), "SIGNING_KEY")
}

pub(crate) fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name).and_then(|v| v.as_s().ok()).map(String::as_str)
}

/// Logins as a store's `users` set or index names them; a hand-typed malformed one cannot be an account.
pub(crate) fn logins(names: Vec<String>) -> Vec<Login> {
    names.into_iter().filter_map(|name| name.parse().ok()).collect()
}

pub(crate) fn users_of(item: &Item) -> Vec<String> {
    item.get("users").and_then(|v| v.as_ss().ok()).cloned().unwrap_or_default()
}

pub(crate) fn now_epoch() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Reads a machine type item, accepting what an operator may type: `features` as L of S or SS (or absent: none),
/// `match` absent meaning best. Validated like a write, naming the item when malformed.
pub(crate) fn decode_machine_type(name: &str, item: &Item) -> Result<MachineType> {
    let malformed =
        |why: &str| Error::internal(format!("stored machine type {name:?} (item pk=MT#{name}) is malformed: {why}"));
    let features = match item.get("features") {
        None => Vec::new(),
        Some(AttributeValue::Ss(set)) => set.clone(),
        Some(AttributeValue::L(list)) => list
            .iter()
            .map(|v| v.as_s().cloned().map_err(|_| malformed("features must be a list of strings")))
            .collect::<Result<_>>()?,
        Some(_) => {
            return Err(malformed("features must be a list (L) or string set (SS) of strings"));
        }
    };
    let match_mode = match item.get("match") {
        None => MatchMode::Best,
        Some(AttributeValue::S(m)) => m.parse().map_err(|e: Error| malformed(&e.message))?,
        Some(_) => return Err(malformed("match must be a string, best or exact")),
    };
    MachineType::stored(name, features, match_mode)
        .map_err(|e| Error { message: format!("{} (item pk=MT#{name})", e.message), ..e })
}

pub(crate) fn decode_account(login: &str, item: &Item) -> Result<Account> {
    let malformed =
        |why: String| Error::internal(format!("stored account {login:?} (item pk=ACCT#{login}) is malformed: {why}"));
    let field = |attr: &str| get_s(item, attr).ok_or_else(|| malformed(format!("no string attribute {attr}")));
    let repositories = match item.get("repositories") {
        None => Vec::new(),
        Some(AttributeValue::L(items)) => items.iter().filter_map(|v| v.as_s().ok().cloned()).collect(),
        Some(_) => {
            return Err(Error::internal(format!(
                "stored account {login:?} (item pk=ACCT#{login}) is malformed: repositories is not a list"
            )));
        }
    };
    Ok(Account {
        login: login.parse().map_err(|e: Error| malformed(e.message))?,
        machine_type: field("machineType")?.parse().map_err(|e: Error| malformed(e.message))?,
        password_hash: field("passwordHash")?.into(),
        repositories,
    })
}

pub(crate) const CHANGES_PK: &str = "CHANGES";
pub(crate) const WATCHED_PK: &str = "WATCHED";

/// The sort key of an audit log entry: ordered by time (to the nanosecond of this clock), unique by a random suffix.
pub(crate) fn change_sk(at: u64) -> String {
    use std::hash::{BuildHasher, Hasher};
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    // RandomState is seeded randomly per instance: enough to keep two writers in the same nanosecond apart.
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    format!("{at:020}#{nanos:09}-{random:016x}")
}

pub(crate) fn decode_change(item: &Item) -> Result<Change> {
    let sk = get_s(item, "sk").unwrap_or_default();
    let malformed =
        |attr: &str| Error::internal(format!("stored change (item pk=CHANGES, sk={sk}) has no attribute {attr}"));
    let text = |attr: &str| get_s(item, attr).map(str::to_owned).ok_or_else(|| malformed(attr));
    let at = item.get("at").and_then(|v| v.as_n().ok()).and_then(|n| n.parse().ok()).ok_or_else(|| malformed("at"))?;
    Ok(Change { at, who: text("who")?, action: text("action")?, target: text("target")? })
}
