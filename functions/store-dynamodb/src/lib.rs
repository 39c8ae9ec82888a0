//! MetaHub's DynamoDB store: one table, single-table design (see README.md for the schema and put-item examples).
//!
//! | item             | pk                     | sk            | attributes                                        |
//! |------------------|------------------------|---------------|---------------------------------------------------|
//! | machine type     | `MT#<name>`            | `MT`          | `features` (L of S), `match` (S), `users` (SS)     |
//! | account          | `ACCT#<login>`         | `ACCT`        | `machineType` (S), `passwordHash` (S), `repositories` (L of S, optional) |
//! | generated index  | `MAN#<repo>@<digest>`  | `MAN`         | `mediaType` (S), `body` (B), `ttl` (N)             |
//! | signing key      | `META`                 | `SIGNING_KEY` | `key` (B)                                          |
//! | audit log entry  | `CHANGES`              | `<at, 20 digits>#<ns, 9 digits>-<random>` | `at` (N), `who`, `action`, `target` (S) |
//! | watched image    | `WATCHED`              | `<image reference>` |                                             |
//!
//! Invariants, and how each holds without a race:
//! - an account's machine type exists: `put_account` is one `TransactWriteItems` that writes the account and
//!   `ADD`s its login to the machine type's `users` set under `attribute_exists(pk)`;
//! - a machine type in use is not deleted: the delete is conditional on `attribute_not_exists(users)`, so either a
//!   concurrent `put_account` commits first (the set is non-empty, the delete is refused) or the delete does (the
//!   transaction's condition fails, the account is refused). Accounts an operator typed by hand with put-item are
//!   not in `users`; the `byMachineType` index (partition key `machineType`) finds those too, before the delete;
//! - one signing key: `PutItem` under `attribute_not_exists(pk)`.
//!
//! Throttling and 5xx answers are retried by the SDK's standard retry mode (3 attempts, exponential backoff with
//! jitter); transaction conflicts between our own writers are retried here.

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::BehaviorVersion;
use aws_sdk_dynamodb::config::{HttpClient, RuntimeComponents, SharedHttpClient};
use aws_sdk_dynamodb::error::{BuildError, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, CancellationReason, Delete, GlobalSecondaryIndex,
    KeySchemaElement, KeyType, Projection, ProjectionType, Put, ReturnValue, ReturnValuesOnConditionCheckFailure,
    ScalarAttributeType, TableStatus, TimeToLiveSpecification, TransactWriteItem, Update,
};
use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
use aws_smithy_runtime_api::client::http::{HttpConnectorSettings, SharedHttpConnector};
use bytes::Bytes;
use metahub_core::machine::{MachineType, MachineTypeName, MatchMode};
use metahub_core::names::Login;
use metahub_core::ports::{
    Account, AccountChange, Change, ChildRecord, Manifest, Store, machine_type_in_use, machine_type_missing,
};
use metahub_core::reference::{Digest, RepositoryName};
use metahub_core::{Error, Result};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type Item = HashMap<String, AttributeValue>;

/// The global secondary index on accounts' `machineType`: which accounts use a machine type.
pub const BY_MACHINE_TYPE_INDEX: &str = "byMachineType";
/// How long a generated index lives after its last `put`; DynamoDB's TTL deletes it afterwards.
pub const MANIFEST_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long a machine type read is reused in this process, so a warm pull costs one read (the account).
pub const MACHINE_TYPE_CACHE_TTL: Duration = Duration::from_secs(30);
/// DynamoDB refuses items over 400 KB; keep room for the key and attribute names.
const MAX_MANIFEST_BYTES: usize = 390 * 1024;
/// Child records written concurrently by one `put_child_records`.
const CHILD_WRITES_AT_ONCE: usize = 16;
/// Attempts of a transaction that conflicts with a concurrent one on the same items.
const TRANSACTION_ATTEMPTS: u32 = 12;

/// The DynamoDB store. Clones of the SDK client are cheap; keep one store per process.
pub struct DynamoStore {
    client: Client,
    table: String,
    cache_ttl: Duration,
    machine_types: Mutex<HashMap<String, (Instant, MachineType)>>,
}

impl std::fmt::Debug for DynamoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoStore").field("table", &self.table).finish()
    }
}

/// The AWS configuration every MetaHub client loads once: the standard environment (`AWS_REGION`, credentials
/// chain, `AWS_ENDPOINT_URL` for LocalStack or moto), `us-east-1` when no region is configured, and timeouts short
/// enough that an unreachable endpoint answers `UNAVAILABLE` within seconds.
pub async fn aws_config_from_env() -> aws_config::SdkConfig {
    aws_config_with_operation_timeout(Duration::from_secs(20)).await
}

