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
//! | signed-out admin page session | `SESSION#<id>` | `REVOKED` | `ttl` (N): the session's expiry, when DynamoDB may drop it |
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
//!
//! This file holds `DynamoStore`: table creation, error mapping, and the reads, transactions and machine type cache
//! the `Store` impl shares. `client` is the AWS configuration and HTTPS client, `items` the keys and item codec,
//! `store` the `Store` impl.

mod client;
mod items;
mod store;

pub use client::{aws_config_from_env, aws_config_with_operation_timeout, aws_defaults, https_client};
use items::{Item, account_key, get_s, mt_key, now_epoch, s};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{BuildError, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::put_item::builders::PutItemFluentBuilder;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, CancellationReason, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, ScalarAttributeType, TableStatus, TimeToLiveSpecification, TransactWriteItem,
    Update,
};
use metahub_core::machine::{MachineType, MachineTypeName};
use metahub_core::ports::machine_type_missing;
use metahub_core::{Error, Result};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

    /// A PutItem of `item` that expires with the generated indexes, [`MANIFEST_TTL`] from now.
    fn put_expiring(&self, mut item: Item) -> PutItemFluentBuilder {
        item.insert("ttl".into(), AttributeValue::N((now_epoch() + MANIFEST_TTL.as_secs()).to_string()));
        self.client.put_item().table_name(&self.table).set_item(Some(item))
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

/// A short pause before retrying a conflicting transaction; jittered so contending writers spread out.
async fn backoff(attempt: u32) {
    let jitter = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos() % 20).unwrap_or(0);
    let ms = (10u64 << attempt.min(5)) + u64::from(jitter);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

fn failed_condition(reasons: &[CancellationReason], index: usize) -> bool {
    reasons.get(index).and_then(|r| r.code()) == Some("ConditionalCheckFailed")
}
