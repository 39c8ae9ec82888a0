//! `impl Store for DynamoStore`: each port operation as DynamoDB reads, conditional writes and transactions.

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeValue, Delete, Put, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};
use bytes::Bytes;
use metahub_core::machine::{MachineType, MachineTypeName};
use metahub_core::names::Login;
use metahub_core::nvidia::Requirements;
use metahub_core::ports::{Account, AccountChange, Change, ChildRecord, Manifest, Store, machine_type_in_use};
use metahub_core::reference::{Digest, RepositoryName};
use metahub_core::{Error, Result};

use crate::items::{
    CHANGES_PK, Item, WATCHED_PK, account_key, change_sk, child_key, decode_account, decode_change,
    decode_machine_type, get_s, gpu_key, key, logins, manifest_key, mt_key, s, signing_key_key, users_of,
};
use crate::{CHILD_WRITES_AT_ONCE, DynamoStore, MAX_MANIFEST_BYTES, TRANSACTION_ATTEMPTS, backoff, failed_condition};

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

    async fn put_machine_type(&self, mt: &MachineType) -> Result<()> {
        // An update, not a put: it keeps the item's `users` set.
        let features = mt.features().texts().into_iter().map(s).collect();
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
        self.put_expiring(item).send().await.map_err(|e| self.fail("PutItem", e))?;
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
        for chunk in records.chunks(CHILD_WRITES_AT_ONCE) {
            let mut writes = tokio::task::JoinSet::new();
            for record in chunk {
                let mut item = child_key(repository, &record.digest);
                item.insert("record".into(), s(record.value_json()));
                writes.spawn(self.put_expiring(item).send());
            }
            while let Some(done) = writes.join_next().await {
                done.map_err(|e| Error::internal(format!("a child record write failed to run: {e}")))?
                    .map_err(|e| self.fail("PutItem", e))?;
            }
        }
        Ok(())
    }

    async fn gpu_requirements(&self, digest: &Digest) -> Result<Option<Requirements>> {
        let Some(item) = self.get("GetItem", gpu_key(digest), None, &[]).await? else { return Ok(None) };
        let json = get_s(&item, "requirements").ok_or_else(|| {
            Error::internal(format!(
                "stored NVIDIA requirements GPU#{} are malformed: no requirements",
                digest.as_str()
            ))
        })?;
        serde_json::from_str(json).map(Some).map_err(|e| {
            Error::internal(format!("stored NVIDIA requirements GPU#{} are malformed: {e}", digest.as_str()))
        })
    }

    /// Kept for [`MANIFEST_TTL`] (the table's TTL bounds them); a child pulled after that is read again.
    async fn put_gpu_requirements(&self, digest: &Digest, requirements: &Requirements) -> Result<()> {
        let json = serde_json::to_string(requirements)
            .map_err(|e| Error::internal(format!("encoding NVIDIA requirements: {e}")))?;
        let mut item = gpu_key(digest);
        item.insert("requirements".into(), s(&json));
        self.put_expiring(item).send().await.map_err(|e| self.fail("PutItem", e))?;
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

    async fn revoke_session(&self, id: &str, expires_at: u64) -> Result<()> {
        let mut item = key(format!("SESSION#{id}"), "REVOKED");
        item.insert("ttl".into(), AttributeValue::N(expires_at.to_string()));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| self.fail("PutItem", e))?;
        Ok(())
    }

    async fn session_revoked(&self, id: &str) -> Result<bool> {
        // Strongly consistent: a sign-out holds on the next request, whichever Lambda instance serves it.
        Ok(self.get("GetItem", key(format!("SESSION#{id}"), "REVOKED"), Some("pk"), &[]).await?.is_some())
    }
}