/// [`aws_config_from_env`] with every operation (retries included) bounded by `operation`: a Lambda function
/// passes the share of its own timeout it can give the store. An attempt gets half of it, so one retry fits.
pub async fn aws_config_with_operation_timeout(operation: Duration) -> aws_config::SdkConfig {
    let config = aws_defaults()
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3).min(operation / 2))
                .operation_attempt_timeout(Duration::from_secs(5).min(operation / 2))
                .operation_timeout(operation)
                .build(),
        )
        .load()
        .await;
    // The loader's own region chain (environment, profile, IMDS) is the one built with `https_client`.
    match config.region() {
        Some(_) => config,
        None => config.into_builder().region(aws_config::Region::new("us-east-1")).build(),
    }
}

/// `aws_config::defaults` with [`https_client`]: the start of every AWS configuration MetaHub loads.
pub fn aws_defaults() -> aws_config::ConfigLoader {
    aws_config::defaults(BehaviorVersion::latest()).http_client(https_client())
}

/// The SDK's default HTTPS client (hyper, rustls, the system's roots, proxies from the environment) on ring instead
/// of aws-lc-rs: the provider reqwest uses too (`metahub_upstream::http_client_builder`), so each binary carries one
/// crypto library, ~0.5 MiB less in each Lambda zip (docs/bench.md). Connectors are built on first use only.
pub fn https_client() -> SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    let client = aws_smithy_http_client::Builder::new().build_with_connector_fn(|settings, components| {
        let mut connector =
            aws_smithy_http_client::ConnectorBuilder::default().tls_provider(Provider::Rustls(CryptoMode::Ring));
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector.set_proxy_config(Some(aws_smithy_http_client::proxy::ProxyConfig::from_env()));
        connector.build()
    });
    SharedHttpClient::new(ConnectOnFirstUse(client))
}

/// The SDK's hyper client builds a throwaway connector when each service client is created (to load the CA store
/// early), and each connector parses the whole CA store again: four parses in a registry function's init. Without
/// that early build, each process parses it once, when it first connects (docs/bench.md).
#[derive(Debug)]
struct ConnectOnFirstUse(SharedHttpClient);

impl HttpClient for ConnectOnFirstUse {
    fn http_connector(&self, settings: &HttpConnectorSettings, components: &RuntimeComponents) -> SharedHttpConnector {
        self.0.http_connector(settings, components)
    }

