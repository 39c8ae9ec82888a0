//! `metahub credential-provider`: a kubelet image credential provider, so a Kubernetes node pulls with its pool's
//! MetaHub account without a password in containerd's (deprecated) `configs.*.auth` block.
//!
//! The kubelet execs the plugin named in its `CredentialProviderConfig` for every image that matches the
//! provider's `matchImages`, with a `CredentialProviderRequest` on stdin, and reads one `CredentialProviderResponse`
//! from stdout (kubernetes `pkg/credentialprovider/plugin/plugin.go`): the response's apiVersion must be the
//! provider's, its kind `CredentialProviderResponse`, and it is decoded strictly (no other fields). Its `auth` keys
//! are matched against the image like `matchImages`; the credentials reach the runtime as CRI `AuthConfig`, which
//! containerd sends to whichever host of the image's `hosts.toml` asks for them (MetaHub, for a mirrored name).
//!
//! Stdout carries the response and nothing else. On bad input or configuration: one line on stderr and a non-zero
//! exit; the kubelet logs that line, so no error here ever contains a password or what stdin held (the request may
//! carry a service account token).

use anyhow::{Context, bail};
use clap::Args;
use metahub_core::Secret;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The API versions the kubelet speaks to exec plugins (v1 since Kubernetes 1.26, v1beta1 1.24–1.25, v1alpha1
/// before); the three have the same request and response. The response carries the request's.
const API_VERSIONS: [&str; 3] = [
    "credentialprovider.kubelet.k8s.io/v1",
    "credentialprovider.kubelet.k8s.io/v1beta1",
    "credentialprovider.kubelet.k8s.io/v1alpha1",
];

/// Shorter than MetaHub's default token lifetime (5 minutes, `metahub serve --token-ttl`): the kubelet re-runs the
/// plugin at least that often, so a rotated node password is picked up within it.
const DEFAULT_CACHE_DURATION: &str = "4m";
/// The longest cache allowed: MetaHub's longest token lifetime (`metahub_core::token::MAX_TOKEN_TTL_SECONDS`).
const MAX_CACHE_DURATION: Duration = Duration::from_secs(metahub_core::token::MAX_TOKEN_TTL_SECONDS);
/// A request is an image name and at most a service account token and its annotations: far below this.
const MAX_REQUEST_BYTES: u64 = 1 << 20;
/// A credentials file is one `login:password` line.
const MAX_CREDENTIALS_FILE_BYTES: u64 = 64 * 1024;

pub const USERNAME_ENV: &str = "METAHUB_NODE_USERNAME";
pub const PASSWORD_ENV: &str = "METAHUB_NODE_PASSWORD";

#[derive(Args)]
pub struct CredentialProviderArgs {
    /// The MetaHub host as it appears in image names and `hosts.toml` (`metahub.example.com`, `10.0.0.5:5000`).
    #[arg(long, env = "METAHUB_NODE_REGISTRY", value_name = "HOST[:PORT]")]
    registry: String,
    /// A registry whose image names the node keeps and containerd mirrors to MetaHub (`hosts.toml`), such as
    /// `docker.io` or `ghcr.io`. Repeatable; the environment variable takes a comma-separated list.
    #[arg(long = "mirror", env = "METAHUB_NODE_MIRRORS", value_name = "REGISTRY", value_delimiter = ',')]
    mirrors: Vec<String>,
    /// The node pool's account: a file with one `login:password` line, owned by the user the kubelet runs as (root)
    /// and readable by nobody else (`chmod 600`). Without it, the account comes from METAHUB_NODE_USERNAME and
    /// METAHUB_NODE_PASSWORD.
    #[arg(long, env = "METAHUB_NODE_CREDENTIALS_FILE", value_name = "PATH")]
    credentials_file: Option<PathBuf>,
    /// How long the kubelet may reuse the answer (`cacheDuration`, keyed by registry), at most 1h.
    #[arg(long, env = "METAHUB_NODE_CACHE_DURATION", default_value = DEFAULT_CACHE_DURATION)]
    cache_duration: humantime::Duration,
}

/// The pool's account. No `Debug` that shows the password.
#[derive(Debug)]
pub struct Credentials {
    username: String,
    password: Secret<String>,
}

/// What the plugin needs of a `CredentialProviderRequest`.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    api_version: &'static str,
    image: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Response<'a> {
    kind: &'static str,
    api_version: &'static str,
    cache_key_type: &'static str,
    cache_duration: String,
    auth: BTreeMap<&'a str, AuthConfig<'a>>,
}

#[derive(Serialize)]
struct AuthConfig<'a> {
    username: &'a str,
    password: &'a str,
}

