//! Routing of repository names to configured upstreams by the longest matching prefix. A name no route claims is
//! refused: names are never turned into hosts.

use crate::client::RegistryClient;
use crate::config::{ClientOptions, UpstreamConfig};
use async_trait::async_trait;
use bytes::Bytes;
use metahub_core::ports::{BlobLocation, Manifest, ManifestHead, Referrers, TagPage, Upstream};
use metahub_core::reference::{Digest, Reference, RepositoryName};
use metahub_core::{Error, ErrorCode, Result};
use std::fmt;
use std::sync::Arc;

struct Route {
    prefix: String,
    /// The registry hosts this route's upstream answers for (`?ns=` values), lowercase.
    hosts: Vec<String>,
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
            .map(|c| Ok((c.prefix.clone(), c.hosts(), Arc::new(RegistryClient::new(c, options)?) as Arc<dyn Upstream>)))
            .collect::<Result<Vec<_>>>()?;
        Self::build(routes)
    }

    /// Any upstreams (spies in tests, decorators) under their prefixes.
    pub fn from_upstreams(routes: impl IntoIterator<Item = (String, Arc<dyn Upstream>)>) -> Result<Self> {
        Self::build(routes.into_iter().map(|(prefix, upstream)| (prefix, Vec::new(), upstream)))
    }

    /// Upstreams under their prefixes, each with the registry hosts `?ns=` may name it by.
    pub fn with_hosts(routes: impl IntoIterator<Item = (String, Vec<String>, Arc<dyn Upstream>)>) -> Result<Self> {
        Self::build(routes)
    }

    fn build(routes: impl IntoIterator<Item = (String, Vec<String>, Arc<dyn Upstream>)>) -> Result<Self> {
        let mut out: Vec<Route> = Vec::new();
        for (prefix, hosts, upstream) in routes {
            if !prefix.is_empty() {
                prefix
                    .parse::<RepositoryName>()
                    .map_err(|e| Error::internal(format!("invalid upstream prefix {prefix:?}: {}", e.message)))?;
            }
            if out.iter().any(|r| r.prefix == prefix) {
                return Err(Error::internal(format!("upstream prefix {prefix:?} is configured twice")));
            }
            let hosts = hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect();
            out.push(Route { prefix, hosts, upstream });
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

    /// The route `?ns=<host>` names: the one whose PREFIX is `host`, else the one whose upstream is on `host`.
    fn route_for_namespace(&self, host: &str) -> Option<&Route> {
        let host = host.to_ascii_lowercase();
        self.routes
            .iter()
            .find(|r| !r.prefix.is_empty() && r.prefix == host)
            .or_else(|| self.routes.iter().find(|r| r.hosts.contains(&host)))
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

    async fn small_blob(&self, repository: &RepositoryName, digest: &Digest, max_bytes: usize) -> Result<Bytes> {
        let (upstream, name) = self.route(repository)?;
        upstream.small_blob(&name, digest, max_bytes).await
    }

    async fn tags(&self, repository: &RepositoryName, n: Option<usize>, last: Option<&str>) -> Result<TagPage> {
        let (upstream, name) = self.route(repository)?;
        upstream.tags(&name, n, last).await
    }

    async fn referrers(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Option<Referrers>> {
        let (upstream, name) = self.route(repository)?;
        upstream.referrers(&name, digest, artifact_type).await
    }

    fn name_in_namespace(&self, host: &str, name: &RepositoryName) -> Result<RepositoryName> {
        // Names the prefixes (what clients may use), never the upstreams' URLs (they may be internal hosts).
        let refuse = || {
            let prefixes: Vec<&str> = self.prefixes().filter(|p| !p.is_empty()).collect();
            Error::denied(format!("MetaHub mirrors no registry {host:?} (ns); configured prefixes: {prefixes:?}"))
                .with_detail(serde_json::json!({"ns": host}))
        };
        let route = self.route_for_namespace(host).ok_or_else(refuse)?;
        let routed = if route.prefix.is_empty() { name.clone() } else { name.with_prefix(&route.prefix) };
        // A default-route name that a longer prefix claims (`ghcr.io/x` with ns=docker.io) would reach another
        // upstream than the one `ns` named.
        match self.routes.iter().find(|r| r.prefix.is_empty() || routed.strip_prefix(&r.prefix).is_some()) {
            Some(r) if std::ptr::eq(r, route) => Ok(routed),
            _ => Err(refuse()),
        }
    }

    fn canonical_name(&self, name: &RepositoryName) -> RepositoryName {
        let Some(r) = self.routes.iter().find(|r| r.prefix.is_empty() || name.strip_prefix(&r.prefix).is_some()) else {
            return name.clone();
        };
        match name.strip_prefix(&r.prefix) {
            Some(rest) if !r.prefix.is_empty() => r.upstream.canonical_name(&rest).with_prefix(&r.prefix),
            _ => r.upstream.canonical_name(name),
        }
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
    fn namespaces_pick_prefix_or_host_and_refuse_the_rest() {
        let router = UpstreamRouter::with_hosts([
            ("".to_owned(), vec!["docker.io".to_owned()], spy("hub") as Arc<dyn Upstream>),
            ("ghcr.io".to_owned(), vec!["ghcr.io".to_owned()], spy("ghcr") as Arc<dyn Upstream>),
            ("q".to_owned(), vec!["quay.io".to_owned()], spy("quay") as Arc<dyn Upstream>),
        ])
        .unwrap();
        let n: RepositoryName = "org/app".parse().unwrap();
        let ns = |h: &str| router.name_in_namespace(h, &n).map(|r| r.to_string());
        assert_eq!(ns("docker.io").unwrap(), "org/app");
        assert_eq!(ns("GHCR.io").unwrap(), "ghcr.io/org/app");
        assert_eq!(ns("quay.io").unwrap(), "q/org/app");
        assert_eq!(ns("q").unwrap(), "q/org/app");
        for foreign in ["evil.example", "169.254.169.254", "", "docker.io/../x"] {
            assert_eq!(ns(foreign).unwrap_err().code, ErrorCode::Denied, "{foreign}");
        }
        let claimed: RepositoryName = "ghcr.io/x".parse().unwrap();
        assert!(router.name_in_namespace("docker.io", &claimed).is_err());
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

    #[test]
    fn canonical_names_follow_the_routed_upstream() {
        let configs = [
            UpstreamConfig::parse_spec("https://registry-1.docker.io").unwrap(),
            UpstreamConfig::parse_spec("hub=https://registry-1.docker.io").unwrap(),
            UpstreamConfig::parse_spec("ghcr.io=https://ghcr.io").unwrap(),
        ];
        let router = UpstreamRouter::new(&configs, &ClientOptions::default()).unwrap();
        for (name, canonical) in [
            ("nginx", "library/nginx"),
            ("library/nginx", "library/nginx"),
            ("nginx/app", "nginx/app"),
            ("hub/nginx", "hub/library/nginx"),
            ("hub/org/app", "hub/org/app"),
            ("ghcr.io/org", "ghcr.io/org"),
            ("ghcr.io/org/app", "ghcr.io/org/app"),
        ] {
            assert_eq!(router.canonical_name(&name.parse().unwrap()).as_str(), canonical, "{name}");
        }
        let plain = UpstreamRouter::new(
            &[UpstreamConfig::parse_spec("http://127.0.0.1:5000").unwrap()],
            &ClientOptions::default(),
        )
        .unwrap();
        assert_eq!(plain.canonical_name(&"nginx".parse().unwrap()).as_str(), "nginx", "other registries: as written");
    }
}