    fn connector_metadata(&self) -> Option<ConnectorMetadata> {
        self.0.connector_metadata()
    }
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>) -> DynamoStore {
        DynamoStore {
            client,
            table: table.into(),
            cache_ttl: MACHINE_TYPE_CACHE_TTL,
            machine_types: Mutex::new(HashMap::new()),
        }
    }

    /// A store on `table`, configured from the standard AWS environment (see [`aws_config_from_env`]).
    pub async fn from_env(table: impl Into<String>) -> DynamoStore {
        let config = aws_config_from_env().await;
        DynamoStore::new(Client::new(&config), table)
    }

    /// How long machine types read are reused in this process (default [`MACHINE_TYPE_CACHE_TTL`]; zero disables).
    pub fn with_machine_type_cache_ttl(mut self, ttl: Duration) -> DynamoStore {
        self.cache_ttl = ttl;
        self
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Creates the table (on-demand billing, the `byMachineType` index, TTL on `ttl`) and waits until it is active.
    /// An existing table is left as it is; TTL is enabled on it when it is not yet.
    pub async fn create_table(&self) -> Result<()> {
        let key = |name: &str, kind: KeyType| KeySchemaElement::builder().attribute_name(name).key_type(kind).build();
        let attr = |name: &str| {
            AttributeDefinition::builder().attribute_name(name).attribute_type(ScalarAttributeType::S).build()
        };
        let index = GlobalSecondaryIndex::builder()
            .index_name(BY_MACHINE_TYPE_INDEX)
            .key_schema(key("machineType", KeyType::Hash).map_err(built)?)
            .projection(Projection::builder().projection_type(ProjectionType::KeysOnly).build())
            .build()
            .map_err(built)?;
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(key("pk", KeyType::Hash).map_err(built)?)
            .key_schema(key("sk", KeyType::Range).map_err(built)?)
            .attribute_definitions(attr("pk").map_err(built)?)
            .attribute_definitions(attr("sk").map_err(built)?)
            .attribute_definitions(attr("machineType").map_err(built)?)
            .global_secondary_indexes(index)
            .send()
            .await;
        match created {
            Ok(_) => {}
            Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception()) => {}
            Err(e) => return Err(self.fail("CreateTable", e)),
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let described = self.client.describe_table().table_name(&self.table).send().await;
            let status = described.map_err(|e| self.fail("DescribeTable", e))?;
            if status.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::unavailable(format!(
                    "DynamoDB table {} did not become active in 120 s",
                    self.table
                )));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let ttl = TimeToLiveSpecification::builder().attribute_name("ttl").enabled(true).build().map_err(built)?;
        match self.client.update_time_to_live().table_name(&self.table).time_to_live_specification(ttl).send().await {
            Ok(_) => Ok(()),
            // Enabling TTL twice is a ValidationException ("TimeToLive is already enabled").
            Err(e) if e.as_service_error().and_then(|s| s.message()).is_some_and(|m| m.contains("already enabled")) => {
                Ok(())
            }
            Err(e) => Err(self.fail("UpdateTimeToLive", e)),
        }
    }

    /// Maps an SDK failure: whatever keeps us from the table is `UNAVAILABLE` and names the table.
    fn fail<E, R>(&self, op: &str, err: SdkError<E, R>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug,
    {
        let table = &self.table;
        match &err {
            SdkError::ServiceError(ctx) => {
                let e = ctx.err();
                let (code, message) = (e.code().unwrap_or("unknown error"), e.message().unwrap_or(""));
                match code {
                    "ResourceNotFoundException" => Error::unavailable(format!(
                        "DynamoDB table {table} does not exist (create it with `metahub store init`): {message}"
                    )),
                    // Our request was malformed: a bug, not an outage.
                    "ValidationException" | "SerializationException" => {
                        Error::internal(format!("DynamoDB table {table}: {op} refused: {code}: {message}"))
                    }
                    _ => Error::unavailable(format!("DynamoDB table {table}: {op} failed: {code}: {message}")),
                }
            }
            SdkError::TimeoutError(_) => Error::unavailable(format!("DynamoDB table {table}: {op} timed out")),
            SdkError::DispatchFailure(_) => {
                Error::unavailable(format!("DynamoDB table {table}: {op}: cannot reach DynamoDB: {}", causes(&err)))
            }
            _ => Error::unavailable(format!("DynamoDB table {table}: {op} failed: {}", causes(&err))),
        }
    }

    async fn get(&self, op: &str, key: Item, projection: Option<&str>, names: &[(&str, &str)]) -> Result<Option<Item>> {
        let mut req = self.client.get_item().table_name(&self.table).set_key(Some(key)).consistent_read(true);
        if let Some(p) = projection {
            req = req.projection_expression(p);
        }
        for (k, v) in names {
            req = req.expression_attribute_names(*k, *v);
        }
        let out = req.send().await.map_err(|e| self.fail(op, e))?;
        Ok(out.item.filter(|i| !i.is_empty()))
    }

    /// Every item whose sort key is `sk`, by a consistent scan. Only the admin lists use it: it reads the whole
    /// table (machine types, accounts and cached indexes), which stays small enough for an occasional admin call.
    async fn scan_kind(&self, sk: &str) -> Result<Vec<Item>> {
        self.client
            .scan()
            .table_name(&self.table)
            .consistent_read(true)
            .filter_expression("sk = :sk")
            .expression_attribute_values(":sk", s(sk))
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| self.fail("Scan", e))
    }

    /// Logins whose account item says `machineType = name`, by the index (eventually consistent).
    async fn accounts_by_index(&self, name: &str) -> Result<Vec<String>> {
        let items = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(BY_MACHINE_TYPE_INDEX)
            .key_condition_expression("machineType = :mt")
            .expression_attribute_values(":mt", s(name))
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| self.fail("Query", e))?;
        let login = |item: &Item| get_s(item, "pk").and_then(|pk| pk.strip_prefix("ACCT#")).map(str::to_owned);
        Ok(items.iter().filter_map(login).collect())
    }

    /// Runs a transaction, retrying conflicts with concurrent transactions; a cancellation for a failed condition
    /// comes back as `Err(Ok(reasons))` so the caller can tell which item's condition failed.
    async fn transact(&self, items: Vec<TransactWriteItem>) -> Result<(), Result<Vec<CancellationReason>, Error>> {
        let out = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .return_consumed_capacity(aws_sdk_dynamodb::types::ReturnConsumedCapacity::None)
            .send()
            .await;
        match out {
            Ok(_) => Ok(()),
            Err(e) => match e.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(c)) => {
                    let reasons = c.cancellation_reasons();
                    // Conflicts and throttling are worth another try; anything else is not.
                    let retryable = |code: &str| {
                        matches!(
                            code,
                            "None"
                                | "ConditionalCheckFailed"
                                | "TransactionConflict"
                                | "ThrottlingError"
                                | "ProvisionedThroughputExceeded"
                        )
                    };
                    if reasons.iter().all(|r| r.code().is_none_or(retryable)) {
                        Err(Ok(reasons.to_vec()))
                    } else {
                        Err(Err(self.fail("TransactWriteItems", e)))
                    }
                }
                _ => Err(Err(self.fail("TransactWriteItems", e))),
            },
        }
    }

    fn cached(&self, name: &str) -> Option<MachineType> {
        let cache = self.machine_types.lock().ok()?;
        let (at, mt) = cache.get(name)?;
        (at.elapsed() < self.cache_ttl).then(|| mt.clone())
    }

    fn remember(&self, mt: &MachineType) {
        if self.cache_ttl.is_zero() {
            return;
        }
        if let Ok(mut cache) = self.machine_types.lock() {
            cache.retain(|_, (at, _)| at.elapsed() < self.cache_ttl);
            cache.insert(mt.name().to_string(), (Instant::now(), mt.clone()));
        }
    }

    fn forget(&self, name: &str) {
        if let Ok(mut cache) = self.machine_types.lock() {
            cache.remove(name);
        }
    }

    fn build<T>(&self, r: std::result::Result<T, BuildError>) -> Result<T> {
        r.map_err(built)
    }

    fn update_users(&self, machine_type: &str, action: &str, login: &str) -> Result<TransactWriteItem> {
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(mt_key(machine_type)))
            .update_expression(format!("{action} #u :login"))
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#u", "users")
            .expression_attribute_values(":login", AttributeValue::Ss(vec![login.to_owned()]))
            .build();
        Ok(TransactWriteItem::builder().update(self.build(update)?).build())
    }

    /// Writes an account item and moves its login between the machine types' `users` sets in one transaction,
    /// retried while the account changes concurrently. `item_write(current)` builds the account item's write from the
    /// item as just read, conditioned on its machine type still being the one read (so the old type's `users` set is
    /// cleaned up correctly); `None` writes nothing. Returns the item as read before the write that succeeded.
    async fn write_account<F>(&self, login: &str, typed: &MachineTypeName, item_write: F) -> Result<Option<Item>>
    where
        F: Fn(Option<&Item>) -> Result<Option<TransactWriteItem>>,
    {
        let machine_type = typed.as_str();
        let mut old_type_gone = false;
        for attempt in 0..TRANSACTION_ATTEMPTS {
            let current = self.get("GetItem", account_key(login), None, &[]).await?;
            let Some(write) = item_write(current.as_ref())? else { return Ok(current) };
            let old = current.as_ref().and_then(|i| get_s(i, "machineType"));
            let mut items = vec![write, self.update_users(machine_type, "ADD", login)?];
            if let Some(o) = old.filter(|o| *o != machine_type && !old_type_gone) {
                items.push(self.update_users(o, "DELETE", login)?);
            }
            match self.transact(items).await {
                Ok(()) => return Ok(current),
                Err(Err(e)) => return Err(e),
                Err(Ok(reasons)) => {
                    if failed_condition(&reasons, 1) {
                        return Err(machine_type_missing(typed));
                    }
                    if failed_condition(&reasons, 2) {
                        old_type_gone = true; // an account typed in by hand pointing at a missing type
                    }
                    // Otherwise a concurrent write to the account or a transaction conflict: read again, retry.
                    backoff(attempt).await;
                }
            }
        }
        Err(Error::unavailable(format!(
            "DynamoDB table {}: account {login:?} kept changing concurrently; try again",
            self.table
        )))
    }
}

