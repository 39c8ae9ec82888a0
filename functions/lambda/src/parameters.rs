//! The secrets a function reads from SSM Parameter Store at init, in as few round trips as SSM allows: one
//! `GetParameters` for every configured name (signing key, origin secret, upstream credentials), plus — only when
//! the origin secret's version is not pinned and is past 1, or the signing key was rotated less than one activation
//! and token lifetime ago — one more for the versions before them. Each round trip on a cold instance is a
//! connection (and in AWS a TLS handshake) that init waits for. The signing key is re-read every
//! `METAHUB_SIGNING_KEY_REFRESH` ([`read_signing_keys`], see `metahub_core::token::TokenKeys` for the rotation).
//!
//! What is asked and how the answers are read is plain data ([`Request`], [`Answer`]), tested without AWS.

use anyhow::{Context, anyhow, bail};
use metahub_core::token::{KeyVersion, previous_key_needed};
use metahub_http::OriginSecrets;

use metahub_core::cosign::SelectionSigner;
use metahub_upstream::UpstreamCredentials;
use std::sync::Arc;

use crate::{Settings, decode_signing_key, one_line, parse_upstream_credentials};

const SIGNING_KEY: &str = "METAHUB_SIGNING_KEY_PARAM";
const ORIGIN_SECRET: &str = "METAHUB_ORIGIN_SECRET_PARAM";
const UPSTREAM_CREDENTIALS: &str = "METAHUB_UPSTREAM_CREDENTIALS_PARAM";
const SELECTION_SIGNING_KEY: &str = "METAHUB_SELECTION_SIGNING_KEY_PARAM";

/// The values read from SSM, decoded; `None` (or no credentials) where no parameter is configured.
#[derive(Default)]
pub struct Secrets {
    pub signing_key: Option<SigningKeys>,
    pub origin_secrets: Option<OriginSecrets>,
    pub upstream_credentials: UpstreamCredentials,
    /// The registry function's key for signing filtered indexes (PEM PKCS#8 ECDSA P-256).
    pub selection_signer: Option<Arc<SelectionSigner>>,
}

/// The signing key versions in use: the latest, and the one before it while it may still sign or verify.
#[derive(Debug)]
pub struct SigningKeys {
    pub current: KeyVersion,
    pub previous: Option<KeyVersion>,
}

/// One parameter SSM answered: its name (without selector), version, value and when that version was written
/// (seconds since the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub name: String,
    pub version: u64,
    pub value: String,
    pub modified: u64,
}

/// The names of one `GetParameters` call: plain names, or `name:version` selectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub names: Vec<String>,
}

/// The first (and usually only) call: every configured parameter; with a pinned origin secret version, that version
/// and the one before it.
pub fn first_request(settings: &Settings) -> Request {
    let mut names = Vec::new();
    names.extend(settings.signing_key_param.clone());
    if let Some(name) = &settings.origin_secret_param {
        match settings.origin_secret_version {
            Some(version) => {
                names.push(format!("{name}:{version}"));
                names.extend(previous(version).map(|v| format!("{name}:{v}")));
            }
            None => names.push(name.clone()),
        }
    }
    names.extend(settings.upstream_credentials_param.clone());
    names.extend(settings.selection_signing_key_param.clone());
    names.dedup();
    Request { names }
}

/// The version before `version`, if there is one (version 1 has no predecessor).
fn previous(version: u64) -> Option<u64> {
    version.checked_sub(1).filter(|v| *v > 0)
}

/// The answer for a plain name (the latest version) or, with `version`, for that version.
fn find<'a>(answers: &'a [Answer], name: &str, version: Option<u64>) -> Option<&'a Answer> {
    answers.iter().find(|a| a.name == name && version.is_none_or(|v| a.version == v))
}

fn required<'a>(answers: &'a [Answer], variable: &str, name: &str, version: Option<u64>) -> anyhow::Result<&'a Answer> {
    find(answers, name, version).with_context(|| {
        let selector = version.map_or_else(|| name.to_owned(), |v| format!("{name}:{v}"));
        format!("reading SSM parameter {selector:?} ({variable}): ParameterNotFound (or no permission to read it)")
    })
}

