//! [`Secret`]: a value that never shows in `Debug` output (logs, panics, `{:?}` of a config).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A password, key or token. `Debug` prints `<redacted>`; the value is only reachable through [`Secret::expose`],
/// so every use of it is visible at the call site.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl Secret<String> {
    pub fn expose_str(&self) -> &str {
        &self.0
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret<String> {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Secret)
    }
}

/// For `#[serde(serialize_with = "crate::secret::serialize_exposed")]` on a field a store must persist (a password
/// hash): `Secret` itself is not `Serialize`, so that no secret lands in a JSON answer by accident.
pub fn serialize_exposed<T: Serialize, S: Serializer>(secret: &Secret<T>, serializer: S) -> Result<S::Ok, S::Error> {
    secret.0.serialize(serializer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Login {
            user: String,
            password: Secret<String>,
        }
        let login = Login { user: "u".into(), password: Secret::new("hunter2".into()) };
        let shown = format!("{login:?} {:?}", Some(Secret::new(7)));
        assert!(!shown.contains("hunter2") && shown.contains("<redacted>"), "{shown}");
        assert_eq!(login.password.expose_str(), "hunter2");
    }
}
