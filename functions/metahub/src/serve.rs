//! `metahub serve`: every route in one process, on the embedded store or DynamoDB.

use crate::cli::StoreArg;
use anyhow::Context;
use clap::Args;
use metahub_core::cache::{DEFAULT_MAX_STALE, DEFAULT_TAG_TTL};
use metahub_core::cosign::SelectionSigner;
use metahub_core::service::IndexDigestPulls;
use metahub_core::settings::{self, RuntimeDefaults, SharedSettings};
use metahub_http::{AdminAuth, app};
use metahub_upstream::ClientOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Args)]
pub struct ServeArgs {
    #[arg(long, env = "METAHUB_LISTEN", default_value_t = crate::cli::default_listen())]
    listen: SocketAddr,
    #[command(flatten)]
    upstreams: crate::upstreams::UpstreamArgs,
    #[command(flatten)]
    store: StoreArg,
    /// The settings shared with the Lambda functions.
    #[command(flatten)]
    shared: SharedFlags,
    /// Serve the admin API under /admin/, for requests carrying `Authorization: Bearer <the secret in PATH>`
    /// (at least 32 characters). The secret may also come from METAHUB_ADMIN_SECRET. Neither: no admin API.
    #[arg(long)]
    admin_secret_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (off by default); a loopback address unless
    /// --metrics-public is given too.
    #[arg(long, env = "METAHUB_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Allow a --metrics-listen address that is not loopback: the metrics name accounts' machine types and
    /// repositories, so keep that address on a private network.
    #[arg(long, env = "METAHUB_METRICS_PUBLIC")]
    metrics_public: bool,
    /// Timeouts and the connection cap of every listener.
    #[command(flatten)]
    limits: crate::listen::Limits,
    /// Sign each filtered index with this ECDSA P-256 key (PEM, PKCS#8), served as its cosign signature (the tag
    /// `sha256-<hex>.sig` and its referrers); the file must not be readable by group or others. The PEM may also
    /// come from METAHUB_SELECTION_SIGNING_KEY. Neither: no signatures. See docs/signatures.md.
    #[arg(long, env = "METAHUB_SELECTION_SIGNING_KEY_FILE")]
    selection_signing_key: Option<PathBuf>,
}

/// The flags of the settings `serve` shares with the Lambda functions: raw text, read by [`SharedSettings::read`]
/// just as the functions read their environment. They carry no clap `env`: a flag left out falls back to its
/// variable through the same lookup, so an empty variable counts as unset in both runtimes, a bad value is named as
/// written (the flag, or the variable), and the test reads the same map as the functions without the process
/// environment. `--help` names each variable and default from the same constants (see [`help`]).
#[derive(Args)]
struct SharedFlags {
    #[arg(long, value_name = "URL", help = help(
        "The URL clients use to reach this front (the token realm is built from it)",
        settings::PUBLIC_URL, Some("http://LISTEN")))]
    public_url: Option<String>,
    #[arg(long, value_name = "NAME", help = help(
        "The `service` of challenges and the audience of tokens",
        settings::SERVICE, Some(settings::DEFAULT_SERVICE)))]
    service: Option<String>,
    #[arg(long, value_name = "NAME", help = help(
        "Grant token requests without credentials this machine type (checked at start-up); unset: refused",
        settings::ANONYMOUS_MACHINE_TYPE, None::<&str>))]
    anonymous_machine_type: Option<String>,
    #[arg(long, value_name = "DURATION", help = help(
        "Reuse a tag's upstream check for this long after it answered: a tag moved upstream is served at most this \
         long late, and a fleet pulling one tag costs one upstream HEAD per window. `0`: every pull checks upstream. \
         A duration is seconds (`300`) or with a unit (`5m`, `500ms`), here as in the Lambda functions",
        settings::TAG_TTL, Some(humantime::format_duration(DEFAULT_TAG_TTL))))]
    tag_ttl: Option<String>,
    #[arg(long, value_name = "verbatim|refuse", help = help(
        "A pull by the digest of an upstream index (a pin) cannot be filtered: `verbatim` serves the whole index, \
         `refuse` answers DENIED naming the digest of the image the machine type is served. See the README",
        settings::INDEX_DIGEST_PULLS, Some(IndexDigestPulls::default())))]
    index_digest_pulls: Option<String>,
    #[arg(long, value_name = "DURATION", help = help(
        &format!("Token lifetime, whole seconds, at most {}",
            humantime::format_duration(Duration::from_secs(metahub_core::token::MAX_TOKEN_TTL_SECONDS))),
        settings::TOKEN_TTL, Some(humantime::format_duration(settings::DEFAULT_TOKEN_TTL))))]
    token_ttl: Option<String>,
    #[arg(long, value_name = "MIB", help = help(
        "Memory all caches together may hold, MiB (manifests weighed by size)",
        settings::CACHE_MIB, Some(RuntimeDefaults::default().cache_bytes >> 20)))]
    cache_mib: Option<String>,
    #[arg(long, value_name = "DURATION", help = help(
        "While the upstream fails, serve a tag's last index for at most this long (`0`: never)",
        settings::MAX_STALE, Some(humantime::format_duration(DEFAULT_MAX_STALE))))]
    max_stale: Option<String>,
    #[arg(long, value_name = "DURATION", help = help(
        "Upstream request timeout",
        settings::UPSTREAM_TIMEOUT, Some(humantime::format_duration(RuntimeDefaults::default().upstream_timeout))))]
    upstream_timeout: Option<String>,
}

