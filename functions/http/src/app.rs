//! The one app builder. `metahub serve` and the Lambda functions each read the settings they share with
//! `metahub_core::settings::SharedSettings::read` (serve: flags, else the environment; Lambda: the environment),
//! turn them into [`Settings`] here ([`Settings::from`]), add their own (admin authentication, origin secret,
//! selection signing) and call [`build`]. The defaults are stated in `metahub_core::settings` and
//! `metahub_core::cache`, once.

use crate::state::App;
use crate::{AdminAuth, HttpConfig};
use metahub_core::cache::CacheOptions;
use metahub_core::cosign::SelectionSigner;
use metahub_core::ports::{Store, Upstream};
use metahub_core::service::{IndexDigestPulls, RegistryService, SelectionSigning};
use metahub_core::settings::{DEFAULT_SERVICE, DEFAULT_TOKEN_TTL, SharedSettings};
use metahub_core::token::TokenKeys;
use std::sync::Arc;
use std::time::Duration;

/// Everything the app is built from, besides its ports and its signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Where the router runs: public URL, `service`, anonymous machine type, origin secret.
    pub http: HttpConfig,
    pub token_ttl: Duration,
    pub cache: CacheOptions,
    pub index_digest_pulls: IndexDigestPulls,
    /// How `/admin/*` authenticates.
    pub admin: AdminAuth,
    /// Sign each filtered index with this key (`--selection-signing-key`); off when `None`.
    pub selection_signer: Option<Arc<SelectionSigner>>,
    /// The registry host those signatures name; by default the public URL's `host[:port]`.
    pub selection_host: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            http: HttpConfig::default(),
            token_ttl: DEFAULT_TOKEN_TTL,
            cache: CacheOptions::default(),
            index_digest_pulls: IndexDigestPulls::default(),
            admin: AdminAuth::Disabled,
            selection_signer: None,
            selection_host: None,
        }
    }
}

/// The shared settings as the app takes them: a public URL left unset is empty (the runtime fills in its own
/// default first if it has one); no origin secret, admin API or selection signing.
impl From<SharedSettings> for Settings {
    fn from(shared: SharedSettings) -> Self {
        Settings {
            http: HttpConfig {
                public_url: shared.public_url.unwrap_or_default(),
                service: shared.service,
                anonymous_machine_type: shared.anonymous_machine_type,
                origin_secret: None,
            },
            token_ttl: shared.token_ttl,
            cache: shared.cache,
            index_digest_pulls: shared.index_digest_pulls,
            ..Settings::default()
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            public_url: String::new(),
            service: DEFAULT_SERVICE.to_owned(),
            anonymous_machine_type: None,
            origin_secret: None,
        }
    }
}

/// The app over `store` and `upstream`, its tokens signed with `signing_key`; fails only on a bad token setting
/// (key too short, lifetime out of range).
pub fn build(
    settings: Settings,
    store: Arc<dyn Store>,
    upstream: Arc<dyn Upstream>,
    signing_key: &[u8],
) -> metahub_core::Result<Arc<App>> {
    let keys = TokenKeys::new(signing_key, &settings.http.service, settings.token_ttl.as_secs())?;
    selection_signing(&settings)?; // a bad host is an error here, before anything is built
    Ok(build_with_keys(settings, store, upstream, keys))
}

/// [`build`] with token keys made by the caller (versioned keys that rotate, in Lambda).
pub fn build_with_keys(
    settings: Settings,
    store: Arc<dyn Store>,
    upstream: Arc<dyn Upstream>,
    keys: TokenKeys,
) -> Arc<App> {
    let signing = selection_signing(&settings);
    let mut registry =
        RegistryService::new(store, upstream, settings.cache).with_index_digest_pulls(settings.index_digest_pulls);
    match signing {
        Ok(Some(signing)) => registry = registry.with_selection_signing(signing),
        Ok(None) => {}
        // callers check first (`build`, the Lambda init): not reached with their settings
        Err(e) => tracing::error!(error = %e.message, "selection signing is off"),
    }
    let http = HttpConfig { public_url: settings.http.public_url.trim_end_matches('/').to_owned(), ..settings.http };
    App::with_admin(registry, keys, http, settings.admin)
}

/// What selection signatures are made with, when a key is set: the key, and the host they name (the image as pulled
/// through MetaHub: `<host[:port]>/<repository>`), `selection_host` or else the public URL's.
pub fn selection_signing(settings: &Settings) -> metahub_core::Result<Option<SelectionSigning>> {
    let Some(signer) = settings.selection_signer.clone() else { return Ok(None) };
    let registry_host = match &settings.selection_host {
        Some(host) => host.clone(),
        None => registry_host(&settings.http.public_url)?,
    };
    Ok(Some(SelectionSigning { signer, registry_host }))
}

/// The `host[:port]` of the public URL, as clients write it in image names.
fn registry_host(public_url: &str) -> metahub_core::Result<String> {
    let bad = || {
        metahub_core::Error::new(
            metahub_core::ErrorCode::Unsupported,
            format!("signing selections needs a public URL with a host, not {public_url:?}"),
        )
    };
    let url = url::Url::parse(public_url).map_err(|_| bad())?;
    let host = url.host_str().ok_or_else(bad)?;
    Ok(match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    })
}
