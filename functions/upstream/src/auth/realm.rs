//! The token realm allow-list. A realm comes from the upstream's `WWW-Authenticate` answer and receives the configured
//! credentials, so it is followed only when it is the upstream's own origin (scheme, host AND port: another port of
//! the same host is another service) or an explicitly configured realm (Docker Hub's `auth.docker.io` for Docker Hub).
//! One exception keeps the same service: an upstream configured as `http://host` may send its realm on
//! `https://host`, the same host upgraded to TLS. Never a downgrade from https, never userinfo, never another scheme.

use reqwest::Url;

/// Why a realm was refused. The caller words the message: it names no host (client-facing messages never do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RealmRefusal {
    Invalid,
    /// Not http or https, or http where the upstream is https.
    Scheme(String),
    /// Neither the upstream's origin nor a configured realm.
    Elsewhere,
    Userinfo,
}

/// Which token realms an upstream may send us to.
#[derive(Debug, Clone)]
pub struct RealmPolicy {
    upstream: Url,
    configured: Vec<Url>,
}

impl RealmPolicy {
    /// The realms of `upstream` itself, plus `configured` ones (compared by origin: scheme, host and port).
    pub fn new(upstream: Url, configured: Vec<Url>) -> Self {
        RealmPolicy { upstream, configured }
    }

    /// The realm as a URL, if it may be followed.
    pub fn check(&self, realm: &str) -> Result<Url, RealmRefusal> {
        let url = Url::parse(realm.trim()).map_err(|_| RealmRefusal::Invalid)?;
        let downgrade = self.upstream.scheme() == "https" && url.scheme() != "https";
        if !matches!(url.scheme(), "http" | "https") || downgrade {
            return Err(RealmRefusal::Scheme(url.scheme().to_owned()));
        }
        let origin = url.origin();
        let own = origin == self.upstream.origin() || self.is_upgrade(&url);
        if !own && !self.configured.iter().any(|c| c.origin() == origin) {
            return Err(RealmRefusal::Elsewhere);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(RealmRefusal::Userinfo);
        }
        Ok(url)
    }

    /// `http://host` (port 80) → `https://host` (port 443): the same host, upgraded to TLS.
    fn is_upgrade(&self, url: &Url) -> bool {
        self.upstream.scheme() == "http"
            && self.upstream.port().is_none()
            && url.scheme() == "https"
            && url.port().is_none()
            && url.host() == self.upstream.host()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(upstream: &str, configured: &[&str]) -> RealmPolicy {
        RealmPolicy::new(Url::parse(upstream).unwrap(), configured.iter().map(|c| Url::parse(c).unwrap()).collect())
    }

    #[test]
    fn own_origin_only_host_port_and_scheme() {
        let p = policy("http://127.0.0.1:5001", &[]);
        assert!(p.check("http://127.0.0.1:5001/token").is_ok());
        assert!(p.check("http://127.0.0.1:5001/v2/auth?x=1").is_ok(), "any path of the origin");
        for (realm, why) in [
            ("http://127.0.0.1:9999/token", RealmRefusal::Elsewhere),
            ("http://127.0.0.1/token", RealmRefusal::Elsewhere),
            ("https://127.0.0.1:5001/token", RealmRefusal::Elsewhere),
            ("http://localhost:5001/token", RealmRefusal::Elsewhere),
            ("http://169.254.169.254/latest", RealmRefusal::Elsewhere),
            ("http://auth.docker.io/token", RealmRefusal::Elsewhere),
            ("file:///etc/passwd", RealmRefusal::Scheme("file".into())),
            ("ftp://127.0.0.1:5001/token", RealmRefusal::Scheme("ftp".into())),
            ("http://u:p@127.0.0.1:5001/token", RealmRefusal::Userinfo),
            ("nonsense", RealmRefusal::Invalid),
            ("", RealmRefusal::Invalid),
        ] {
            assert_eq!(p.check(realm), Err(why), "{realm}");
        }
        // hosts compare case-insensitively, default ports spelled out or not
        let p = policy("https://Registry.Example", &[]);
        assert!(p.check("https://registry.example:443/token").is_ok());
        assert_eq!(p.check("http://registry.example/token"), Err(RealmRefusal::Scheme("http".into())), "downgrade");
        assert_eq!(p.check("https://registry.example:8443/token"), Err(RealmRefusal::Elsewhere));
        assert_eq!(p.check("https://registry.example.evil/token"), Err(RealmRefusal::Elsewhere));
    }

    #[test]
    fn upgrade_to_tls_on_default_ports_only() {
        let plain = policy("http://registry.example", &[]);
        assert!(plain.check("https://registry.example/token").is_ok());
        assert_eq!(plain.check("https://registry.example:8443/token"), Err(RealmRefusal::Elsewhere));
        assert_eq!(plain.check("http://registry.example:8080/token"), Err(RealmRefusal::Elsewhere));
        assert_eq!(policy("http://h:5000", &[]).check("https://h/token"), Err(RealmRefusal::Elsewhere));
    }

    #[test]
    fn configured_realms_by_origin() {
        let hub = policy("https://registry-1.docker.io", &["https://auth.docker.io"]);
        assert!(hub.check("https://auth.docker.io/token").is_ok());
        assert!(hub.check("https://registry-1.docker.io:443/token").is_ok());
        assert_eq!(hub.check("https://auth.docker.io:8443/token"), Err(RealmRefusal::Elsewhere));
        assert_eq!(hub.check("http://auth.docker.io/token"), Err(RealmRefusal::Scheme("http".into())));
        assert_eq!(hub.check("https://u:p@auth.docker.io/token"), Err(RealmRefusal::Userinfo));
        assert_eq!(hub.check("https://evil.docker.io/token"), Err(RealmRefusal::Elsewhere));
        let gitlab = policy("https://registry.gitlab.example", &["https://gitlab.example/jwt/auth"]);
        assert!(gitlab.check("https://gitlab.example/jwt/auth").is_ok());
        assert_eq!(gitlab.check("https://gitlab.example:444/jwt/auth"), Err(RealmRefusal::Elsewhere));
    }
}