/// Reads the answers of [`first_request`]: every configured parameter must be there. Returns the secrets and the
/// selectors still to read: the origin secret's previous version when it was read at its latest version, and the
/// signing key's previous version while it may still be in use (`now`, seconds since the epoch).
pub fn read_first(settings: &Settings, answers: &[Answer], now: u64) -> anyhow::Result<(Secrets, Vec<String>)> {
    let mut next = Vec::new();
    let signing_key = settings
        .signing_key_param
        .as_deref()
        .map(|name| {
            let (keys, previous) = current_signing_key(settings, name, answers, now)?;
            next.extend(previous);
            anyhow::Ok(keys)
        })
        .transpose()?;
    let upstream_credentials = settings
        .upstream_credentials_param
        .as_deref()
        .map(|name| {
            parse_upstream_credentials(&required(answers, UPSTREAM_CREDENTIALS, name, None)?.value)
                .with_context(|| format!("SSM parameter {name:?} ({UPSTREAM_CREDENTIALS})"))
        })
        .transpose()?
        .unwrap_or_default();
    let selection_signer = settings
        .selection_signing_key_param
        .as_deref()
        .map(|name| {
            // the error names the parameter and what is wrong, never the value
            let pem = &required(answers, SELECTION_SIGNING_KEY, name, None)?.value;
            SelectionSigner::from_pkcs8_pem(pem)
                .map(Arc::new)
                .map_err(|e| anyhow!("SSM parameter {name:?} ({SELECTION_SIGNING_KEY}): {}", e.message))
        })
        .transpose()?;
    let origin_secrets = match &settings.origin_secret_param {
        None => None,
        Some(name) => {
            let pinned = settings.origin_secret_version;
            let current = required(answers, ORIGIN_SECRET, name, pinned)?;
            let value = current.value.trim();
            if value.is_empty() {
                bail!("SSM parameter {name:?} ({ORIGIN_SECRET}) is empty");
            }
            let previous_version = previous(current.version);
            if pinned.is_none() {
                next.extend(previous_version.map(|v| format!("{name}:{v}")));
            }
            let mut secrets = OriginSecrets { current: value.into(), previous: None };
            if pinned.is_some() {
                secrets.previous = previous_value(answers, name, previous_version, value).map(Into::into);
            }
            Some(secrets)
        }
    };
    Ok((Secrets { signing_key, origin_secrets, upstream_credentials, selection_signer }, next))
}

/// The latest signing key version among `answers`, and the selector of the one before it if that may still be in
/// use.
fn current_signing_key(
    settings: &Settings,
    name: &str,
    answers: &[Answer],
    now: u64,
) -> anyhow::Result<(SigningKeys, Option<String>)> {
    let answer = required(answers, SIGNING_KEY, name, None)?;
    let key = decode_signing_key(&answer.value).with_context(|| format!("SSM parameter {name:?} ({SIGNING_KEY})"))?;
    let current = KeyVersion { version: answer.version, key, written_at: answer.modified };
    let needed = previous_key_needed(
        current.written_at,
        now,
        settings.signing_key_refresh.as_secs(),
        settings.app.token_ttl.as_secs(),
    );
    let selector = previous(current.version).filter(|_| needed).map(|v| format!("{name}:{v}"));
    Ok((SigningKeys { current, previous: None }, selector))
}

/// The signing key's previous version from the answers of the second call (a missing or unreadable one is no
/// error: tokens it signed are refused and clients log in again).
fn read_previous_signing_key(keys: &mut SigningKeys, name: &str, answers: &[Answer]) {
    let Some(version) = previous(keys.current.version) else {
        return;
    };
    let Some(answer) = find(answers, name, Some(version)) else {
        return;
    };
    match decode_signing_key(&answer.value) {
        Ok(key) => keys.previous = Some(KeyVersion { version, key, written_at: answer.modified }),
        Err(e) => tracing::warn!(parameter = name, version, error = %e, "the previous signing key is unusable"),
    }
}

