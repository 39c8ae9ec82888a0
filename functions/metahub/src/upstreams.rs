//! The upstreams of `serve`, `explain` and `index`: `--upstream [PREFIX=]URL`, repeatable, and their credentials,
//! which come from a file or the environment, never from the command line.

use anyhow::Context;
use clap::Args;
use metahub_upstream::{ClientOptions, DEFAULT_UPSTREAM, UpstreamConfig, UpstreamCredentials, UpstreamRouter};
use std::path::PathBuf;

#[derive(Args)]
pub struct UpstreamArgs {
    /// An upstream registry, `[PREFIX=]URL`; repeatable, or several separated by commas or whitespace (so in
    /// METAHUB_UPSTREAM, as the Lambda functions read it). PREFIX is a first name segment, by convention the registry
    /// host: with `ghcr.io=https://ghcr.io`, `ghcr.io/org/app` is pulled as `org/app` from ghcr.io, and `?ns=ghcr.io`
    /// (containerd mirrors) picks it. The entry without PREFIX takes every other name.
    #[arg(long = "upstream", env = "METAHUB_UPSTREAM", default_value = DEFAULT_UPSTREAM)]
    pub upstreams: Vec<String>,
    /// Login to the default upstream; its password comes from METAHUB_UPSTREAM_PASSWORD only.
    #[arg(long, env = "METAHUB_UPSTREAM_USERNAME")]
    upstream_username: Option<String>,
    /// Upstream logins in Docker's config.json shape, keyed by PREFIX or registry host:
    /// `{"auths": {"ghcr.io": {"auth": "<base64 user:token>"}}}`. The same JSON may come in METAHUB_UPSTREAM_CREDENTIALS.
    #[arg(long, env = "METAHUB_UPSTREAM_CREDENTIALS_FILE")]
    upstream_credentials: Option<PathBuf>,
}

impl UpstreamArgs {
    /// The configured upstreams with their credentials.
    pub fn configs(&self) -> anyhow::Result<Vec<UpstreamConfig>> {
        let mut specs: Vec<&str> = self.upstreams.iter().flat_map(|list| UpstreamConfig::list_entries(list)).collect();
        if specs.is_empty() {
            // An empty METAHUB_UPSTREAM is unset, as in the Lambda functions; a list of separators names nothing.
            if !self.upstreams.iter().all(|list| list.trim().is_empty()) {
                anyhow::bail!("--upstream (or METAHUB_UPSTREAM) {:?} names no upstream", self.upstreams.join(","));
            }
            specs.push(DEFAULT_UPSTREAM);
        }
        let mut configs = specs
            .into_iter()
            .map(|spec| UpstreamConfig::parse_spec(spec).with_context(|| format!("--upstream {spec:?}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut credentials = UpstreamCredentials::default();
        if let Some(user) = &self.upstream_username {
            let password = std::env::var("METAHUB_UPSTREAM_PASSWORD")
                .context("--upstream-username needs METAHUB_UPSTREAM_PASSWORD")?;
            credentials = UpstreamCredentials::for_default(user, password);
        }
        if let Some(path) = &self.upstream_credentials {
            let text = metahub_core::files::read_private(path, "--upstream-credentials")?;
            let file = UpstreamCredentials::parse(&text).with_context(|| format!("{}", path.display()))?;
            credentials = credentials.merge(file);
        }
        if let Ok(json) = std::env::var("METAHUB_UPSTREAM_CREDENTIALS")
            && !json.trim().is_empty()
        {
            credentials = credentials.merge(UpstreamCredentials::parse(&json).context("METAHUB_UPSTREAM_CREDENTIALS")?);
        }
        credentials.apply(&mut configs)?;
        Ok(configs)
    }

    /// The router over every configured upstream.
    pub fn router(&self, options: &ClientOptions) -> anyhow::Result<UpstreamRouter> {
        Ok(UpstreamRouter::new(&self.configs()?, options)?)
    }

    /// How logs name the upstreams: `PREFIX=URL`, never credentials.
    pub fn describe(&self) -> String {
        self.upstreams.join(",")
    }
}
