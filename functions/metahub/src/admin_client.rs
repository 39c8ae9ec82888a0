//! `--endpoint URL`: the admin API of a running MetaHub, as a [`Store`], so that every `machine-type` and `account`
//! command has one code path whatever it talks to. Passwords are hashed here and only their hash is sent.
//!
//! Authenticates with `Authorization: Bearer $METAHUB_ADMIN_SECRET` when that is set (`metahub serve
//! --admin-secret-file`); otherwise every request is SigV4-signed (service `lambda`, signed payload) with the
//! standard AWS credential chain, as the admin function's `AWS_IAM` Function URL requires.

use async_trait::async_trait;
use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use metahub_core::machine::{MachineType, validate_name};
use metahub_core::ports::{Account, AccountChange, Change, Manifest, Store};
use metahub_core::reference::{Digest, RepositoryName};
use metahub_core::{Error, ErrorCode, Result, Secret};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::fmt;
use std::time::{Duration, SystemTime};

pub const SECRET_ENV: &str = "METAHUB_ADMIN_SECRET";

pub struct AdminApiStore {
    client: reqwest::Client,
    base: String,
    auth: Authentication,
}

/// How each admin request proves who sends it.
enum Authentication {
    /// `Authorization: Bearer` with the secret of `metahub serve --admin-secret-file`.
    Bearer(Secret<String>),
    /// AWS Signature Version 4 for a Function URL with `AuthType: AWS_IAM`.
    SigV4 { credentials: SharedCredentialsProvider, region: String },
}

impl fmt::Debug for AdminApiStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match &self.auth {
            Authentication::Bearer(secret) => format!("bearer {secret:?}"),
            Authentication::SigV4 { region, .. } => format!("sigv4 lambda/{region}"),
        };
        f.debug_struct("AdminApiStore").field("base", &self.base).field("auth", &auth).finish()
    }
}

/// The region a Function URL lives in (`https://<id>.lambda-url.<region>.on.aws`), which is the one to sign for.
fn function_url_region(url: &url::Url) -> Option<String> {
    let host = url.host_str()?;
    let rest = host.split_once(".lambda-url.")?.1;
    let region = rest.strip_suffix(".on.aws")?;
    (!region.is_empty() && !region.contains('.')).then(|| region.to_owned())
}

/// The headers that sign one request: `Authorization`, `X-Amz-Date`, `X-Amz-Content-Sha256` (the signed payload)
/// and, for temporary credentials, `X-Amz-Security-Token`.
fn sigv4_headers(
    credentials: Credentials,
    region: &str,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    at: SystemTime,
) -> std::result::Result<Vec<(String, String)>, String> {
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let identity: Identity = credentials.into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SIGV4_SERVICE)
        .time(at)
        .settings(settings)
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let signable = SignableRequest::new(method, url, headers.iter().copied(), SignableBody::Bytes(body))
        .map_err(|e| e.to_string())?;
    let (instructions, _) = sign(signable, &params).map_err(|e| e.to_string())?.into_parts();
    Ok(instructions.headers().map(|(name, value)| (name.to_owned(), value.to_owned())).collect())
}

/// Function URLs are signed for the `lambda` service.
const SIGV4_SERVICE: &str = "lambda";

/// Every wire code the admin API answers with, back to the one error table.
fn code_of(wire: &str) -> ErrorCode {
    ErrorCode::from_wire(wire).unwrap_or(ErrorCode::Internal)
}

