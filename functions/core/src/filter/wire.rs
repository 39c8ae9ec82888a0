//! The wire side of index filtering: an index read from its bytes as the upstream wrote them, each entry's text
//! kept and only the fields the matcher needs decoded, borrowed from the bytes.

use super::{ATTESTATION_SUBJECT, ATTESTATION_TYPE, Entry};
use crate::error::{Error, Result};
use crate::machine::Level;
use indexmap::IndexMap;
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;

/// The fields of an index entry the matcher reads; everything else stays in the raw entry. Strings are borrowed
/// from the index bytes unless an escape forces a copy.
#[derive(Deserialize, Default)]
#[serde(default)]
struct WireEntry<'a> {
    #[serde(borrow)]
    digest: Cow<'a, str>,
    #[serde(borrow)]
    platform: Option<WirePlatform<'a>>,
    #[serde(borrow)]
    annotations: Option<WireAnnotations<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WirePlatform<'a> {
    #[serde(borrow)]
    os: Cow<'a, str>,
    #[serde(borrow)]
    architecture: Cow<'a, str>,
    #[serde(borrow)]
    variant: Cow<'a, str>,
    #[serde(borrow)]
    features: Option<Vec<Text<'a>>>,
}

/// A JSON string borrowed from the index bytes, or copied where it has escapes (serde borrows a `Cow` only as a
/// struct's own field, not inside a list or map).
#[derive(Debug, Clone, Default)]
pub(super) struct Text<'a>(pub(super) Cow<'a, str>);

impl Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Borrowing;
        impl<'de> Visitor<'de> for Borrowing {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> std::result::Result<Self::Value, E> {
                Ok(Cow::Borrowed(s))
            }
            fn visit_str<E>(self, s: &str) -> std::result::Result<Self::Value, E> {
                Ok(Cow::Owned(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> std::result::Result<Self::Value, E> {
                Ok(Cow::Owned(s))
            }
        }
        deserializer.deserialize_str(Borrowing).map(Text)
    }
}

/// The two annotations that mark an attestation; any others are read (they must be strings) and dropped, and the
/// last of a repeated key counts.
#[derive(Default)]
struct WireAnnotations<'a> {
    kind: Option<Text<'a>>,
    subject: Option<Text<'a>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for WireAnnotations<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Annotations<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Annotations<'a> {
            type Value = WireAnnotations<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> std::result::Result<Self::Value, M::Error> {
                let mut annotations = WireAnnotations::default();
                while let Some((key, value)) = map.next_entry::<Text<'a>, Text<'a>>()? {
                    match &*key {
                        ATTESTATION_TYPE => annotations.kind = Some(value),
                        ATTESTATION_SUBJECT => annotations.subject = Some(value),
                        _ => {}
                    }
                }
                Ok(annotations)
            }
        }
        deserializer.deserialize_map(Annotations(std::marker::PhantomData))
    }
}

/// What the matcher reads of an index entry, borrowed from the index bytes.
pub(super) struct View<'a> {
    pub(super) digest: Cow<'a, str>,
    pub(super) os: Cow<'a, str>,
    pub(super) architecture: Cow<'a, str>,
    pub(super) variant: Cow<'a, str>,
    pub(super) features: Vec<Text<'a>>,
    /// The CPU level `variant` implies on `architecture`.
    pub(super) level: Level,
    /// For an attestation manifest: the digest of the entry it describes.
    pub(super) attests: Option<Text<'a>>,
}