pub async fn run(args: CredentialProviderArgs) -> anyhow::Result<()> {
    let cache = check_cache_duration(*args.cache_duration)?;
    let registries = Registries::new(&args.registry, &args.mirrors)?;
    let mut input = Vec::new();
    std::io::stdin()
        .take(MAX_REQUEST_BYTES + 1)
        .read_to_end(&mut input)
        .context("credential-provider: reading the request from stdin")?;
    let request = parse_request(&input)?;
    let key = registries.key_for(&request.image)?;
    let credentials = match &args.credentials_file {
        Some(path) => {
            if std::env::var_os(USERNAME_ENV).is_some() || std::env::var_os(PASSWORD_ENV).is_some() {
                bail!(
                    "credential-provider: both --credentials-file and {USERNAME_ENV}/{PASSWORD_ENV} are set; keep one \
                     source of the node's account"
                );
            }
            read_credentials_file(path)?
        }
        None => credentials_from_env(|name| std::env::var(name).ok())?,
    };
    let body = response_json(request.api_version, key, &credentials, cache);
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(body.as_bytes()).and_then(|()| stdout.write_all(b"\n")).and_then(|()| stdout.flush())?;
    Ok(())
}

fn check_cache_duration(cache: Duration) -> anyhow::Result<Duration> {
    if cache.subsec_nanos() != 0 {
        bail!("credential-provider: --cache-duration must be whole seconds, not {}", humantime::format_duration(cache));
    }
    if cache > MAX_CACHE_DURATION {
        bail!("credential-provider: --cache-duration is at most 1h (MetaHub's longest token lifetime)");
    }
    Ok(cache)
}

/// Reads the request: only `kind`, `apiVersion` and `image` matter; anything else (a service account token) is
/// neither checked nor ever repeated.
pub fn parse_request(input: &[u8]) -> anyhow::Result<Request> {
    const WHAT: &str = "credential-provider: stdin is not a CredentialProviderRequest";
    if input.len() as u64 > MAX_REQUEST_BYTES {
        bail!("{WHAT}: more than {MAX_REQUEST_BYTES} bytes");
    }
    if input.iter().all(u8::is_ascii_whitespace) {
        bail!("{WHAT}: stdin is empty (the kubelet writes the request there)");
    }
    // serde's messages can quote the input: only say where it broke.
    let doc: serde_json::Value = serde_json::from_slice(input)
        .map_err(|e| anyhow::anyhow!("{WHAT}: invalid JSON at line {} column {}", e.line(), e.column()))?;
    let Some(doc) = doc.as_object() else { bail!("{WHAT}: not a JSON object") };
    let field = |name: &str| -> anyhow::Result<&str> {
        match doc.get(name) {
            Some(serde_json::Value::String(s)) => Ok(s),
            Some(_) => bail!("{WHAT}: {name} is not a string"),
            None => bail!("{WHAT}: {name} is missing"),
        }
    };
    let kind = field("kind")?;
    if kind != "CredentialProviderRequest" {
        bail!("{WHAT}: kind is {kind:?}");
    }
    let given = field("apiVersion")?;
    let Some(api_version) = API_VERSIONS.iter().copied().find(|v| *v == given) else {
        bail!("{WHAT}: apiVersion {given:?} is not one of {}", API_VERSIONS.join(", "));
    };
    let image = field("image")?.trim();
    if image.is_empty() {
        bail!("{WHAT}: image is empty");
    }
    Ok(Request { api_version, image: image.to_owned() })
}

/// The registry of an image name as the kubelet sends it (`docker.io/org/app`, `ghcr.io/org/app`,
/// `10.0.0.5:5000/org/app`): its first segment when that names a host (a `.` or `:`, or `localhost`), else Docker
/// Hub, by Docker's rule for short names.
pub fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

/// The MetaHub host and the registries mirrored to it: the only names the plugin answers for.
pub struct Registries {
    names: Vec<String>,
}

impl Registries {
    pub fn new(metahub: &str, mirrors: &[String]) -> anyhow::Result<Self> {
        let mut names = Vec::new();
        for (flag, name) in
            std::iter::once(("--registry", metahub)).chain(mirrors.iter().map(|m| ("--mirror", m.as_str())))
        {
            let name = name.trim();
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
            if !valid {
                bail!(
                    "credential-provider: {flag} {name:?} is not a registry host (HOST or HOST:PORT, no scheme or path)"
                );
            }
            names.push(name.to_ascii_lowercase());
        }
        Ok(Registries { names })
    }

