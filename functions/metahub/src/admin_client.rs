//! `--endpoint URL`: the admin API of a running MetaHub, as an [`AdminPort`], so that every `machine-type` and
//! `account` command has one code path whatever it talks to. Passwords are hashed here and only their hash is sent;
//! the server records each change with the principal it authenticated.
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
use metahub_core::admin::{AdminPort, NewAccount, NewPassword};
use metahub_core::machine::{MachineType, MachineTypeName};
use metahub_core::names::Login;
use metahub_core::ports::{Account, Change};
use metahub_core::{Error, ErrorCode, Result, Secret};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::time::{Duration, SystemTime};

pub const SECRET_ENV: &str = "METAHUB_ADMIN_SECRET";

#[derive(Debug)]
pub struct AdminApiClient {
    client: reqwest::Client,
    base: String,
    auth: Authentication,
}

/// How each admin request proves who sends it.
#[derive(Debug)]
enum Authentication {
    /// `Authorization: Bearer` with the secret of `metahub serve --admin-secret-file`.
    Bearer(Secret<String>),
    /// AWS Signature Version 4 for a Function URL with `AuthType: AWS_IAM`.
    SigV4 { credentials: SharedCredentialsProvider, region: String },
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

impl AdminApiClient {
    /// A client of the admin API at `endpoint`: Bearer `$METAHUB_ADMIN_SECRET` if set, else SigV4 with the standard
    /// AWS credential chain and the Function URL's region (else the configured region).
    pub async fn new(endpoint: &str) -> anyhow::Result<AdminApiClient> {
        let url = url::Url::parse(endpoint).map_err(|e| anyhow::anyhow!("--endpoint {endpoint:?}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            anyhow::bail!("--endpoint {endpoint:?} is not an http(s) URL");
        }
        let secret = std::env::var(SECRET_ENV).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
        let auth = match secret {
            Some(secret) => Authentication::Bearer(secret.into()),
            None => {
                let aws = metahub_store_dynamodb::aws_defaults().load().await;
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
        let client = metahub_upstream::http_client_builder()
            .timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(AdminApiClient { client, base: endpoint.trim_end_matches('/').to_owned(), auth })
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

    /// One admin request whose answer is a JSON `T`.
    async fn json<T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<Value>) -> Result<T> {
        let shown = format!("{method} {path}");
        let (_, bytes) = self.call(method, path, body).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::bad_gateway(format!("admin endpoint {}: unexpected answer to {shown}: {e}", self.base)))
    }

    async fn account_json(&self, method: Method, path: &str, body: Option<Value>) -> Result<Account> {
        self.json::<AccountView>(method, path, body).await.map(Account::from)
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

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct AccountView {
    login: Login,
    machine_type: MachineTypeName,
    #[serde(default)]
    repositories: Vec<String>,
}

impl From<AccountView> for Account {
    /// The API never returns hashes.
    fn from(a: AccountView) -> Account {
        Account {
            login: a.login,
            machine_type: a.machine_type,
            password_hash: Secret::default(),
            repositories: a.repositories,
        }
    }
}

#[async_trait]
impl AdminPort for AdminApiClient {
    async fn machine_type(&self, name: &MachineTypeName) -> Result<MachineType> {
        self.json(Method::GET, &format!("/admin/machine-types/{name}"), None).await
    }

    async fn machine_types(&self) -> Result<Vec<MachineType>> {
        self.json(Method::GET, "/admin/machine-types", None).await
    }

    async fn put_machine_type(&self, machine_type: MachineType) -> Result<MachineType> {
        let body = json!({"features": machine_type.features(), "match": machine_type.match_mode().to_string()});
        self.json(Method::PUT, &format!("/admin/machine-types/{}", machine_type.name()), Some(body)).await
    }

    async fn delete_machine_type(&self, name: &MachineTypeName) -> Result<()> {
        self.call(Method::DELETE, &format!("/admin/machine-types/{name}"), None).await.map(|_| ())
    }

    async fn account(&self, login: &Login) -> Result<Account> {
        self.account_json(Method::GET, &format!("/admin/accounts/{login}"), None).await
    }

    async fn accounts(&self) -> Result<Vec<Account>> {
        let views: Vec<AccountView> = self.json(Method::GET, "/admin/accounts", None).await?;
        Ok(views.into_iter().map(Account::from).collect())
    }

    async fn put_account(&self, account: NewAccount) -> Result<Account> {
        let body = json!({
            "machineType": account.machine_type,
            "passwordHash": account.password.into_hash().await?.expose_str(),
            "repositories": account.repositories,
        });
        self.account_json(Method::PUT, &format!("/admin/accounts/{}", account.login), Some(body)).await
    }

    async fn rotate_password(&self, login: &Login, password: NewPassword) -> Result<Account> {
        let body = json!({"passwordHash": password.into_hash().await?.expose_str()});
        self.account_json(Method::PUT, &format!("/admin/accounts/{login}/password"), Some(body)).await
    }

    async fn move_account(&self, login: &Login, machine_type: MachineTypeName) -> Result<Account> {
        let body = json!({"machineType": machine_type});
        self.account_json(Method::PUT, &format!("/admin/accounts/{login}/machine-type"), Some(body)).await
    }

    async fn delete_account(&self, login: &Login) -> Result<()> {
        self.call(Method::DELETE, &format!("/admin/accounts/{login}"), None).await.map(|_| ())
    }

    async fn changes(&self, limit: usize) -> Result<Vec<Change>> {
        self.json(Method::GET, &format!("/admin/changes?limit={limit}"), None).await
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