/// The previous origin secret and signing key from the answers of the second call: for the origin secret only a
/// readable, non-empty value that differs from the current one (a missing old version is no error — rotation may
/// have deleted it).
pub fn read_previous(secrets: &mut Secrets, settings: &Settings, answers: &[Answer]) {
    if let (Some(name), Some(keys)) = (&settings.signing_key_param, secrets.signing_key.as_mut()) {
        read_previous_signing_key(keys, name, answers);
    }
    let (Some(name), Some(origin)) = (&settings.origin_secret_param, secrets.origin_secrets.as_mut()) else {
        return;
    };
    let version = answers.iter().filter(|a| a.name == *name).map(|a| a.version).max();
    origin.previous = previous_value(answers, name, version, origin.current.expose_str()).map(Into::into);
}

fn previous_value(answers: &[Answer], name: &str, version: Option<u64>, current: &str) -> Option<String> {
    let answer = find(answers, name, Some(version?))?;
    Some(answer.value.trim().to_owned()).filter(|value| !value.is_empty() && value != current)
}

/// Reads every configured secret through `ssm` (see the module header for how many calls that is).
pub async fn read(ssm: &aws_sdk_ssm::Client, settings: &Settings) -> anyhow::Result<Secrets> {
    let request = first_request(settings);
    if request.names.is_empty() {
        return Ok(Secrets::default());
    }
    let answers = get_parameters(ssm, &request.names).await?;
    let (mut secrets, next) = read_first(settings, &answers, metahub_core::token::now_seconds())?;
    if !next.is_empty() {
        // Best effort, as the previous values only widen what is accepted during a rotation.
        match get_parameters(ssm, &next).await {
            Ok(answers) => read_previous(&mut secrets, settings, &answers),
            Err(e) => {
                tracing::warn!(error = %e, "could not read the previous secret versions; accepting only the current ones")
            }
        }
    }
    Ok(secrets)
}

/// Re-reads the signing key (one call; two while a rotation is under way), for the periodic refresh.
pub async fn read_signing_keys(ssm: &aws_sdk_ssm::Client, settings: &Settings) -> anyhow::Result<SigningKeys> {
    let name = settings.signing_key_param.as_deref().context("no signing key parameter")?;
    let answers = get_parameters(ssm, &[name.to_owned()]).await?;
    let (mut keys, previous) = current_signing_key(settings, name, &answers, metahub_core::token::now_seconds())?;
    if let Some(selector) = previous {
        read_previous_signing_key(&mut keys, name, &get_parameters(ssm, &[selector]).await?);
    }
    Ok(keys)
}