    /// The `auth` key for this image: its registry, when the plugin answers for it.
    pub fn key_for<'a>(&self, image: &'a str) -> anyhow::Result<&'a str> {
        let registry = registry_of(image);
        if self.names.iter().any(|n| n.eq_ignore_ascii_case(registry)) {
            return Ok(registry);
        }
        bail!(
            "credential-provider: image {image:?} is on {registry}, which is neither the MetaHub host nor a mirrored \
             registry ({}): add it with --mirror, or take it out of the provider's matchImages",
            self.names.join(", ")
        )
    }
}

/// The account from the environment (`get` is `std::env::var`, a map in tests).
pub fn credentials_from_env(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Credentials> {
    match (get(USERNAME_ENV), get(PASSWORD_ENV)) {
        (Some(username), Some(password)) if !username.is_empty() && !password.is_empty() => {
            Ok(Credentials { username, password: Secret::new(password) })
        }
        (None, None) => bail!(
            "credential-provider: no account for this node: give --credentials-file (METAHUB_NODE_CREDENTIALS_FILE) \
             or set {USERNAME_ENV} and {PASSWORD_ENV}"
        ),
        (username, _) if username.as_deref().is_none_or(str::is_empty) => {
            bail!("credential-provider: {USERNAME_ENV} is not set or empty (the account's login)")
        }
        _ => bail!("credential-provider: {PASSWORD_ENV} is not set or empty (the account's password)"),
    }
}

/// The account from a `login:password` file that only its owner, the user running the plugin, can read or write.
pub fn read_credentials_file(path: &Path) -> anyhow::Result<Credentials> {
    use std::os::unix::fs::MetadataExt;
    let shown = path.display();
    let file = std::fs::File::open(path).with_context(|| format!("credential-provider: cannot open {shown}"))?;
    let meta = file.metadata().with_context(|| format!("credential-provider: cannot stat {shown}"))?;
    if !meta.is_file() {
        bail!("credential-provider: {shown} is not a regular file");
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "credential-provider: {shown} is open to group or others (mode {mode:04o}); it holds the node's password: \
             chmod 600 {shown}"
        );
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        bail!(
            "credential-provider: {shown} is owned by uid {}, not by uid {me} that runs the plugin: chown {me} {shown}",
            meta.uid()
        );
    }
    let mut text = String::new();
    file.take(MAX_CREDENTIALS_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("credential-provider: cannot read {shown} as text"))?;
    if text.len() as u64 > MAX_CREDENTIALS_FILE_BYTES {
        bail!("credential-provider: {shown} is larger than one login:password line");
    }
    parse_credentials_line(&text).with_context(|| format!("credential-provider: {shown}"))
}

