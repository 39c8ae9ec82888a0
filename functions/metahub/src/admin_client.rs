//! `--endpoint URL`: the admin API of a running MetaHub, as a [`Store`], so that every `machine-type` and `account`
//! command has one code path whatever it talks to. Passwords are hashed here and only their hash is sent.
//!
//! Authenticates with `Authorization: Bearer $METAHUB_ADMIN_SECRET` (`metahub serve --admin-secret-file`).

use async_trait::async_trait;
use metahub_core::machine::{MachineType, validate_name};
use metahub_core::ports::{Account, Change, Manifest, Store};
use metahub_core::reference::{Digest, RepositoryName};
use metahub_core::{Error, ErrorCode, Result};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::fmt;
use std::time::Duration;

pub const SECRET_ENV: &str = "METAHUB_ADMIN_SECRET";

pub struct AdminApiStore {
    client: reqwest::Client,
    base: String,
    secret: String,
}

impl fmt::Debug for AdminApiStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminApiStore").field("base", &self.base).field("secret", &"<redacted>").finish()
    }
}

/// Every wire code the admin API answers with, back to the one error table.
fn code_of(wire: &str) -> ErrorCode {
    ErrorCode::from_wire(wire).unwrap_or(ErrorCode::Internal)
}

impl AdminApiStore {
    pub fn new(endpoint: &str) -> anyhow::Result<AdminApiStore> {
        let url = url::Url::parse(endpoint).map_err(|e| anyhow::anyhow!("--endpoint {endpoint:?}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            anyhow::bail!("--endpoint {endpoint:?} is not an http(s) URL");
        }
        let secret = std::env::var(SECRET_ENV)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| anyhow::anyhow!("--endpoint needs the admin secret in {SECRET_ENV}"))?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(AdminApiStore { client, base: endpoint.trim_end_matches('/').to_owned(), secret })
    }