/// A shared setting's help: what it does, then its variable and default as clap shows them for other flags.
fn help(meaning: &str, variable: &str, default: Option<impl std::fmt::Display>) -> String {
    match default {
        Some(default) => format!("{meaning} [env: {variable}] [default: {default}]"),
        None => format!("{meaning} [env: {variable}]"),
    }
}

impl SharedFlags {
    /// The flag named for `variable`, and its value if it was given.
    fn flag(&self, variable: &str) -> Option<(&'static str, Option<&str>)> {
        let (flag, value) = match variable {
            settings::PUBLIC_URL => ("--public-url", &self.public_url),
            settings::SERVICE => ("--service", &self.service),
            settings::ANONYMOUS_MACHINE_TYPE => ("--anonymous-machine-type", &self.anonymous_machine_type),
            settings::TAG_TTL => ("--tag-ttl", &self.tag_ttl),
            settings::INDEX_DIGEST_PULLS => ("--index-digest-pulls", &self.index_digest_pulls),
            settings::TOKEN_TTL => ("--token-ttl", &self.token_ttl),
            settings::CACHE_MIB => ("--cache-mib", &self.cache_mib),
            settings::MAX_STALE => ("--max-stale", &self.max_stale),
            settings::UPSTREAM_TIMEOUT => ("--upstream-timeout", &self.upstream_timeout),
            _ => return None,
        };
        Some((flag, value.as_deref()))
    }