impl<'a> View<'a> {
    fn of(wire: WireEntry<'a>, position: usize) -> Result<View<'a>> {
        if wire.digest.is_empty() {
            return Err(Error::bad_gateway(format!("upstream index entry {position} has no digest")));
        }
        let platform = wire.platform.unwrap_or_default();
        let attests = wire
            .annotations
            .and_then(|a| (a.kind.as_deref() == Some("attestation-manifest")).then(|| a.subject.unwrap_or_default()));
        Ok(View {
            level: Level::of(&platform.architecture, &platform.variant),
            digest: wire.digest,
            os: platform.os,
            architecture: platform.architecture,
            variant: platform.variant,
            features: platform.features.unwrap_or_default(),
            attests,
        })
    }

    pub(super) fn to_entry(&self) -> Entry {
        Entry {
            digest: self.digest.to_string(),
            os: self.os.to_string(),
            architecture: self.architecture.to_string(),
            variant: self.variant.to_string(),
            features: self.features.iter().map(|f| f.to_string()).collect(),
            level: self.level,
            attests: self.attests.as_ref().map(|a| a.to_string()),
        }
    }

    /// The platform group: (os, architecture), and the variant only where it is not a level (32-bit arm …).
    pub(super) fn group(&self) -> (&str, &str, &str) {
        match self.level {
            Level::NotALevel => (&self.os, &self.architecture, &self.variant),
            _ => (&self.os, normalized_architecture(&self.architecture), ""),
        }
    }
}

/// `os/architecture[/variant]`.
pub(super) fn platform_text(os: &str, architecture: &str, variant: &str) -> String {
    match variant {
        "" => format!("{os}/{architecture}"),
        v => format!("{os}/{architecture}/{v}"),
    }
}

/// A parsed index, for `explain`: every entry as the matcher reads it, and an owned copy of each.
pub struct Index<'a> {
    pub(super) parsed: Parsed<'a>,
    pub entries: Vec<Entry>,
}

impl<'a> Index<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Index<'a>> {
        let parsed = Parsed::parse(bytes)?;
        let entries = parsed.views.iter().map(View::to_entry).collect();
        Ok(Index { parsed, entries })
    }
}

/// An index as the filter reads it: its fields as the upstream wrote them, each entry's text, and what the matcher
/// reads of each entry.
pub(super) struct Parsed<'a> {
    pub(super) object: IndexMap<String, &'a RawValue>,
    pub(super) raw_entries: Vec<&'a str>,
    pub(super) views: Vec<View<'a>>,
}

impl<'a> Parsed<'a> {
    pub(super) fn parse(bytes: &'a [u8]) -> Result<Parsed<'a>> {
        let object: IndexMap<String, &RawValue> = serde_json::from_slice(bytes)
            .map_err(|e| Error::bad_gateway(format!("upstream index is not a JSON object: {e}")))?;
        let list = object
            .get("manifests")
            .map(|m| m.get())
            .filter(|m| m.starts_with('['))
            .ok_or_else(|| Error::bad_gateway("upstream index has no manifests list"))?;
        let (raw_entries, views) = read_entries(list)?;
        Ok(Parsed { object, raw_entries, views })
    }
}

/// Reads a JSON list of index entries in one pass: each entry's text (to write it back as the upstream spelled it)
/// and what the matcher reads of it. `list` is a value the index's parse has already read as JSON, so between the
/// entries there is only whitespace and a comma; each entry is read by serde_json like any JSON text.
pub(super) fn read_entries(list: &str) -> Result<(Vec<&str>, Vec<View<'_>>)> {
    fn skip_whitespace(s: &str) -> &str {
        s.trim_start_matches([' ', '\t', '\n', '\r'])
    }
    let (mut raw_entries, mut views) = (Vec::new(), Vec::new());
    let mut rest = skip_whitespace(&list[1..]);
    if rest.starts_with(']') {
        return Ok((raw_entries, views));
    }
    loop {
        let position = views.len();
        let malformed =
            |why: String| Error::bad_gateway(format!("upstream index entry {position} is malformed: {why}"));
        let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<WireEntry>();
        let wire = match stream.next() {
            Some(wire) => wire.map_err(|e| malformed(e.to_string()))?,
            None => return Err(malformed("no value".into())),
        };
        let end = stream.byte_offset();
        raw_entries.push(&rest[..end]);
        views.push(View::of(wire, position)?);
        rest = skip_whitespace(&rest[end..]);
        match rest.as_bytes().first() {
            Some(b',') => rest = skip_whitespace(&rest[1..]),
            Some(b']') => return Ok((raw_entries, views)),
            _ => return Err(malformed("expected , or ] after it".into())),
        }
    }
}

/// `amd64` and `x86_64` are one platform to every client (they normalize), so they are one group here too.
pub(super) fn normalized_architecture(architecture: &str) -> &str {
    match architecture {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    }
}
