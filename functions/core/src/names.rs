//! The names operators give: machine-type names and logins. Each is checked once, where it is made (parsing,
//! `serde`), so that every store key, URL path and log line downstream holds a safe name.

use crate::error::{Error, ErrorCode, Result};
use serde::{Deserialize, Serialize};
use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

/// 1-64 of `[A-Za-z0-9._@-]`: safe in keys, URLs and logs.
fn check(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(Error::new(ErrorCode::NameInvalid, format!("{what} name {name:?} must be 1 to 64 of [A-Za-z0-9._@-]")))
    }
}

/// A checked name type: made by parsing (`NAME_INVALID` otherwise), read as `&str`, (de)serialized as a string.
macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(name: String) -> Result<Self> {
                check($what, &name)?;
                Ok($name(name))
            }
        }

        impl TryFrom<&str> for $name {
            type Error = Error;
            fn try_from(name: &str) -> Result<Self> {
                name.parse()
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(name: &str) -> Result<Self> {
                check($what, name)?;
                Ok($name(name.to_owned()))
            }
        }

        impl From<$name> for String {
            fn from(name: $name) -> String {
                name.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        /// Maps keyed by name are looked up with a `&str`.
        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

name_type!(
    /// The name of a machine type (`skylake-v100`).
    MachineTypeName,
    "machine type"
);

name_type!(
    /// An account's login, as a machine gives it to `/token`.
    Login,
    "login"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_when_made() {
        assert_eq!("hsw-m60".parse::<MachineTypeName>().unwrap().as_str(), "hsw-m60");
        assert_eq!("ci@node.1".parse::<Login>().unwrap(), "ci@node.1");
        for bad in ["", "bad name", "a/b", "ü", &"a".repeat(65)] {
            let e = bad.parse::<MachineTypeName>().unwrap_err();
            assert_eq!(e.code, ErrorCode::NameInvalid);
            assert!(e.message.starts_with("machine type name"), "{}", e.message);
            assert!(bad.parse::<Login>().unwrap_err().message.starts_with("login name"));
        }
        assert!(serde_json::from_str::<Login>("\"a b\"").is_err(), "serde checks too");
        assert_eq!(serde_json::to_string(&Login::try_from("x").unwrap()).unwrap(), "\"x\"");
    }
}