/// An error and its sources on one line, without Debug dumps.
fn causes(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

fn built(e: BuildError) -> Error {
    Error::internal(format!("building a DynamoDB request: {e}"))
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn key(pk: String, sk: &str) -> Item {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

fn mt_key(name: &str) -> Item {
    key(format!("MT#{name}"), "MT")
}

fn account_key(login: &str) -> Item {
    key(format!("ACCT#{login}"), "ACCT")
}

fn manifest_key(repository: &RepositoryName, digest: &Digest) -> Item {
    key(format!("MAN#{}@{}", repository.as_str(), digest.as_str()), "MAN")
}

/// A child record sits beside the generated indexes (`MAN#…`, which the registry function may write), under its own
/// sort key: never read as a manifest, and never scanned as a machine type or account.
fn child_key(repository: &RepositoryName, digest: &Digest) -> Item {
    key(format!("MAN#{}@{}", repository.as_str(), digest.as_str()), "CHILD")
}

fn signing_key_key() -> Item {
    key("META".to_owned(), "SIGNING_KEY")
}

fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name).and_then(|v| v.as_s().ok()).map(String::as_str)
}

/// Logins as a store's `users` set or index names them; a hand-typed malformed one cannot be an account.
fn logins(names: Vec<String>) -> Vec<Login> {
    names.into_iter().filter_map(|name| name.parse().ok()).collect()
}

fn users_of(item: &Item) -> Vec<String> {
    item.get("users").and_then(|v| v.as_ss().ok()).cloned().unwrap_or_default()
}

fn now_epoch() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A short pause before retrying a conflicting transaction; jittered so contending writers spread out.
async fn backoff(attempt: u32) {
    let jitter = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos() % 20).unwrap_or(0);
    let ms = (10u64 << attempt.min(5)) + u64::from(jitter);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Reads a machine type item, accepting what an operator may type: `features` as L of S or SS (or absent: none),
/// `match` absent meaning best. Validated like a write, naming the item when malformed.
fn decode_machine_type(name: &str, item: &Item) -> Result<MachineType> {
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

fn decode_account(login: &str, item: &Item) -> Result<Account> {
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

const CHANGES_PK: &str = "CHANGES";
const WATCHED_PK: &str = "WATCHED";

/// The sort key of an audit log entry: ordered by time (to the nanosecond of this clock), unique by a random suffix.
fn change_sk(at: u64) -> String {
    use std::hash::{BuildHasher, Hasher};
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    // RandomState is seeded randomly per instance: enough to keep two writers in the same nanosecond apart.
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    format!("{at:020}#{nanos:09}-{random:016x}")
}

fn decode_change(item: &Item) -> Result<Change> {
    let sk = get_s(item, "sk").unwrap_or_default();
    let malformed =
        |attr: &str| Error::internal(format!("stored change (item pk=CHANGES, sk={sk}) has no attribute {attr}"));
    let text = |attr: &str| get_s(item, attr).map(str::to_owned).ok_or_else(|| malformed(attr));
    let at = item.get("at").and_then(|v| v.as_n().ok()).and_then(|n| n.parse().ok()).ok_or_else(|| malformed("at"))?;
    Ok(Change { at, who: text("who")?, action: text("action")?, target: text("target")? })
}

fn failed_condition(reasons: &[CancellationReason], index: usize) -> bool {
    reasons.get(index).and_then(|r| r.code()) == Some("ConditionalCheckFailed")
}

#[async_trait]
impl Store for DynamoStore {
    async fn machine_type(&self, name: &MachineTypeName) -> Result<Option<MachineType>> {
        let name = name.as_str();
        if let Some(mt) = self.cached(name) {
            return Ok(Some(mt));
        }
        let item = self.get("GetItem", mt_key(name), Some("features, #m"), &[("#m", "match")]).await?;
        let Some(item) = item else { return Ok(None) };
        let mt = decode_machine_type(name, &item)?;
        self.remember(&mt);
        Ok(Some(mt))
    }

    async fn put_machine_type(&self, machine_type: &MachineType) -> Result<()> {
        let mt =
            MachineType::new(machine_type.name().clone(), machine_type.features().to_vec(), machine_type.match_mode())?;
        // An update, not a put: it keeps the item's `users` set.
        let features = mt.features().iter().map(|f| s(f.as_str())).collect();
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(mt_key(mt.name().as_str())))
            .update_expression("SET #f = :f, #m = :m")
            .expression_attribute_names("#f", "features")
            .expression_attribute_names("#m", "match")
            .expression_attribute_values(":f", AttributeValue::L(features))
            .expression_attribute_values(":m", s(mt.match_mode().to_string()))
            .send()
            .await;
        self.forget(mt.name().as_str());
        out.map_err(|e| self.fail("UpdateItem", e))?;
        Ok(())
    }

    async fn list_machine_types(&self) -> Result<Vec<MachineType>> {
        let mut out = Vec::new();
        for item in self.scan_kind("MT").await? {
            let Some(name) = get_s(&item, "pk").and_then(|pk| pk.strip_prefix("MT#")) else {
                continue;
            };
            out.push(decode_machine_type(name, &item)?);
        }
        out.sort_by(|a, b| a.name().cmp(b.name()));
        Ok(out)
    }

    async fn delete_machine_type(&self, typed: &MachineTypeName) -> Result<bool> {
        let name = typed.as_str();
        // Accounts typed in by hand are only found by the index; ours are also in the item's `users` set, which the
        // conditional delete below checks atomically.
        let by_index = self.accounts_by_index(name).await?;
        if !by_index.is_empty() {
            // Hand-typed accounts may point at a type that does not exist: then there is nothing to delete.
            if self.get("GetItem", mt_key(name), Some("pk"), &[]).await?.is_none() {
                return Ok(false);
            }
            return Err(machine_type_in_use(typed, logins(by_index)));
        }
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(mt_key(name)))
            .condition_expression("attribute_not_exists(#u)")
            .expression_attribute_names("#u", "users")
            .return_values(ReturnValue::AllOld)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        self.forget(name);
        match out {
            Ok(o) => Ok(o.attributes.is_some_and(|a| !a.is_empty())),
            Err(e) => match e.as_service_error() {
                Some(DeleteItemError::ConditionalCheckFailedException(c)) => {
                    let users = match c.item() {
                        Some(item) => users_of(item),
                        None => self
                            .get("GetItem", mt_key(name), Some("#u"), &[("#u", "users")])
                            .await?
                            .map(|i| users_of(&i))
                            .unwrap_or_default(),
                    };
                    Err(machine_type_in_use(typed, logins(users)))
                }
                _ => Err(self.fail("DeleteItem", e)),
            },
        }
    }

    async fn account(&self, login: &Login) -> Result<Option<Account>> {
        let login = login.as_str();
        let item = self.get("GetItem", account_key(login), None, &[]).await?;
        item.map(|i| decode_account(login, &i)).transpose()
    }

    async fn put_account(&self, account: &Account) -> Result<()> {
        let login = account.login.as_str();
        self.write_account(login, &account.machine_type, |current| {
            let mut item = account_key(login);
            item.insert("machineType".into(), s(account.machine_type.as_str()));
            item.insert("passwordHash".into(), s(account.password_hash.expose_str()));
            if !account.repositories.is_empty() {
                item.insert("repositories".into(), AttributeValue::L(account.repositories.iter().map(s).collect()));
            }
            let put = Put::builder().table_name(&self.table).set_item(Some(item));
            let put = match current.and_then(|i| get_s(i, "machineType")) {
                None => put.condition_expression("attribute_not_exists(pk)"),
                Some(o) => put.condition_expression("machineType = :old").expression_attribute_values(":old", s(o)),
            };
            Ok(Some(TransactWriteItem::builder().put(self.build(put.build())?).build()))
        })
        .await
        .map(|_| ())
    }

    async fn update_account(&self, login: &Login, change: &AccountChange) -> Result<Option<Account>> {
        let login = login.as_str();
        match change {
            // One attribute, set in place: whatever else the item holds at that moment stays.
            AccountChange::PasswordHash(hash) => {
                let out = self
                    .client
                    .update_item()
                    .table_name(&self.table)
                    .set_key(Some(account_key(login)))
                    .update_expression("SET #p = :p")
                    .condition_expression("attribute_exists(pk)")
                    .expression_attribute_names("#p", "passwordHash")
                    .expression_attribute_values(":p", s(hash.expose_str()))
                    .return_values(ReturnValue::AllNew)
                    .send()
                    .await;
                match out {
                    Ok(out) => out.attributes.map(|item| decode_account(login, &item)).transpose(),
                    Err(e)
                        if matches!(
                            e.as_service_error(),
                            Some(UpdateItemError::ConditionalCheckFailedException(_))
                        ) =>
                    {
                        Ok(None)
                    }
                    Err(e) => Err(self.fail("UpdateItem", e)),
                }
            }
            // The machine type attribute alone, in the transaction that keeps the `users` sets right.
            AccountChange::MachineType(name) => {
                let before = self
                    .write_account(login, name, |current| {
                        let Some(old) = current.and_then(|i| get_s(i, "machineType")) else { return Ok(None) };
                        let update = Update::builder()
                            .table_name(&self.table)
                            .set_key(Some(account_key(login)))
                            .update_expression("SET machineType = :new")
                            .condition_expression("machineType = :old")
                            .expression_attribute_values(":new", s(name.as_str()))
                            .expression_attribute_values(":old", s(old))
                            .build();
                        Ok(Some(TransactWriteItem::builder().update(self.build(update)?).build()))
                    })
                    .await?;
                before.map(|item| decode_account(login, &item).map(|a| change.apply(a))).transpose()
            }
        }
    }

    async fn list_accounts(&self) -> Result<Vec<Account>> {
        let mut out = Vec::new();
        for item in self.scan_kind("ACCT").await? {
            let Some(login) = get_s(&item, "pk").and_then(|pk| pk.strip_prefix("ACCT#")) else {
                continue;
            };
            out.push(decode_account(login, &item)?);
        }
        out.sort_by(|a, b| a.login.cmp(&b.login));
        Ok(out)
    }

    async fn delete_account(&self, login: &Login) -> Result<bool> {
        let login = login.as_str();
        let mut type_gone = false;
        for attempt in 0..TRANSACTION_ATTEMPTS {
            let Some(item) = self.get("GetItem", account_key(login), Some("machineType"), &[]).await? else {
                return Ok(false);
            };
            let mt = get_s(&item, "machineType").unwrap_or_default().to_owned();
            let delete = Delete::builder()
                .table_name(&self.table)
                .set_key(Some(account_key(login)))
                .condition_expression(
                    "attribute_exists(pk) AND (machineType = :mt OR attribute_not_exists(machineType))",
                )
                .expression_attribute_values(":mt", s(&mt));
            let mut items = vec![TransactWriteItem::builder().delete(self.build(delete.build())?).build()];
            if !mt.is_empty() && !type_gone {
                items.push(self.update_users(&mt, "DELETE", login)?);
            }
            match self.transact(items).await {
                Ok(()) => return Ok(true),
                Err(Err(e)) => return Err(e),
                Err(Ok(reasons)) => {
                    if failed_condition(&reasons, 1) {
                        type_gone = true;
                    }
                    backoff(attempt).await;
                }
            }
        }
        Err(Error::unavailable(format!(
            "DynamoDB table {}: account {login:?} kept changing concurrently; try again",
            self.table
        )))
    }

    async fn generated_manifest(&self, repository: &RepositoryName, digest: &Digest) -> Result<Option<Manifest>> {
        // Consistent: containerd GETs by digest right after the HEAD that stored it, maybe on another instance.
        let Some(item) = self.get("GetItem", manifest_key(repository, digest), None, &[]).await? else {
            return Ok(None);
        };
        let name = format!("MAN#{}@{}", repository.as_str(), digest.as_str());
        let media_type = get_s(&item, "mediaType")
            .ok_or_else(|| Error::internal(format!("stored manifest {name} is malformed: no mediaType")))?;
        let body = item
            .get("body")
            .and_then(|b| b.as_b().ok())
            .ok_or_else(|| Error::internal(format!("stored manifest {name} is malformed: no binary body")))?;
        if !digest.verifies(body.as_ref()) {
            return Err(Error::internal(format!("stored manifest {name} does not match its digest")));
        }
        Ok(Some(Manifest {
            digest: digest.clone(),
            media_type: media_type.to_owned(),
            bytes: Bytes::copy_from_slice(body.as_ref()),
        }))
    }

    async fn put_generated_manifest(&self, repository: &RepositoryName, manifest: &Manifest) -> Result<()> {
        if !manifest.digest.verifies(&manifest.bytes) {
            return Err(Error::internal(format!("manifest bytes do not match digest {}", manifest.digest)));
        }
        if manifest.bytes.len() > MAX_MANIFEST_BYTES {
            return Err(Error::internal(format!(
                "generated index {} is {} bytes, over what one DynamoDB item holds ({MAX_MANIFEST_BYTES})",
                manifest.digest,
                manifest.bytes.len()
            )));
        }
        let mut item = manifest_key(repository, &manifest.digest);
        item.insert("mediaType".into(), s(&manifest.media_type));
        item.insert("body".into(), AttributeValue::B(Blob::new(manifest.bytes.to_vec())));
        item.insert("ttl".into(), AttributeValue::N((now_epoch() + MANIFEST_TTL.as_secs()).to_string()));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| self.fail("PutItem", e))?;
        Ok(())
    }

    async fn child_record(&self, repository: &RepositoryName, digest: &Digest) -> Result<Option<ChildRecord>> {
        let Some(item) = self.get("GetItem", child_key(repository, digest), None, &[]).await? else {
            return Ok(None);
        };
        let value = get_s(&item, "record").ok_or_else(|| {
            Error::internal(format!("stored child record of {}@{} has no record", repository.as_str(), digest))
        })?;
        ChildRecord::from_value_json(digest.clone(), value).map(Some)
    }

    async fn put_child_records(&self, repository: &RepositoryName, records: &[ChildRecord]) -> Result<()> {
        // One PutItem each (the registry function's role allows PutItem on MAN#* only), several at a time.
        let ttl = (now_epoch() + MANIFEST_TTL.as_secs()).to_string();
        for chunk in records.chunks(CHILD_WRITES_AT_ONCE) {
            let mut writes = tokio::task::JoinSet::new();
            for record in chunk {
                let mut item = child_key(repository, &record.digest);
                item.insert("record".into(), s(record.value_json()));
                item.insert("ttl".into(), AttributeValue::N(ttl.clone()));
                let put = self.client.put_item().table_name(&self.table).set_item(Some(item));
                writes.spawn(put.send());
            }
            while let Some(done) = writes.join_next().await {
                done.map_err(|e| Error::internal(format!("a child record write failed to run: {e}")))?
                    .map_err(|e| self.fail("PutItem", e))?;
            }
        }
        Ok(())
    }

    async fn signing_key_or_insert(&self, candidate: &[u8]) -> Result<Vec<u8>> {
        let stored = |item: &Item| item.get("key").and_then(|k| k.as_b().ok()).map(|b| b.as_ref().to_vec());
        if let Some(item) = self.get("GetItem", signing_key_key(), None, &[]).await? {
            return stored(&item)
                .ok_or_else(|| Error::internal("stored signing key (item pk=META, sk=SIGNING_KEY) has no binary key"));
        }
        let mut item = signing_key_key();
        item.insert("key".into(), AttributeValue::B(Blob::new(candidate.to_vec())));
        let out = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match out {
            Ok(_) => Ok(candidate.to_vec()),
            Err(e) => {
                match e.as_service_error() {
                    // Another instance won the race: everyone uses its key.
                    Some(PutItemError::ConditionalCheckFailedException(c)) => {
                        let winner = match c.item().and_then(stored) {
                            Some(k) => Some(k),
                            None => self.get("GetItem", signing_key_key(), None, &[]).await?.as_ref().and_then(stored),
                        };
                        winner.ok_or_else(|| {
                            Error::internal("stored signing key (item pk=META, sk=SIGNING_KEY) has no binary key")
                        })
                    }
                    _ => Err(self.fail("PutItem", e)),
                }
            }
        }
    }

    async fn record_change(&self, change: &Change) -> Result<()> {
        let mut item = key(CHANGES_PK.to_owned(), &change_sk(change.at));
        item.insert("at".into(), AttributeValue::N(change.at.to_string()));
        item.insert("who".into(), s(change.who.as_str()));
        item.insert("action".into(), s(change.action.as_str()));
        item.insert("target".into(), s(change.target.as_str()));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map_err(|e| self.fail("PutItem", e))?;
        Ok(())
    }

    async fn changes(&self, limit: usize) -> Result<Vec<Change>> {
        let mut changes = Vec::new();
        let mut start = None;
        while changes.len() < limit {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(CHANGES_PK))
                .scan_index_forward(false)
                .consistent_read(true)
                .limit(i32::try_from(limit - changes.len()).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| self.fail("Query", e))?;
            for item in out.items.unwrap_or_default() {
                changes.push(decode_change(&item)?);
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        changes.truncate(limit);
        Ok(changes)
    }

    async fn watched_images(&self) -> Result<Vec<String>> {
        let mut images = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(WATCHED_PK))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| self.fail("Query", e))?;
            images.extend(out.items.unwrap_or_default().iter().filter_map(|i| get_s(i, "sk")).map(str::to_owned));
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(images)
    }

    async fn watch_image(&self, image: &str) -> Result<bool> {
        let out = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(key(WATCHED_PK.to_owned(), image)))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| self.fail("PutItem", e))?;
        Ok(out.attributes.is_none_or(|a| a.is_empty()))
    }

    async fn unwatch_image(&self, image: &str) -> Result<bool> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(WATCHED_PK.to_owned(), image)))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| self.fail("DeleteItem", e))?;
        Ok(out.attributes.is_some_and(|a| !a.is_empty()))
    }
}