impl AdminApiStore {
    /// A client of the admin API at `endpoint`: Bearer `$METAHUB_ADMIN_SECRET` if set, else SigV4 with the standard
    /// AWS credential chain and the Function URL's region (else the configured region).
    pub async fn new(endpoint: &str) -> anyhow::Result<AdminApiStore> {
        let url = url::Url::parse(endpoint).map_err(|e| anyhow::anyhow!("--endpoint {endpoint:?}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            anyhow::bail!("--endpoint {endpoint:?} is not an http(s) URL");
        }
        let secret = std::env::var(SECRET_ENV).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
        let auth = match secret {
            Some(secret) => Authentication::Bearer(secret.into()),
            None => {
                let aws = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
                let credentials = aws.credentials_provider().ok_or_else(|| {
                    anyhow::anyhow!(
                        "--endpoint needs AWS credentials (to sign for the AWS_IAM Function URL) or {SECRET_ENV}"
                    )
                })?;
                let region =
                    function_url_region(&url).or_else(|| aws.region().map(|r| r.to_string())).ok_or_else(|| {
                        anyhow::anyhow!(
                            "--endpoint {endpoint:?}: no AWS region to sign for (set AWS_REGION, or {SECRET_ENV} for a \
                         `metahub serve --admin-secret-file`)"
                        )
                    })?;
                Authentication::SigV4 { credentials, region }
            }
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(AdminApiStore { client, base: endpoint.trim_end_matches('/').to_owned(), auth })
    }

    /// `request` with its authentication: the bearer secret, or the SigV4 headers over method, URL and body.
    async fn authenticate(
        &self,
        request: reqwest::RequestBuilder,
        method: &Method,
        url: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<reqwest::RequestBuilder> {
        match &self.auth {
            Authentication::Bearer(secret) => Ok(request.bearer_auth(secret.expose_str())),
            Authentication::SigV4 { credentials, region } => {
                let credentials = credentials.provide_credentials().await.map_err(|e| {
                    Error::unauthorized(format!(
                        "no AWS credentials to sign admin requests (or set {SECRET_ENV} for a `metahub serve \
                         --admin-secret-file`): {}",
                        one_line(&e)
                    ))
                })?;
                let signed: Vec<(&str, &str)> = content_type.map(|c| ("content-type", c)).into_iter().collect();
                let headers =
                    sigv4_headers(credentials, region, method.as_str(), url, &signed, body, SystemTime::now())
                        .map_err(|e| Error::internal(format!("signing the admin request: {e}")))?;
                Ok(headers.into_iter().fold(request, |r, (name, value)| r.header(name, value)))
            }
        }
    }

    /// One admin request: the status and body of a success, or the registry error the API answered.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<(StatusCode, bytes::Bytes)> {
        let url = format!("{}{path}", self.base);
        let body = body.map(|b| b.to_string().into_bytes());
        let content_type = body.as_ref().map(|_| "application/json");
        let mut request = self.client.request(method.clone(), &url);
        if let (Some(content_type), Some(body)) = (content_type, &body) {
            request = request.header(reqwest::header::CONTENT_TYPE, content_type).body(body.clone());
        }
        let request =
            self.authenticate(request, &method, &url, content_type, body.as_deref().unwrap_or_default()).await?;
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
            // An AWS_IAM Function URL refuses a signature with 403 `{"Message": ...}`, before the function runs.
            let aws_message = envelope.as_ref().and_then(|v| v.get("Message").or_else(|| v.get("message")));
            if let (true, Some(message)) = (status == StatusCode::FORBIDDEN, aws_message.and_then(Value::as_str)) {
                return Err(Error::denied(format!("admin endpoint {} refused the request: {message}", self.base)));
            }
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

    /// One request as the admin page sent it (`metahub admin ui`), authenticated like every other; the answer as is,
    /// errors included. `Err` only when the endpoint cannot be reached.
    pub async fn forward(
        &self,
        method: Method,
        path_and_query: &str,
        content_type: Option<&str>,
        body: bytes::Bytes,
    ) -> Result<reqwest::Response> {
        let url = format!("{}{path_and_query}", self.base);
        let mut request = self.client.request(method.clone(), &url);
        if let Some(content_type) = content_type {
            request = request.header(reqwest::header::CONTENT_TYPE, content_type);
        }
        let request = self.authenticate(request.body(body.clone()), &method, &url, content_type, &body).await?;
        request.send().await.map_err(|e| Error::unavailable(format!("admin endpoint {}: {e}", self.base)))
    }

    /// Replaces an account's password hash, keeping its machine type; refused when the account does not exist.
    pub async fn rotate_password(&self, login: &str, password_hash: &str) -> Result<()> {
        validate_name("login", login)?;
        let body = json!({"passwordHash": password_hash});
        self.call(Method::PUT, &format!("/admin/accounts/{login}/password"), Some(body)).await.map(|_| ())
    }
}

fn one_line(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
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

    async fn update_account(&self, login: &str, change: &AccountChange) -> Result<Option<Account>> {
        validate_name("login", login)?;
        // the API's one-field routes: the server writes that field alone
        let (path, body) = match change {
            AccountChange::PasswordHash(hash) => ("password", json!({"passwordHash": hash})),
            AccountChange::MachineType(name) => ("machine-type", json!({"machineType": name})),
        };
        let path = format!("/admin/accounts/{login}/{path}");
        match self.call(Method::PUT, &path, Some(body)).await {
            Ok((_, bytes)) => {
                serde_json::from_slice::<AccountView>(&bytes).map(|v| Some(Account::from(v))).map_err(|e| {
                    Error::bad_gateway(format!("admin endpoint {}: unexpected answer to PUT {path}: {e}", self.base))
                })
            }
            // the account is unknown (a missing machine type is NAME_UNKNOWN too, with a machineType detail)
            Err(e)
                if e.code == ErrorCode::NameUnknown && e.detail.as_ref().is_some_and(|d| d.get("login").is_some()) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
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

    async fn watched_images(&self) -> Result<Vec<String>> {
        Ok(self.get_json("/admin/watched-images").await?.unwrap_or_default())
    }

    async fn watch_image(&self, image: &str) -> Result<bool> {
        let (status, _) = self.call(Method::POST, "/admin/watched-images", Some(json!({"image": image}))).await?;
        Ok(status == StatusCode::CREATED)
    }

    async fn unwatch_image(&self, image: &str) -> Result<bool> {
        let query: String = url::form_urlencoded::Serializer::new(String::new()).append_pair("image", image).finish();
        self.delete(&format!("/admin/watched-images?{query}")).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_codes_map_back() {
        assert_eq!(code_of("DENIED"), ErrorCode::Denied);
        assert_eq!(code_of("NAME_UNKNOWN"), ErrorCode::NameUnknown);
        assert_eq!(code_of("UPSTREAM_INVALID"), ErrorCode::BadGateway);
        assert_eq!(code_of("???"), ErrorCode::Internal);
    }

    #[test]
    fn region_of_a_function_url() {
        let url = |u: &str| url::Url::parse(u).unwrap();
        assert_eq!(
            function_url_region(&url("https://abc123.lambda-url.eu-west-1.on.aws/")).as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(function_url_region(&url("http://127.0.0.1:5000")), None);
        assert_eq!(function_url_region(&url("https://x.lambda-url..on.aws")), None);
    }

    /// The AWS SigV4 test suite's `post-x-www-form-urlencoded` vector shape, recomputed: the signature covers the
    /// payload hash, the date and the signed headers, so a different body or time changes it.
    #[test]
    fn signed_headers_cover_payload_and_time() {
        let credentials =
            || Credentials::new("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", None, None, "t");
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160); // 2015-08-30T12:36:00Z
        let url = "https://abc.lambda-url.us-east-1.on.aws/admin/machine-types/x";
        let ct = [("content-type", "application/json")];
        let one = sigv4_headers(credentials(), "us-east-1", "PUT", url, &ct, b"{}", at).unwrap();
        let get = |h: &[(String, String)], n: &str| h.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()).unwrap();
        let auth = get(&one, "authorization");
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/lambda/aws4_request"));
        assert!(auth.contains("SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date"), "{auth}");
        assert_eq!(get(&one, "x-amz-date"), "20150830T123600Z");
        assert_eq!(
            get(&one, "x-amz-content-sha256"),
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        let other_body = sigv4_headers(credentials(), "us-east-1", "PUT", url, &ct, b"{ }", at).unwrap();
        assert_ne!(get(&other_body, "authorization"), auth);
        let later =
            sigv4_headers(credentials(), "us-east-1", "PUT", url, &ct, b"{}", at + Duration::from_secs(1)).unwrap();
        assert_ne!(get(&later, "authorization"), auth);
    }
}