/// One `GetParameters` call, decrypted. Names SSM does not know come back in `InvalidParameters`, not as an error:
/// they are simply missing from the answers.
async fn get_parameters(ssm: &aws_sdk_ssm::Client, names: &[String]) -> anyhow::Result<Vec<Answer>> {
    let output = ssm
        .get_parameters()
        .set_names(Some(names.to_vec()))
        .with_decryption(true)
        .send()
        .await
        .map_err(|e| anyhow!("{}", one_line(&aws_sdk_ssm::error::DisplayErrorContext(e).to_string())))
        .with_context(|| format!("reading SSM parameters {names:?}"))?;
    Ok(output
        .parameters()
        .iter()
        .filter_map(|p| {
            Some(Answer {
                name: p.name()?.to_owned(),
                version: p.version().max(0) as u64,
                value: p.value()?.to_owned(),
                modified: p.last_modified_date().map_or(0, |d| d.secs().max(0) as u64),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Settings {
        let mut map: HashMap<String, String> = [("METAHUB_STORE", "dynamodb:t"), ("METAHUB_PUBLIC_URL", "https://x")]
            .map(|(k, v)| (k.into(), v.into()))
            .into();
        map.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Settings::from_lookup(|k| map.get(k).cloned()).unwrap()
    }

    fn answer(name: &str, version: u64, value: &str) -> Answer {
        Answer { name: name.into(), version, value: value.into(), modified: 1_000 }
    }

    const NOW: u64 = 1_000_000;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    fn all() -> Settings {
        settings(&[(SIGNING_KEY, "/k"), (ORIGIN_SECRET, "/o"), (UPSTREAM_CREDENTIALS, "/c")])
    }

    #[test]
    fn one_call_for_every_configured_name() {
        assert_eq!(first_request(&all()).names, ["/k", "/o", "/c"]);
        assert!(first_request(&settings(&[])).names.is_empty());
        let pinned = settings(&[(ORIGIN_SECRET, "/o"), ("METAHUB_ORIGIN_SECRET_VERSION", "4")]);
        assert_eq!(first_request(&pinned).names, ["/o:4", "/o:3"], "a pinned version and its predecessor, at once");
        let first = settings(&[(ORIGIN_SECRET, "/o"), ("METAHUB_ORIGIN_SECRET_VERSION", "1")]);
        assert_eq!(first_request(&first).names, ["/o:1"]);
    }

    #[test]
    fn latest_origin_secret_needs_a_second_call_only_past_version_1() {
        let answers = [answer("/k", 1, KEY), answer("/o", 3, " secret-3\n"), answer("/c", 2, "u:p")];
        let (secrets, next) = read_first(&all(), &answers, NOW).unwrap();
        assert_eq!(secrets.signing_key.as_ref().map(|k| k.current.key.as_slice()), Some(KEY.as_bytes()));
        assert!(!format!("{:?}", secrets.upstream_credentials).contains("\"p\""), "credentials are redacted in Debug");
        let origin = secrets.origin_secrets.as_ref().unwrap();
        assert_eq!((origin.current.expose_str(), origin.previous.as_ref().map(|s| s.expose_str())), ("secret-3", None));
        assert_eq!(next, ["/o:2"]);

        let mut secrets = secrets;
        read_previous(&mut secrets, &all(), &[answer("/o", 2, "secret-2")]);
        assert_eq!(secrets.origin_secrets.unwrap().previous.as_ref().map(|s| s.expose_str()), Some("secret-2"));

        let answers = [answer("/k", 1, KEY), answer("/o", 1, "secret-1"), answer("/c", 1, "u:p")];
        assert!(read_first(&all(), &answers, NOW).unwrap().1.is_empty());
    }

    #[test]
    fn pinned_origin_secret_takes_both_versions_from_the_first_call() {
        let s = settings(&[(ORIGIN_SECRET, "/o"), ("METAHUB_ORIGIN_SECRET_VERSION", "4")]);
        let answers = [answer("/o", 3, "old"), answer("/o", 4, "new")];
        let (secrets, next) = read_first(&s, &answers, NOW).unwrap();
        let origin = secrets.origin_secrets.unwrap();
        assert_eq!(
            (origin.current.expose_str(), origin.previous.as_ref().map(|s| s.expose_str()), next),
            ("new", Some("old"), vec![])
        );
        // The older version deleted (InvalidParameters): only the current one is accepted.
        let origin = read_first(&s, &[answer("/o", 4, "new")], NOW).unwrap().0.origin_secrets.unwrap();
        assert_eq!(origin.previous, None);
        // The same value twice is one secret.
        let origin = read_first(&s, &[answer("/o", 4, "same"), answer("/o", 3, "same")], NOW).unwrap().0.origin_secrets;
        assert_eq!(origin.unwrap().previous, None);
    }

    #[test]
    fn the_previous_signing_key_is_read_only_while_it_may_be_in_use() {
        let s = settings(&[(SIGNING_KEY, "/k"), ("METAHUB_SIGNING_KEY_REFRESH", "60")]);
        let rotated = |modified| Answer { name: "/k".into(), version: 3, value: KEY.into(), modified };
        // written 100 s ago: within activation (60 s) + token lifetime (300 s)
        let (mut secrets, next) = read_first(&s, &[rotated(NOW - 100)], NOW).unwrap();
        assert_eq!(next, ["/k:2"]);
        let old = "fedcba9876543210fedcba9876543210";
        read_previous(&mut secrets, &s, &[Answer { name: "/k".into(), version: 2, value: old.into(), modified: 5 }]);
        let keys = secrets.signing_key.unwrap();
        assert_eq!((keys.current.version, keys.current.written_at), (3, NOW - 100));
        assert_eq!(keys.previous.map(|p| (p.version, p.key)), Some((2, old.as_bytes().to_vec())));
        // written long ago: the previous version is never read
        assert!(read_first(&s, &[rotated(NOW - 10_000)], NOW).unwrap().1.is_empty());
        // version 1 has no predecessor
        assert!(read_first(&s, &[answer("/k", 1, KEY)], 1_000).unwrap().1.is_empty());
    }

    #[test]
    fn a_missing_or_bad_parameter_is_one_clear_line() {
        let e =
            format!("{:#}", read_first(&all(), &[answer("/k", 1, KEY), answer("/c", 1, "u:p")], NOW).err().unwrap());
        assert!(e.contains("\"/o\"") && e.contains(ORIGIN_SECRET) && e.contains("ParameterNotFound"), "{e}");
        let pinned = settings(&[(ORIGIN_SECRET, "/o"), ("METAHUB_ORIGIN_SECRET_VERSION", "4")]);
        let e = format!("{:#}", read_first(&pinned, &[answer("/o", 3, "old")], NOW).err().unwrap());
        assert!(e.contains("\"/o:4\""), "{e}");
        let answers = [answer("/k", 1, "short"), answer("/o", 1, "x"), answer("/c", 1, "u:p")];
        let e = format!("{:#}", read_first(&all(), &answers, NOW).err().unwrap());
        assert!(e.contains(SIGNING_KEY) && e.contains("32 bytes"), "{e}");
        let answers = [answer("/k", 1, KEY), answer("/o", 1, "  "), answer("/c", 1, "u:p")];
        assert!(format!("{:#}", read_first(&all(), &answers, NOW).err().unwrap()).contains("is empty"));
        let answers = [answer("/k", 1, KEY), answer("/o", 1, "x"), answer("/c", 1, "nocolon")];
        let e = format!("{:#}", read_first(&all(), &answers, NOW).err().unwrap());
        assert!(e.contains(UPSTREAM_CREDENTIALS) && !e.contains("nocolon"), "no secret in the message: {e}");
    }

    #[test]
    fn the_selection_signing_key_comes_in_the_same_call() {
        const PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgxebCpRwuv92jtGjC
sB4YMIanlDhzGAtnW/zr2W4voh+hRANCAARM+Of2qILiEDXJQsde5/jKdnBx6X5I
h4Gh+LPKtA+nUceNdh9tHxvE9a5Zut+X3DtLiam/83RY6A+w36kwp7zD
-----END PRIVATE KEY-----";
        let s = settings(&[(SIGNING_KEY, "/k"), (SELECTION_SIGNING_KEY, "/sel")]);
        assert_eq!(first_request(&s).names, ["/k", "/sel"]);
        let (secrets, _) = read_first(&s, &[answer("/k", 1, KEY), answer("/sel", 1, PEM)], NOW).unwrap();
        assert!(secrets.selection_signer.is_some());
        let bad = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----";
        let e = format!("{:#}", read_first(&s, &[answer("/k", 1, KEY), answer("/sel", 1, bad)], NOW).err().unwrap());
        assert!(e.contains("\"/sel\"") && e.contains(SELECTION_SIGNING_KEY) && !e.contains("c2VjcmV0"), "{e}");
        assert!(read_first(&settings(&[]), &[], NOW).unwrap().0.selection_signer.is_none());
    }
}