/// `login:password` (a trailing newline allowed); the login cannot hold `:` (Basic auth), the password can. The
/// error never quotes the text.
fn parse_credentials_line(text: &str) -> anyhow::Result<Credentials> {
    let line = text.strip_suffix('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).unwrap_or(text);
    if line.contains(['\n', '\r']) {
        bail!("holds more than one line; it must be one login:password line");
    }
    match line.split_once(':') {
        Some((username, password)) if !username.is_empty() && !password.is_empty() => {
            Ok(Credentials { username: username.to_owned(), password: Secret::new(password.to_owned()) })
        }
        _ => bail!("is not one login:password line (both non-empty)"),
    }
}

fn response_json(api_version: &'static str, key: &str, credentials: &Credentials, cache: Duration) -> String {
    let auth = AuthConfig { username: &credentials.username, password: credentials.password.expose_str() };
    let response = Response {
        kind: "CredentialProviderResponse",
        api_version,
        cache_key_type: "Registry",
        cache_duration: go_duration(cache),
        auth: BTreeMap::from([(key, auth)]),
    };
    // Serializing strings and a map cannot fail.
    serde_json::to_string(&response).unwrap_or_default()
}

/// Whole seconds as Go's `time.Duration.String()` writes them (`4m0s`), which `metav1.Duration` reads.
fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, min, sec) => format!("{min}m{sec}s"),
        (h, min, sec) => format!("{h}h{min}m{sec}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;

    const V1: &str = "credentialprovider.kubelet.k8s.io/v1";

    fn request(image: &str) -> String {
        // what the kubelet's encoder writes: TypeMeta first, then the fields, and a newline
        format!("{{\"kind\":\"CredentialProviderRequest\",\"apiVersion\":\"{V1}\",\"image\":\"{image}\"}}\n")
    }

    fn error_of<T>(r: anyhow::Result<T>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn parses_what_the_kubelet_sends() {
        let r = parse_request(request("docker.io/org/app").as_bytes()).unwrap();
        assert_eq!(r, Request { api_version: V1, image: "docker.io/org/app".into() });
        // service account token mode adds fields; they are accepted and ignored
        let with_token = format!(
            "{{\"kind\":\"CredentialProviderRequest\",\"apiVersion\":\"{V1}\",\"image\":\"ghcr.io/a/b\",\
             \"serviceAccountToken\":\"eyJ.tok\",\"serviceAccountAnnotations\":{{\"a\":\"b\"}}}}"
        );
        assert_eq!(parse_request(with_token.as_bytes()).unwrap().image, "ghcr.io/a/b");
    }

    #[test]
    fn older_api_versions_are_answered_in_their_own_version() {
        for v in ["credentialprovider.kubelet.k8s.io/v1beta1", "credentialprovider.kubelet.k8s.io/v1alpha1"] {
            let input =
                format!("{{\"kind\":\"CredentialProviderRequest\",\"apiVersion\":\"{v}\",\"image\":\"x.io/a\"}}");
            assert_eq!(parse_request(input.as_bytes()).unwrap().api_version, v);
        }
    }

    #[test]
    fn bad_requests_say_what_is_wrong_without_quoting_stdin() {
        let cases: [(&str, &str); 10] = [
            ("", "stdin is empty"),
            ("  \n", "stdin is empty"),
            (
                "{\"kind\": \"CredentialProviderRequest\", \"serviceAccountToken\": \"s3cr3t-token",
                "invalid JSON at line 1",
            ),
            ("[\"s3cr3t-token\"]", "not a JSON object"),
            ("{\"apiVersion\":\"credentialprovider.kubelet.k8s.io/v1\",\"image\":\"a.io/b\"}", "kind is missing"),
            (
                "{\"kind\":\"ExecCredential\",\"apiVersion\":\"credentialprovider.kubelet.k8s.io/v1\",\"image\":\"a.io/b\"}",
                "kind is \"ExecCredential\"",
            ),
            (
                "{\"kind\":\"CredentialProviderRequest\",\"apiVersion\":\"credentialprovider.kubelet.k8s.io/v2\",\"image\":\"a.io/b\"}",
                "apiVersion \"credentialprovider.kubelet.k8s.io/v2\" is not one of",
            ),
            (
                "{\"kind\":\"CredentialProviderRequest\",\"apiVersion\":\"credentialprovider.kubelet.k8s.io/v1\"}",
                "image is missing",
            ),
            (
                "{\"kind\":\"CredentialProviderRequest\",\"apiVersion\":\"credentialprovider.kubelet.k8s.io/v1\",\"image\":\" \"}",
                "image is empty",
            ),
            (
                "{\"kind\":\"CredentialProviderRequest\",\"apiVersion\":\"credentialprovider.kubelet.k8s.io/v1\",\"image\":7}",
                "image is not a string",
            ),
        ];
        for (input, expected) in cases {
            let message = error_of(parse_request(input.as_bytes()));
            assert!(message.contains(expected), "{input:?}: {message}");
            assert!(message.starts_with("credential-provider: stdin is not a CredentialProviderRequest"), "{message}");
            assert!(!message.contains("s3cr3t"), "{message}");
            assert_eq!(message.lines().count(), 1, "{message}");
        }
        let huge = vec![b' '; (MAX_REQUEST_BYTES + 1) as usize];
        assert!(error_of(parse_request(&huge)).contains("more than"));
    }

    #[test]
    fn registry_of_follows_dockers_rule() {
        assert_eq!(registry_of("docker.io/org/app"), "docker.io");
        assert_eq!(registry_of("ghcr.io/org/app"), "ghcr.io");
        assert_eq!(registry_of("127.0.0.1:5000/org/app"), "127.0.0.1:5000");
        assert_eq!(registry_of("localhost/app"), "localhost");
        assert_eq!(registry_of("org/app"), "docker.io");
        assert_eq!(registry_of("nginx"), "docker.io");
    }

    #[test]
    fn answers_only_for_metahub_and_its_mirrors() {
        let r = Registries::new("MetaHub.example.com", &["docker.io".into(), "ghcr.io".into()]).unwrap();
        assert_eq!(r.key_for("metahub.example.com/org/app").unwrap(), "metahub.example.com");
        assert_eq!(r.key_for("docker.io/library/nginx").unwrap(), "docker.io");
        assert_eq!(r.key_for("ghcr.io/org/app").unwrap(), "ghcr.io");
        let message = error_of(r.key_for("quay.io/org/app"));
        assert!(
            message.contains("quay.io") && message.contains("--mirror") && message.contains("matchImages"),
            "{message}"
        );
        for bad in ["https://metahub.example.com", "metahub.example.com/v2", "", "a b"] {
            assert!(Registries::new(bad, &[]).is_err(), "{bad:?}");
            assert!(Registries::new("m.io", &[bad.to_owned()]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn response_has_the_kubelets_shape() {
        let creds = Credentials { username: "pool-skylake".into(), password: Secret::new("pw:with:colons".into()) };
        let body = response_json(V1, "docker.io", &creds, Duration::from_secs(240));
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({
                "kind": "CredentialProviderResponse",
                "apiVersion": V1,
                "cacheKeyType": "Registry",
                "cacheDuration": "4m0s",
                "auth": {"docker.io": {"username": "pool-skylake", "password": "pw:with:colons"}}
            })
        );
        assert!(!body.contains('\n'), "one line");
        assert!(!format!("{creds:?}").contains("colons"), "Debug hides the password");
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_secs(59)), "59s");
        assert_eq!(go_duration(Duration::from_secs(240)), "4m0s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_duration(Duration::from_secs(3725)), "1h2m5s");
        assert!(check_cache_duration(Duration::from_millis(1500)).is_err());
        assert!(check_cache_duration(Duration::from_secs(3601)).is_err());
        assert_eq!(check_cache_duration(Duration::ZERO).unwrap(), Duration::ZERO);
        let default: humantime::Duration = DEFAULT_CACHE_DURATION.parse().unwrap();
        assert!(default.as_secs() < metahub_core::settings::DEFAULT_TOKEN_TTL.as_secs(), "shorter than a token lives");
    }

    #[test]
    fn credentials_from_the_environment() {
        let env = |pairs: &[(&str, &str)]| {
            let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            move |name: &str| map.get(name).cloned()
        };
        let c = credentials_from_env(env(&[(USERNAME_ENV, "pool"), (PASSWORD_ENV, "hunter2-secret")])).unwrap();
        assert_eq!((c.username.as_str(), c.password.expose_str()), ("pool", "hunter2-secret"));
        assert!(error_of(credentials_from_env(env(&[]))).contains("--credentials-file"));
        let only_user = error_of(credentials_from_env(env(&[(USERNAME_ENV, "pool")])));
        assert!(only_user.contains(PASSWORD_ENV), "{only_user}");
        let only_password = error_of(credentials_from_env(env(&[(PASSWORD_ENV, "hunter2-secret")])));
        assert!(only_password.contains(USERNAME_ENV) && !only_password.contains("hunter2"), "{only_password}");
    }

    /// A file under a directory of its own, removed when dropped.
    struct TempFile {
        dir: PathBuf,
        path: PathBuf,
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn temp_file(name: &str, text: &str, mode: u32) -> TempFile {
        let dir = std::env::temp_dir().join(format!("metahub-credprov-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node-credentials");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        TempFile { dir, path }
    }

    #[test]
    fn credentials_file_must_be_the_owners_alone() {
        let good = temp_file("good", "pool-skylake:pw-secret:x\n", 0o600);
        let c = read_credentials_file(&good.path).unwrap();
        assert_eq!((c.username.as_str(), c.password.expose_str()), ("pool-skylake", "pw-secret:x"));
        for mode in [0o640, 0o604, 0o620, 0o660, 0o644] {
            let file = temp_file(&format!("mode{mode:o}"), "pool:pw-secret\n", mode);
            let message = error_of(read_credentials_file(&file.path));
            let shown = file.path.display().to_string();
            assert!(
                message.contains(&format!("chmod 600 {shown}")) && message.contains(&format!("{mode:04o}")),
                "{message}"
            );
            assert!(!message.contains("pw-secret"), "{message}");
        }
        let missing = error_of(read_credentials_file(Path::new("/nonexistent/metahub-node")));
        assert!(missing.contains("/nonexistent/metahub-node"), "{missing}");
    }

    #[test]
    fn credentials_file_content_errors_never_quote_it() {
        for (name, text) in
            [("nocolon", "pw-secret-only\n"), ("emptypw", "pool:\n"), ("two", "pool:pw-secret\nx:y\n"), ("empty", "")]
        {
            let file = temp_file(name, text, 0o600);
            let message = error_of(read_credentials_file(&file.path));
            assert!(
                message.contains(&file.path.display().to_string()) && message.contains("login:password"),
                "{message}"
            );
            assert!(!message.contains("pw-secret"), "{message}");
        }
        let crlf = temp_file("crlf", "pool:pw-secret\r\n", 0o600);
        assert_eq!(read_credentials_file(&crlf.path).unwrap().password.expose_str(), "pw-secret");
    }
}