    /// One admin request: the status and body of a success, or the registry error the API answered.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<(StatusCode, bytes::Bytes)> {
        let url = format!("{}{path}", self.base);
        let mut request = self.client.request(method, &url).bearer_auth(&self.secret);
        if let Some(body) = body {
            request = request.header(reqwest::header::CONTENT_TYPE, "application/json").body(body.to_string());
        }
        let unreachable = |e: reqwest::Error| Error::unavailable(format!("admin endpoint {}: {e}", self.base));
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(unreachable)?;
        if status.is_success() {
            return Ok((status, bytes));
        }
        let envelope: Option<Value> = serde_json::from_slice(&bytes).ok();
        let first = envelope.as_ref().and_then(|v| v.get("errors")).and_then(|e| e.get(0));
        let Some(first) = first else {
            return Err(Error::bad_gateway(format!("admin endpoint {url} answered {status} without a registry error")));
        };
        let wire = first.get("code").and_then(Value::as_str).unwrap_or_default();
        let message = first.get("message").and_then(Value::as_str).unwrap_or_default();
        let code = code_of(wire);
        let message = match code {
            ErrorCode::NotFound => {
                format!("{message} (is the admin API enabled at {}? `metahub serve --admin-secret-file`)", self.base)
            }
            _ => message.to_owned(),
        };
        let mut error = Error::new(code, message);
        if let Some(detail) = first.get("detail").filter(|d| !d.is_null()) {
            error = error.with_detail(detail.clone());
        }
        Err(error)
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>> {
        match self.call(Method::GET, path, None).await {
            Ok((_, bytes)) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::bad_gateway(format!("admin endpoint {}: unexpected answer to GET {path}: {e}", self.base))
            }),
            Err(e) if e.code == ErrorCode::NameUnknown => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn delete(&self, path: &str) -> Result<bool> {
        match self.call(Method::DELETE, path, None).await {
            Ok(_) => Ok(true),
            Err(e) if e.code == ErrorCode::NameUnknown => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Replaces an account's password hash, keeping its machine type; refused when the account does not exist.
    pub async fn rotate_password(&self, login: &str, password_hash: &str) -> Result<()> {
        validate_name("login", login)?;
        let body = json!({"passwordHash": password_hash});
        self.call(Method::PUT, &format!("/admin/accounts/{login}/password"), Some(body)).await.map(|_| ())
    }
}

fn unsupported(what: &str) -> Error {
    Error::new(ErrorCode::Unsupported, format!("the admin API does not serve {what}"))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct AccountView {
    login: String,
    machine_type: String,
    #[serde(default)]
    repositories: Vec<String>,
}

impl From<AccountView> for Account {
    /// The API never returns hashes.
    fn from(a: AccountView) -> Account {
        Account {
            login: a.login,
            machine_type: a.machine_type,
            password_hash: String::new(),
            repositories: a.repositories,
        }
    }
}

#[async_trait]
impl Store for AdminApiStore {
    async fn machine_type(&self, name: &str) -> Result<Option<MachineType>> {
        validate_name("machine type", name)?;
        self.get_json(&format!("/admin/machine-types/{name}")).await
    }

    async fn put_machine_type(&self, machine_type: &MachineType) -> Result<()> {
        validate_name("machine type", &machine_type.name)?;
        let body = json!({"features": machine_type.features, "match": machine_type.match_mode.to_string()});
        self.call(Method::PUT, &format!("/admin/machine-types/{}", machine_type.name), Some(body)).await.map(|_| ())
    }

    async fn list_machine_types(&self) -> Result<Vec<MachineType>> {
        Ok(self.get_json("/admin/machine-types").await?.unwrap_or_default())
    }

    async fn delete_machine_type(&self, name: &str) -> Result<bool> {
        validate_name("machine type", name)?;
        self.delete(&format!("/admin/machine-types/{name}")).await
    }

    async fn account(&self, login: &str) -> Result<Option<Account>> {
        validate_name("login", login)?;
        Ok(self.get_json::<AccountView>(&format!("/admin/accounts/{login}")).await?.map(Account::from))
    }

    async fn put_account(&self, account: &Account) -> Result<()> {
        validate_name("login", &account.login)?;
        let body = json!({
            "machineType": account.machine_type,
            "passwordHash": account.password_hash,
            "repositories": account.repositories,
        });
        self.call(Method::PUT, &format!("/admin/accounts/{}", account.login), Some(body)).await.map(|_| ())
    }

    async fn list_accounts(&self) -> Result<Vec<Account>> {
        let views: Vec<AccountView> = self.get_json("/admin/accounts").await?.unwrap_or_default();
        Ok(views.into_iter().map(Account::from).collect())
    }

    async fn delete_account(&self, login: &str) -> Result<bool> {
        validate_name("login", login)?;
        self.delete(&format!("/admin/accounts/{login}")).await
    }

    async fn generated_manifest(&self, _: &RepositoryName, _: &Digest) -> Result<Option<Manifest>> {
        Err(unsupported("generated manifests"))
    }

    async fn put_generated_manifest(&self, _: &RepositoryName, _: &Manifest) -> Result<()> {
        Err(unsupported("generated manifests"))
    }

    async fn signing_key_or_insert(&self, _: &[u8]) -> Result<Vec<u8>> {
        Err(unsupported("the signing key"))
    }

    /// The server records every change it applies, with the principal it authenticated: nothing to do here.
    async fn record_change(&self, _: &Change) -> Result<()> {
        Ok(())
    }

    async fn changes(&self, limit: usize) -> Result<Vec<Change>> {
        Ok(self.get_json(&format!("/admin/changes?limit={limit}")).await?.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::code_of;
    use metahub_core::ErrorCode;

    #[test]
    fn wire_codes_map_back() {
        assert_eq!(code_of("DENIED"), ErrorCode::Denied);
        assert_eq!(code_of("NAME_UNKNOWN"), ErrorCode::NameUnknown);
        assert_eq!(code_of("UPSTREAM_INVALID"), ErrorCode::BadGateway);
        assert_eq!(code_of("???"), ErrorCode::Internal);
    }
}
