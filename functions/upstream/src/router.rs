//! Routing of repository names to configured upstreams by the longest matching prefix. A name no route claims is
//! refused: names are never turned into hosts.

use crate::client::RegistryClient;
use crate::config::{ClientOptions, UpstreamConfig};
use async_trait::async_trait;
use metahub_core::ports::{BlobLocation, Manifest, ManifestHead, Upstream};
use metahub_core::reference::{Digest, Reference, RepositoryName};
use metahub_core::{Error, ErrorCode, Result};
use std::fmt;
use std::sync::Arc;

struct Route {
    prefix: String,
    upstream: Arc<dyn Upstream>,
}

/// Several upstreams behind one [`Upstream`]: `prefix/rest` goes to that prefix's upstream as `rest`; the `""` prefix,
/// when configured, takes every name no longer prefix claims.
pub struct UpstreamRouter {
    /// Longest prefix first.
    routes: Vec<Route>,
}

impl fmt::Debug for UpstreamRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamRouter").field("prefixes", &self.prefixes().collect::<Vec<_>>()).finish()
    }
}

impl UpstreamRouter {
    /// A [`RegistryClient`] per configuration.
    pub fn new(configs: &[UpstreamConfig], options: &ClientOptions) -> Result<Self> {
        let routes = configs
            .iter()
            .map(|c| Ok((c.prefix.clone(), Arc::new(RegistryClient::new(c, options)?) as Arc<dyn Upstream>)))
            .collect::<Result<Vec<_>>>()?;
        Self::from_upstreams(routes)
    }

    /// Any upstreams (spies in tests, decorators) under their prefixes.
    pub fn from_upstreams(routes: impl IntoIterator<Item = (String, Arc<dyn Upstream>)>) -> Result<Self> {
        let mut out: Vec<Route> = Vec::new();
        for (prefix, upstream) in routes {
            if !prefix.is_empty() {
                prefix
                    .parse::<RepositoryName>()
                    .map_err(|e| Error::internal(format!("invalid upstream prefix {prefix:?}: {}", e.message)))?;
            }
            if out.iter().any(|r| r.prefix == prefix) {
                return Err(Error::internal(format!("upstream prefix {prefix:?} is configured twice")));
            }
            out.push(Route { prefix, upstream });
        }
        out.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Ok(UpstreamRouter { routes: out })
    }

    /// The configured prefixes, longest first (`""` is the default route).
    pub fn prefixes(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|r| r.prefix.as_str())
    }

    /// The upstream for `name` and the name as that upstream knows it.
    pub fn route(&self, name: &RepositoryName) -> Result<(&dyn Upstream, RepositoryName)> {
        for r in &self.routes {
            if r.prefix.is_empty() {
                return Ok((r.upstream.as_ref(), name.clone()));
            }
            if let Some(rest) = name.strip_prefix(&r.prefix) {
                return Ok((r.upstream.as_ref(), rest));
            }
        }
        Err(Error::new(ErrorCode::NameUnknown, format!("no upstream is configured for repository {name}")))
    }
}

#[async_trait]
impl Upstream for UpstreamRouter {
    async fn head_manifest(
        &self,
        repository: &RepositoryName,
        reference: &Reference,
        accept: &[String],
    ) -> Result<ManifestHead> {
        let (upstream, name) = self.route(repository)?;
        upstream.head_manifest(&name, reference, accept).await
    }

    async fn get_manifest(
        &self,
        repository: &RepositoryName,
        reference: &Reference,
        accept: &[String],
    ) -> Result<Manifest> {
        let (upstream, name) = self.route(repository)?;
        upstream.get_manifest(&name, reference, accept).await
    }

    async fn blob_location(&self, repository: &RepositoryName, digest: &Digest) -> Result<BlobLocation> {
        let (upstream, name) = self.route(repository)?;
        upstream.blob_location(&name, digest).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records the names it is asked for.
    #[derive(Default)]
    struct Spy {
        id: &'static str,
        seen: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl Upstream for Spy {
        async fn head_manifest(&self, r: &RepositoryName, _: &Reference, _: &[String]) -> Result<ManifestHead> {
            self.seen.lock().unwrap().push(r.to_string());
            Err(Error::manifest_unknown(self.id))
        }
        async fn get_manifest(&self, r: &RepositoryName, _: &Reference, _: &[String]) -> Result<Manifest> {
            self.seen.lock().unwrap().push(r.to_string());
            Err(Error::manifest_unknown(self.id))
        }
        async fn blob_location(&self, r: &RepositoryName, _: &Digest) -> Result<BlobLocation> {
            self.seen.lock().unwrap().push(r.to_string());
            Ok(BlobLocation { url: self.id.into() })
        }
    }

    fn spy(id: &'static str) -> Arc<Spy> {
        Arc::new(Spy { id, ..Default::default() })
    }

    #[tokio::test]
    async fn longest_prefix_wins_and_default_takes_the_rest() {
        let (def, ghcr, deep) = (spy("default"), spy("ghcr"), spy("deep"));
        let router = UpstreamRouter::from_upstreams([
            ("".to_owned(), def.clone() as Arc<dyn Upstream>),
            ("ghcr".to_owned(), ghcr.clone() as Arc<dyn Upstream>),
            ("ghcr/org".to_owned(), deep.clone() as Arc<dyn Upstream>),
        ])
        .unwrap();
        let d: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        let loc = |n: &str| {
            let n: RepositoryName = n.parse().unwrap();
            let (r, d) = (&router, d.clone());
            async move { r.blob_location(&n, &d).await.unwrap().url }
        };
        assert_eq!(loc("ghcr/org/img").await, "deep");
        assert_eq!(loc("ghcr/other/img").await, "ghcr");
        assert_eq!(loc("ghcrx/img").await, "default");
        assert_eq!(loc("ghcr").await, "default");
        assert_eq!(loc("library/ubuntu").await, "default");
        assert_eq!(*deep.seen.lock().unwrap(), ["img"]);
        assert_eq!(*ghcr.seen.lock().unwrap(), ["other/img"]);
        assert_eq!(*def.seen.lock().unwrap(), ["ghcrx/img", "ghcr", "library/ubuntu"]);
    }

    #[tokio::test]
    async fn unrouted_names_are_name_unknown() {
        let router = UpstreamRouter::from_upstreams([("hub".to_owned(), spy("hub") as Arc<dyn Upstream>)]).unwrap();
        let n: RepositoryName = "evil.example/x".parse().unwrap();
        let r: Reference = "latest".parse().unwrap();
        let e = router.get_manifest(&n, &r, &[]).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::NameUnknown);
    }

    #[test]
    fn bad_configurations_are_refused() {
        assert!(UpstreamRouter::from_upstreams([("Bad/".to_owned(), spy("x") as Arc<dyn Upstream>)]).is_err());
        assert!(
            UpstreamRouter::from_upstreams([
                ("a".to_owned(), spy("x") as Arc<dyn Upstream>),
                ("a".to_owned(), spy("y") as Arc<dyn Upstream>),
            ])
            .is_err()
        );
        let cfgs = [UpstreamConfig::from_url("http://127.0.0.1:1").unwrap().with_prefix("p")];
        let r = UpstreamRouter::new(&cfgs, &ClientOptions::default()).unwrap();
        assert_eq!(r.prefixes().collect::<Vec<_>>(), ["p"]);
    }
}