    /// The shared settings: each flag if given, else its variable through `env` (the process environment).
    fn read(&self, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<SharedSettings> {
        let given = |variable: &str| self.flag(variable).and_then(|(flag, value)| Some((flag, value?)));
        SharedSettings::read(
            |variable| given(variable).map_or_else(|| env(variable), |(_, value)| Some(value.to_owned())),
            RuntimeDefaults::default(),
        )
        .map_err(|e| match given(e.variable) {
            Some((flag, _)) => anyhow::anyhow!("{flag} {:?}: {}", e.value, e.problem),
            None => e.into(),
        })
    }
}

/// The admin API's authentication: the secret from `--admin-secret-file` or `METAHUB_ADMIN_SECRET`, if any.
fn admin_auth(file: Option<&Path>) -> anyhow::Result<AdminAuth> {
    let secret = match file {
        Some(path) => metahub_core::files::read_private(path, "--admin-secret-file")?,
        None => match std::env::var("METAHUB_ADMIN_SECRET") {
            Ok(secret) if !secret.trim().is_empty() => secret,
            _ => return Ok(AdminAuth::Disabled),
        },
    };
    AdminAuth::secret(&secret).map_err(|e| anyhow::anyhow!("admin secret: {}", e.message))
}

/// The selection signing key from `--selection-signing-key` or `METAHUB_SELECTION_SIGNING_KEY`, if any. A key file
/// that group or others can read is refused: the key signs what every node trusts.
fn selection_signer(file: Option<&Path>) -> anyhow::Result<Option<Arc<SelectionSigner>>> {
    let source = file.map_or_else(|| "METAHUB_SELECTION_SIGNING_KEY".to_owned(), |p| p.display().to_string());
    let pem = match file {
        Some(path) => metahub_core::files::read_private(path, "--selection-signing-key")
            .map_err(|e| anyhow::anyhow!("{}", e.message))?,
        None => match std::env::var("METAHUB_SELECTION_SIGNING_KEY") {
            Ok(pem) if !pem.trim().is_empty() => pem,
            _ => return Ok(None),
        },
    };
    let signer = SelectionSigner::from_pkcs8_pem(&pem).map_err(|e| anyhow::anyhow!("{source}: {}", e.message))?;
    Ok(Some(Arc::new(signer)))
}

impl ServeArgs {
    /// The app settings `serve` shares with the Lambda functions, from its flags and `env`, with serve's own
    /// default public URL; and the upstream timeout.
    fn app_settings(&self, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<(app::Settings, Duration)> {
        let mut shared = self.shared.read(env)?;
        shared.public_url.get_or_insert_with(|| format!("http://{}", self.listen));
        let upstream_timeout = shared.upstream_timeout;
        Ok((app::Settings::from(shared), upstream_timeout))
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Before anything else: a bad secret must stop the server, not leave it running without its admin API.
    let admin = admin_auth(args.admin_secret_file.as_deref())?;
    let limits = args.limits.validated()?;
    let selection_signer = selection_signer(args.selection_signing_key.as_deref())?;
    let (from_shared, upstream_timeout) = args.app_settings(|name| std::env::var(name).ok())?;
    if let Some(listen) = args.metrics_listen {
        if !listen.ip().is_loopback() && !args.metrics_public {
            anyhow::bail!(
                "--metrics-listen {listen} is not a loopback address: the metrics name machine types and repositories; \
                 add --metrics-public to serve them there anyway (on a private network only)"
            );
        }
        crate::metrics::serve(listen, crate::metrics::install()?, limits).await?;
    }
    let store = crate::store::open(&args.store.store).await?;
    let key = store.signing_key_or_insert(&rand::random::<[u8; 32]>()).await?;
    let upstream = args.upstreams.router(&ClientOptions::with_timeout(upstream_timeout))?;

    let public_url = from_shared.http.public_url.clone();
    let admin_api = admin.is_enabled();
    let settings = app::Settings { admin, selection_signer: selection_signer.clone(), ..from_shared };
    let app = app::build(settings, store, Arc::new(upstream), &key)?;

    let listener = crate::listen::bind(args.listen, "--listen").await?;
    let selection_key = selection_signer.as_ref().map(|s| s.fingerprint().to_owned());
    tracing::info!(listen = %args.listen, %public_url, upstreams = %args.upstreams.describe(), store = %args.store.store, admin_api, selection_key_sha256 = selection_key.as_deref(), "metahub serving");
    crate::listen::serve(listener, metahub_http::router(app), limits, "registry", async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    .context("serving")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::collections::HashMap;

    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn serve(flags: &[&str]) -> ServeArgs {
        Serve::try_parse_from([&["serve"], flags].concat()).unwrap().args
    }

    fn lookup(vars: &[(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<&str, &str> = vars.iter().copied().collect();
        move |name| map.get(name).map(|v| v.to_string())
    }

    /// Every shared value as both runtimes may be given it, bare seconds included.
    const SET: [(&str, &str); 9] = [
        ("METAHUB_PUBLIC_URL", "https://hub.example/"),
        ("METAHUB_SERVICE", "hub"),
        ("METAHUB_ANONYMOUS_MACHINE_TYPE", "hsw-m60"),
        ("METAHUB_TAG_TTL", "300"),
        ("METAHUB_INDEX_DIGEST_PULLS", "refuse"),
        ("METAHUB_TOKEN_TTL", "600"),
        ("METAHUB_CACHE_MIB", "64"),
        ("METAHUB_MAX_STALE", "3600"),
        ("METAHUB_UPSTREAM_TIMEOUT", "2"),
    ];

    /// What Lambda needs besides: its table.
    const LAMBDA_ONLY: [(&str, &str); 1] = [("METAHUB_STORE", "dynamodb:metahub")];

    /// The test: one environment, read by `serve` (no flags) and by the Lambda functions, is one set of app
    /// settings, and one bad value is one error.
    #[test]
    fn the_same_environment_is_the_same_settings_to_serve_and_to_the_lambda_functions() {
        let mut environments = vec![
            SET.to_vec(),
            // unset and empty: every default (and a tag window of zero: off)
            vec![("METAHUB_PUBLIC_URL", "https://hub.example")],
            [("METAHUB_PUBLIC_URL", "https://hub.example")]
                .into_iter()
                .chain(settings::VARIABLES.iter().skip(1).map(|v| (*v, "")))
                .collect(),
            vec![("METAHUB_PUBLIC_URL", "https://hub.example"), ("METAHUB_TAG_TTL", "0"), ("METAHUB_MAX_STALE", "0")],
            vec![
                ("METAHUB_PUBLIC_URL", "http://127.0.0.1:5000"),
                ("METAHUB_TAG_TTL", "1m 30s"),
                ("METAHUB_TOKEN_TTL", "1h"),
            ],
        ];
        for environment in environments.drain(..) {
            let (from_serve, serve_timeout) = serve(&[]).app_settings(lookup(&environment)).unwrap();
            let lambda = [environment.as_slice(), &LAMBDA_ONLY].concat();
            let from_lambda = metahub_lambda::Settings::from_lookup(lookup(&lambda)).unwrap();
            let from_lambda_app = from_lambda.app.clone();
            let what = format!("{environment:?}");
            assert_eq!(from_serve.http.public_url, from_lambda_app.http.public_url, "{what}");
            assert_eq!(from_serve.http.service, from_lambda_app.http.service, "{what}");
            assert_eq!(from_serve.http.anonymous_machine_type, from_lambda_app.http.anonymous_machine_type, "{what}");
            assert_eq!(from_serve.token_ttl, from_lambda_app.token_ttl, "{what}");
            assert_eq!(from_serve.cache.tag_ttl, from_lambda_app.cache.tag_ttl, "{what}");
            assert_eq!(from_serve.cache.max_bytes, from_lambda_app.cache.max_bytes, "{what}");
            assert_eq!(from_serve.cache.max_stale, from_lambda_app.cache.max_stale, "{what}");
            assert_eq!(from_serve.cache, from_lambda_app.cache, "{what}");
            assert_eq!(from_serve.index_digest_pulls, from_lambda_app.index_digest_pulls, "{what}");
            // What only a runtime adds differs by design: Lambda's selection host, serve's admin API and signer
            // (both added later, in `run` and at the functions' init).
            assert_eq!(from_serve, app::Settings { selection_host: None, ..from_lambda_app }, "{what}");
            // The upstream timeout is Lambda's to cap at its time budget; below the cap they agree.
            if environment.contains(&("METAHUB_UPSTREAM_TIMEOUT", "2")) {
                assert_eq!(serve_timeout, from_lambda.upstream_timeout);
            }
        }
        let read = serve(&[]).app_settings(lookup(&SET)).unwrap().0;
        assert_eq!(read.http.public_url, "https://hub.example");
        assert_eq!(read.cache.tag_ttl, Some(Duration::from_secs(300)), "METAHUB_TAG_TTL=300 is 300 seconds");
        assert_eq!(read.cache.max_bytes, 64 << 20);
        assert_eq!(read.http.anonymous_machine_type.unwrap(), "hsw-m60");

        for bad in [
            ("METAHUB_PUBLIC_URL", "hub.example"),
            ("METAHUB_ANONYMOUS_MACHINE_TYPE", "hsw m60"),
            ("METAHUB_TAG_TTL", "soon"),
            ("METAHUB_INDEX_DIGEST_PULLS", "sometimes"),
            ("METAHUB_TOKEN_TTL", "2h"),
            ("METAHUB_CACHE_MIB", "16MiB"),
            ("METAHUB_MAX_STALE", "-1"),
            ("METAHUB_UPSTREAM_TIMEOUT", "fast"),
        ] {
            let environment = [SET.iter().copied().filter(|(v, _)| *v != bad.0).collect(), vec![bad]].concat();
            let from_serve = serve(&[]).app_settings(lookup(&environment)).unwrap_err();
            let lambda = [environment.as_slice(), &LAMBDA_ONLY].concat();
            let from_lambda = metahub_lambda::Settings::from_lookup(lookup(&lambda)).unwrap_err();
            let (from_serve, from_lambda) = (format!("{from_serve:#}"), format!("{from_lambda:#}"));
            assert_eq!(from_serve, from_lambda);
            assert!(from_serve.starts_with(&format!("{}={:?}: ", bad.0, bad.1)), "{from_serve}");
            assert!(!from_serve.contains('\n'), "{from_serve}");
        }
    }

    /// METAHUB_UPSTREAM is read by clap for `serve` (its `explain` and `index` share the flag) and by hand in
    /// Lambda: one text is one list to both (clap hands the variable's text over as it hands a flag's).
    #[test]
    fn the_same_upstream_list_is_the_same_upstreams_to_serve_and_to_the_lambda_functions() {
        for list in [
            "http://127.0.0.1:5000",
            "http://127.0.0.1:5000, ghcr.io=https://ghcr.io",
            "http://127.0.0.1:5000 q=http://127.0.0.1:5001\nghcr.io=https://ghcr.io",
            "",
        ] {
            let from_serve = serve(&["--upstream", list]).upstreams.configs().unwrap();
            let lambda = metahub_lambda::Settings::from_lookup(lookup(&[
                ("METAHUB_STORE", "dynamodb:t"),
                ("METAHUB_PUBLIC_URL", "https://hub.example"),
                ("METAHUB_UPSTREAM", list),
            ]))
            .unwrap();
            let from_lambda = metahub_lambda::upstream_configs(&lambda.upstream).unwrap();
            assert_eq!(from_serve, from_lambda, "{list:?}");
        }
        assert!(serve(&["--upstream", " , "]).upstreams.configs().is_err(), "a list of separators names nothing");
        assert!(metahub_lambda::upstream_configs(" , ").is_err());
    }

    #[test]
    fn a_flag_wins_over_its_variable_and_a_bad_one_is_named_as_written() {
        let environment = lookup(&[("METAHUB_TAG_TTL", "soon"), ("METAHUB_MAX_STALE", "5m")]);
        let args = serve(&["--tag-ttl", "300", "--max-stale", "0"]);
        let (read, _) = args.app_settings(environment).unwrap();
        assert_eq!(read.cache.tag_ttl, Some(Duration::from_secs(300)));
        assert_eq!(read.cache.max_stale, Duration::ZERO);
        let (read, _) = serve(&["--listen", "127.0.0.1:6000"]).app_settings(lookup(&[])).unwrap();
        assert_eq!(read.http.public_url, "http://127.0.0.1:6000", "serve's own default");

        let e = serve(&["--anonymous-machine-type", "hsw m60"]).app_settings(lookup(&[])).unwrap_err().to_string();
        assert!(e.starts_with("--anonymous-machine-type \"hsw m60\": machine type name"), "{e}");
        let e = serve(&["--cache-mib", "lots"]).app_settings(lookup(&[])).unwrap_err().to_string();
        assert!(e.starts_with("--cache-mib \"lots\": "), "{e}");
    }

    #[test]
    fn help_names_each_shared_variable_and_its_default() {
        use clap::CommandFactory;
        let help = Serve::command().render_long_help().to_string();
        for variable in settings::VARIABLES {
            let (flag, _) = serve(&[]).shared.flag(variable).expect("a flag for every shared variable");
            assert!(help.contains(&format!("{flag} <")), "{flag}");
            assert!(help.contains(&format!("[env: {variable}]")), "{variable}: {help}");
        }
        for default in ["[default: 1s]", "[default: 5m]", "[default: 16]", "[default: 30s]", "[default: metahub]"] {
            assert!(help.contains(default), "{default}: {help}");
        }
    }
}
