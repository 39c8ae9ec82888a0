//! Repository names, tags and digests, validated as the distribution spec says. A value of these types is safe to
//! put in an upstream URL path: no `..`, no `/` at the ends, no `%`, no host.

use crate::error::{Error, ErrorCode, Result};
use oci_spec::image::{Digest as OciDigest, DigestAlgorithm};
use sha2::{Digest as _, Sha256, Sha384, Sha512};
use std::fmt;
use std::str::FromStr;

const NAME_MAX: usize = 255;

/// A repository name: `component(/component)*`, each `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepositoryName(String);

impl RepositoryName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name with `prefix/` removed, when it starts with that prefix (upstream routing).
    pub fn strip_prefix(&self, prefix: &str) -> Option<RepositoryName> {
        let rest = self.0.strip_prefix(prefix)?.strip_prefix('/')?;
        Some(RepositoryName(rest.to_owned()))
    }

    /// A name with `prefix/` in front (Docker Hub's `library/`).
    pub fn with_prefix(&self, prefix: &str) -> RepositoryName {
        RepositoryName(format!("{prefix}/{}", self.0))
    }

    pub fn segments(&self) -> usize {
        self.0.split('/').count()
    }
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    // Separators: one '.', one or two '_', or any run of '-'; always between alphanumerics.
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

impl FromStr for RepositoryName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.is_empty() || s.len() > NAME_MAX {
            return Err(Error::name_invalid(format!("repository name must be 1 to {NAME_MAX} characters")));
        }
        if !s.split('/').all(valid_component) {
            return Err(Error::name_invalid(format!(
                "invalid repository name {:?}: components are lowercase letters and digits joined by '.', '_', '__' or '-', separated by '/'",
                truncate(s)
            )));
        }
        Ok(RepositoryName(s.to_owned()))
    }
}

impl fmt::Display for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tag(String);

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let b = s.as_bytes();
        let first_ok = b.first().is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_');
        let rest_ok = b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
        if !first_ok || !rest_ok || b.len() > 128 {
            return Err(Error::new(
                ErrorCode::ManifestInvalid,
                format!("invalid tag {:?}: 1 to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'", truncate(s)),
            ));
        }
        Ok(Tag(s.to_owned()))
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A content digest with a registered algorithm (sha256, sha384, sha512) and lowercase hex of the right length.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// The sha256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hex part, after `algorithm:`.
    pub fn hex(&self) -> &str {
        self.0.split_once(':').map_or("", |(_, h)| h)
    }

    /// Whether `bytes` hash to this digest, for every algorithm a `Digest` may name.
    pub fn verifies(&self, bytes: &[u8]) -> bool {
        let computed = match self.0.split_once(':').map(|(algorithm, _)| algorithm) {
            Some("sha256") => hex::encode(Sha256::digest(bytes)),
            Some("sha384") => hex::encode(Sha384::digest(bytes)),
            Some("sha512") => hex::encode(Sha512::digest(bytes)),
            _ => return false,
        };
        computed == self.hex()
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let invalid =
            |why: String| Error::new(ErrorCode::DigestInvalid, format!("invalid digest {:?}: {why}", truncate(s)));
        let parsed = OciDigest::from_str(s).map_err(|e| invalid(e.to_string()))?;
        match parsed.algorithm() {
            DigestAlgorithm::Sha256 | DigestAlgorithm::Sha384 | DigestAlgorithm::Sha512 => Ok(Digest(s.to_owned())),
            other => Err(invalid(format!("unsupported algorithm {other}"))),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What follows `/manifests/`: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl Reference {
    pub fn as_str(&self) -> &str {
        match self {
            Reference::Tag(t) => t.as_str(),
            Reference::Digest(d) => d.as_str(),
        }
    }
}

impl FromStr for Reference {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.contains(':') { s.parse().map(Reference::Digest) } else { s.parse().map(Reference::Tag) }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `name:tag`, `name@digest` or `name` (tag `latest`), as the CLI takes image references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub name: RepositoryName,
    pub reference: Reference,
}

impl FromStr for ImageRef {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (name, reference) = if let Some((n, d)) = s.split_once('@') {
            (n, Reference::Digest(d.parse()?))
        } else {
            match s.rsplit_once(':') {
                Some((n, t)) if !t.contains('/') => (n, Reference::Tag(t.parse()?)),
                _ => (s, Reference::Tag(Tag("latest".into()))),
            }
        };
        Ok(ImageRef { name: name.parse()?, reference })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reference {
            Reference::Tag(t) => write!(f, "{}:{t}", self.name),
            Reference::Digest(d) => write!(f, "{}@{d}", self.name),
        }
    }
}

/// Echo at most 80 characters of untrusted input in error messages.
fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "library/ubuntu", "org/sub/image", "a.b_c__d---e", "x0/1y"] {
            assert!(ok.parse::<RepositoryName>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "A",
            "a//b",
            "/a",
            "a/",
            "../etc",
            "a/../b",
            "a/./b",
            "a%2fb",
            "a_-b",
            "a___b",
            "-a",
            "a-",
            "evil.com:443/x",
            "a b",
            "a\u{0}b",
            "é",
            "a..b",
            "a/.b",
        ] {
            let err = bad.parse::<RepositoryName>().unwrap_err();
            assert_eq!(err.code, ErrorCode::NameInvalid, "{bad}");
        }
        assert!("a".repeat(256).parse::<RepositoryName>().is_err());
    }

    #[test]
    fn references() {
        assert!(matches!("latest".parse::<Reference>(), Ok(Reference::Tag(_))));
        assert!(matches!("_x.Y-1".parse::<Reference>(), Ok(Reference::Tag(_))));
        let d = format!("sha256:{}", "a".repeat(64));
        assert!(matches!(d.parse::<Reference>(), Ok(Reference::Digest(_))));
        for bad in [".x", "-x", "a/b", "", "x".repeat(129).as_str()] {
            assert_eq!(bad.parse::<Reference>().unwrap_err().code, ErrorCode::ManifestInvalid, "{bad}");
        }
        for bad in ["sha256:abc", "sha256:", "md5:0123", &format!("sha256:{}", "A".repeat(64))] {
            assert_eq!(bad.parse::<Reference>().unwrap_err().code, ErrorCode::DigestInvalid, "{bad}");
        }
    }

    #[test]
    fn digest_of_bytes() {
        let d = Digest::sha256_of(b"");
        assert_eq!(d.as_str(), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert!(d.verifies(b""));
        assert!(!d.verifies(b"x"));
        let d512: Digest = format!("sha512:{}", hex::encode(Sha512::digest(b"x"))).parse().unwrap();
        assert!(d512.verifies(b"x") && !d512.verifies(b"y"));
        let d384: Digest = format!("sha384:{}", hex::encode(Sha384::digest(b"x"))).parse().unwrap();
        assert!(d384.verifies(b"x") && !d384.verifies(b"y"));
    }

    #[test]
    fn image_refs() {
        let r: ImageRef = "org/img:v1".parse().unwrap();
        assert_eq!(r.to_string(), "org/img:v1");
        let r: ImageRef = "org/img".parse().unwrap();
        assert_eq!(r.to_string(), "org/img:latest");
        let d = format!("org/img@sha256:{}", "b".repeat(64));
        assert_eq!(d.parse::<ImageRef>().unwrap().to_string(), d);
    }
}
