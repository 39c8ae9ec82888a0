//! Machine types and their features: `cpu:<archspec name>`, `nvcap:<major>.<minor>`, the driver (`cuda:<major>.<minor>`,
//! `driver:<version>`, `gpu-brand:<brand>`, see [`crate::nvidia`]), anything else by equality.

use crate::error::{Error, Result};
pub use crate::names::MachineTypeName;
use archspec::cpu::Microarchitecture;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// One parsed feature. Index entries carry features as strings; an unparseable one is treated as `Other`
/// there, while machine types are validated strictly on write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feature {
    Cpu(String),
    NvCap { major: u32, minor: u32 },
    Other(String),
}

impl Feature {
    /// Lenient parse, for features found in upstream indexes.
    pub fn parse_lenient(s: &str) -> Feature {
        FeatureRef::lenient(s).into()
    }

    /// The archspec node of a `cpu:` feature, when archspec knows the name.
    pub fn microarchitecture(&self) -> Option<&'static Arc<Microarchitecture>> {
        match self {
            Feature::Cpu(name) => Microarchitecture::known_targets().get(name),
            _ => None,
        }
    }
}

/// A feature read without copying its text: the filter reads one per feature of every index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureRef<'s> {
    Cpu(&'s str),
    NvCap { major: u32, minor: u32 },
    Other(&'s str),
}

/// Why the strict parse refuses a feature; the message is written only where it is shown.
enum Refusal<'s> {
    NotKeyValue,
    Characters,
    UnknownCpu(&'s str),
    NvCapSyntax,
    CudaSyntax,
    DriverSyntax,
    UnknownBrand(&'s str),
}

impl<'s> FeatureRef<'s> {
    /// The rules of a feature, in one place: `Feature::from_str` and both lenient parses read them.
    fn strict(s: &'s str) -> std::result::Result<FeatureRef<'s>, Refusal<'s>> {
        let (key, value) =
            s.split_once(':').filter(|(k, v)| !k.is_empty() && !v.is_empty()).ok_or(Refusal::NotKeyValue)?;
        if s.len() > 128 || s.chars().any(|c| c.is_whitespace() || c.is_control() || c == ',') {
            return Err(Refusal::Characters);
        }
        let digits = |x: &str| !x.is_empty() && x.len() <= 3 && x.bytes().all(|b| b.is_ascii_digit());
        match key {
            "cpu" if Microarchitecture::known_targets().contains_key(value) => Ok(FeatureRef::Cpu(value)),
            "cpu" => Err(Refusal::UnknownCpu(value)),
            "nvcap" => {
                match value
                    .split_once('.')
                    .filter(|(ma, mi)| digits(ma) && digits(mi))
                    .map(|(ma, mi)| (ma.parse(), mi.parse()))
                {
                    Some((Ok(major), Ok(minor))) => Ok(FeatureRef::NvCap { major, minor }),
                    _ => Err(Refusal::NvCapSyntax),
                }
            }
            // The driver's features stay `Other` (the filter reads them through `nvidia::GpuFacts`), strictly spelled.
            "cuda" if value.split_once('.').is_some_and(|(ma, mi)| digits(ma) && digits(mi)) => {
                Ok(FeatureRef::Other(s))
            }
            "cuda" => Err(Refusal::CudaSyntax),
            "driver" if crate::nvidia::is_driver_version(value) => Ok(FeatureRef::Other(s)),
            "driver" => Err(Refusal::DriverSyntax),
            "gpu-brand" if crate::nvidia::BRANDS.contains(&value) => Ok(FeatureRef::Other(s)),
            "gpu-brand" => Err(Refusal::UnknownBrand(value)),
            _ => Ok(FeatureRef::Other(s)),
        }
    }

    /// Lenient parse, for features found in upstream indexes: what the strict parse refuses is `Other`. Costs no
    /// copy and no suggestion search (an index can name thousands of unknown cpus).
    pub fn lenient(s: &'s str) -> FeatureRef<'s> {
        FeatureRef::strict(s).unwrap_or(FeatureRef::Other(s))
    }
}

impl From<FeatureRef<'_>> for Feature {
    fn from(feature: FeatureRef<'_>) -> Feature {
        match feature {
            FeatureRef::Cpu(name) => Feature::Cpu(name.to_owned()),
            FeatureRef::NvCap { major, minor } => Feature::NvCap { major, minor },
            FeatureRef::Other(s) => Feature::Other(s.to_owned()),
        }
    }
}

impl PartialEq<Feature> for FeatureRef<'_> {
    fn eq(&self, other: &Feature) -> bool {
        match (self, other) {
            (FeatureRef::Cpu(a), Feature::Cpu(b)) | (FeatureRef::Other(a), Feature::Other(b)) => a == b,
            (FeatureRef::NvCap { major, minor }, Feature::NvCap { major: b_major, minor: b_minor }) => {
                major == b_major && minor == b_minor
            }
            _ => false,
        }
    }
}

impl FromStr for Feature {
    type Err = Error;
    /// Strict parse, for machine types: unknown cpu names and malformed nvcaps are refused.
    fn from_str(s: &str) -> Result<Self> {
        let invalid = |why: String| Error::invalid(format!("invalid feature {s:?}: {why}"));
        match FeatureRef::strict(s) {
            Ok(feature) => Ok(feature.into()),
            Err(Refusal::NotKeyValue) => Err(invalid("expected key:value".into())),
            Err(Refusal::Characters) => {
                Err(invalid("at most 128 characters, no spaces, commas or control characters".into()))
            }
            Err(Refusal::UnknownCpu(value)) => {
                Err(invalid(format!("unknown cpu; did you mean {}?", nearest_cpu_names(value).join(", "))))
            }
            Err(Refusal::NvCapSyntax) => Err(invalid("nvcap is <major>.<minor>, e.g. nvcap:7.0".into())),
            Err(Refusal::CudaSyntax) => {
                Err(invalid("cuda is <major>.<minor>, the \"CUDA Version\" nvidia-smi prints, e.g. cuda:12.4".into()))
            }
            Err(Refusal::DriverSyntax) => {
                Err(invalid("driver is the driver version nvidia-smi prints, e.g. driver:535.129.03".into()))
            }
            Err(Refusal::UnknownBrand(value)) => Err(invalid(format!(
                "unknown gpu-brand; did you mean {}? (the NVIDIA toolkit's brand names: {})",
                nearest_brands(value).join(", "),
                crate::nvidia::BRANDS.join(", ")
            ))),
        }
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Feature::Cpu(name) => write!(f, "cpu:{name}"),
            Feature::NvCap { major, minor } => write!(f, "nvcap:{major}.{minor}"),
            Feature::Other(s) => f.write_str(s),
        }
    }
}

/// What a `platform.variant` means to the matcher. Most µarch builds are published as variants (buildx
/// `linux/amd64/v3`, GOAMD64, arm64 `v8.2`), so a variant is a CPU level where archspec has one for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// The architecture's baseline (amd64 with no variant or `v1`, arm64 with none, `v8` or `v8.0`): every machine
    /// of the architecture runs it.
    Baseline,
    /// An archspec generic level (`x86_64_v3`, `armv8.2a`): the machine's cpu must be it or descend from it.
    Archspec(&'static str),
    /// A variant of a levelled architecture archspec has no level for (amd64 `v5`, arm64 `v8.7`): no machine is known
    /// to run it, so it never fits.
    Unknown,
    /// The architecture has no archspec levels (32-bit arm, ppc64le, riscv64 …): the variant stays part of the
    /// platform, as clients read it (containerd, containers/image and docker detect 32-bit arm variants themselves).
    NotALevel,
}

/// amd64 levels, deepest first: (variant, archspec name).
const AMD64_LEVELS: &[(&str, &str)] = &[("v4", "x86_64_v4"), ("v3", "x86_64_v3"), ("v2", "x86_64_v2")];
/// arm64 levels archspec 0.2 knows, deepest first. It has no armv8.7a+ nor armv9.1a+.
const ARM64_LEVELS: &[(&str, &str)] = &[
    ("v9.0", "armv9.0a"),
    ("v8.6", "armv8.6a"),
    ("v8.5", "armv8.5a"),
    ("v8.4", "armv8.4a"),
    ("v8.3", "armv8.3a"),
    ("v8.2", "armv8.2a"),
    ("v8.1", "armv8.1a"),
];

/// An architecture whose variants are CPU levels.
struct LevelledArchitecture {
    /// archspec's generic root of the family.
    baseline: &'static str,
    /// Variants that mean the baseline.
    baseline_variants: &'static [&'static str],
    /// (variant, archspec level), deepest first.
    levels: &'static [(&'static str, &'static str)],
}

/// The architecture's name in an index (GOARCH), also when spelled as the kernel does.
fn levelled_architecture(architecture: &str) -> Option<LevelledArchitecture> {
    match architecture {
        "amd64" | "x86_64" | "x86-64" => {
            Some(LevelledArchitecture { baseline: "x86_64", baseline_variants: &["", "v1"], levels: AMD64_LEVELS })
        }
        "arm64" | "aarch64" => Some(LevelledArchitecture {
            baseline: "aarch64",
            baseline_variants: &["", "v8", "v8.0"],
            levels: ARM64_LEVELS,
        }),
        _ => None,
    }
}

impl Level {
    /// The level `variant` implies on `architecture`.
    pub fn of(architecture: &str, variant: &str) -> Level {
        let Some(family) = levelled_architecture(architecture) else { return Level::NotALevel };
        let variant = if variant == "v9" { "v9.0" } else { variant };
        if family.baseline_variants.contains(&variant) {
            return Level::Baseline;
        }
        family.levels.iter().find(|(v, _)| *v == variant).map_or(Level::Unknown, |(_, level)| Level::Archspec(level))
    }

    /// The archspec name this level requires, if any.
    pub fn archspec_name(self) -> Option<&'static str> {
        match self {
            Level::Archspec(name) => Some(name),
            _ => None,
        }
    }
}

/// The deepest generic level of `architecture` a `cpu` runs (`haswell` → `x86_64_v3`, `neoverse_v1` → `armv8.4a`),
/// or the architecture's baseline; `None` when the cpu is not of that architecture or unknown to archspec.
pub fn cpu_level(cpu: &str, architecture: &str) -> Option<&'static str> {
    let family = levelled_architecture(architecture)?;
    let uarch = Microarchitecture::known_targets().get(cpu)?;
    let runs = |name: &str| uarch.name() == name || uarch.ancestors().iter().any(|a| a.name() == name);
    if !runs(family.baseline) {
        return None;
    }
    Some(family.levels.iter().find(|(_, level)| runs(level)).map_or(family.baseline, |(_, level)| *level))
}

/// The `platform.variant` that states `cpu`'s level on `architecture` (`haswell` → `v3`, `neoverse_v1` → `v8.4`);
/// `None` at the baseline, or when the cpu is not of that architecture.
pub fn level_variant(cpu: &str, architecture: &str) -> Option<&'static str> {
    let level = cpu_level(cpu, architecture)?;
    let family = levelled_architecture(architecture)?;
    family.levels.iter().find(|(_, l)| *l == level).map(|(variant, _)| *variant)
}

/// The generic level of a cpu in its own family (`haswell` → `x86_64_v3`), for `detect` and messages.
pub fn cpu_level_any(cpu: &str) -> Option<&'static str> {
    cpu_level(cpu, "amd64").or_else(|| cpu_level(cpu, "arm64"))
}

/// The three toolkit brand names closest to `wanted` (edit distance), to suggest on a typo.
pub fn nearest_brands(wanted: &str) -> Vec<String> {
    let wanted = wanted.to_ascii_lowercase();
    let mut names: Vec<(usize, &str)> = crate::nvidia::BRANDS.iter().map(|b| (edit_distance(&wanted, b), *b)).collect();
    names.sort();
    names.into_iter().take(3).map(|(_, b)| b.to_owned()).collect()
}

/// The three archspec names closest to `wanted` (edit distance), to suggest on a typo.
pub fn nearest_cpu_names(wanted: &str) -> Vec<String> {
    let mut names: Vec<(usize, &String)> =
        Microarchitecture::known_targets().keys().map(|k| (edit_distance(wanted, k), k)).collect();
    names.sort();
    names.into_iter().take(3).map(|(_, k)| k.clone()).collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchMode {
    /// Per platform group, the most specific entry the machine can run.
    #[default]
    Best,
    /// Only entries whose feature set equals the machine's (the 2019 semantics).
    Exact,
    /// The whole index, as the upstream wrote it, by tag and by digest: for resolvers (admission controllers,
    /// GitOps tools, scanners, mirrors) that pin a digest every node then pulls, never for a node itself.
    Unfiltered,
}

impl FromStr for MatchMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "best" => Ok(MatchMode::Best),
            "exact" => Ok(MatchMode::Exact),
            "unfiltered" => Ok(MatchMode::Unfiltered),
            _ => Err(Error::invalid(format!("match mode {s:?} is none of best, exact, unfiltered"))),
        }
    }
}

impl fmt::Display for MatchMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MatchMode::Best => "best",
            MatchMode::Exact => "exact",
            MatchMode::Unfiltered => "unfiltered",
        })
    }
}

/// Which feature was refused and, for a `cpu:` typo, the nearest archspec names.
fn feature_detail(feature: &str) -> serde_json::Value {
    match feature.split_once(':') {
        Some(("cpu", wanted)) => serde_json::json!({"feature": feature, "suggestions": nearest_cpu_names(wanted)}),
        Some(("gpu-brand", wanted)) => serde_json::json!({"feature": feature, "suggestions": nearest_brands(wanted)}),
        _ => serde_json::json!({"feature": feature}),
    }
}

/// A validated set of features, what a machine type and an index entry (`metahub index create`) carry alike: each
/// parsed strictly (a `cpu:` typo gets the nearest names in the error's detail), none listed twice, and at most one
/// of each single-valued key (`cpu:`, `nvcap:`, `cuda:`, `driver:`, `gpu-brand:`). On the wire and in stores it is
/// the list of texts, read back through the same rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct FeatureSet(pub(crate) Vec<Feature>);

impl FeatureSet {
    pub fn parse<'a>(texts: impl IntoIterator<Item = &'a str>) -> Result<FeatureSet> {
        let mut parsed: Vec<Feature> = Vec::new();
        for text in texts {
            let feature: Feature = text.parse().map_err(|e: Error| e.with_detail(feature_detail(text)))?;
            if parsed.contains(&feature) {
                return Err(Error::invalid(format!("feature {text:?} is listed twice")));
            }
            parsed.push(feature);
        }
        let cpus = parsed.iter().filter(|f| matches!(f, Feature::Cpu(_))).count();
        let nvcaps = parsed.iter().filter(|f| matches!(f, Feature::NvCap { .. })).count();
        if cpus > 1 || nvcaps > 1 {
            return Err(Error::invalid("a feature set has at most one cpu: and one nvcap: feature"));
        }
        for key in ["cuda:", "driver:", "gpu-brand:"] {
            if parsed.iter().filter(|f| f.to_string().starts_with(key)).count() > 1 {
                return Err(Error::invalid(format!("a feature set has at most one {key} feature")));
            }
        }
        Ok(FeatureSet(parsed))
    }

    /// The features as text, in the order given.
    pub fn texts(&self) -> Vec<String> {
        self.0.iter().map(Feature::to_string).collect()
    }

    /// The texts joined with `separator`, for one-line views.
    pub fn join(&self, separator: &str) -> String {
        self.texts().join(separator)
    }

    pub fn as_slice(&self) -> &[Feature] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The archspec name of the `cpu:` feature, if there is one.
    pub fn cpu(&self) -> Option<&str> {
        self.0.iter().find_map(|f| match f {
            Feature::Cpu(name) => Some(name.as_str()),
            _ => None,
        })
    }
}

impl TryFrom<Vec<String>> for FeatureSet {
    type Error = Error;

    fn try_from(texts: Vec<String>) -> Result<FeatureSet> {
        FeatureSet::parse(texts.iter().map(String::as_str))
    }
}

impl From<FeatureSet> for Vec<String> {
    fn from(set: FeatureSet) -> Vec<String> {
        set.texts()
    }
}

/// The texts, so that a test or a caller can compare a set with a list as written.
impl<const N: usize> PartialEq<[&str; N]> for FeatureSet {
    fn eq(&self, other: &[&str; N]) -> bool {
        self.0.len() == N && self.0.iter().zip(other).all(|(f, text)| f.to_string() == *text)
    }
}

/// A machine type: what every account of it is served. Made by [`MachineType::new`] (texts, parsed) or
/// [`MachineType::of`] (typed) only, so that a machine type in hand always has a valid name and features.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineType {
    pub(crate) name: MachineTypeName,
    pub(crate) features: FeatureSet,
    #[serde(default, rename = "match")]
    pub(crate) match_mode: MatchMode,
}

impl MachineType {
    /// A machine type from typed parts, parsed where they came in.
    pub fn of(name: MachineTypeName, features: FeatureSet, match_mode: MatchMode) -> Self {
        MachineType { name, features, match_mode }
    }

    /// Parses the name and every feature (strictly, as [`FeatureSet::parse`]): for the edges that take text.
    pub fn new(name: impl AsRef<str>, features: Vec<String>, match_mode: MatchMode) -> Result<Self> {
        let name: MachineTypeName = name.as_ref().parse()?;
        let features = FeatureSet::parse(features.iter().map(String::as_str))?;
        Ok(MachineType::of(name, features, match_mode))
    }

    /// A machine type as a store holds it, validated again, naming the item when it is malformed.
    pub fn stored(name: &str, features: Vec<String>, match_mode: MatchMode) -> Result<Self> {
        MachineType::new(name, features, match_mode)
            .map_err(|e| Error::internal(format!("stored machine type {name:?} is malformed: {}", e.message)))
    }

    pub fn name(&self) -> &MachineTypeName {
        &self.name
    }

    pub fn features(&self) -> &FeatureSet {
        &self.features
    }

    pub fn match_mode(&self) -> MatchMode {
        self.match_mode
    }

    /// `{"name","features","match"}`, as the CLI's `--json` and the admin API show a machine type.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"name": self.name, "features": self.features, "match": self.match_mode.to_string()})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_parse_strictly() {
        assert_eq!("cpu:skylake".parse::<Feature>().unwrap(), Feature::Cpu("skylake".into()));
        assert_eq!("nvcap:8.6".parse::<Feature>().unwrap(), Feature::NvCap { major: 8, minor: 6 });
        assert_eq!("fabric:efa".parse::<Feature>().unwrap(), Feature::Other("fabric:efa".into()));
        let e = "cpu:skylak".parse::<Feature>().unwrap_err();
        assert!(e.message.contains("skylake"), "{}", e.message);
        assert_eq!("cuda:12.4".parse::<Feature>().unwrap(), Feature::Other("cuda:12.4".into()));
        assert_eq!("driver:535.129.03".parse::<Feature>().unwrap(), Feature::Other("driver:535.129.03".into()));
        assert_eq!("gpu-brand:tesla".parse::<Feature>().unwrap(), Feature::Other("gpu-brand:tesla".into()));
        let e = "gpu-brand:tesal".parse::<Feature>().unwrap_err();
        assert!(e.message.contains("did you mean tesla"), "{}", e.message);
        for bad in
            ["cuda:12", "cuda:12.x", "cuda:v12.4", "driver:535.x", "driver:", "gpu-brand:Tesla", "gpu-brand:a100"]
        {
            assert!(bad.parse::<Feature>().is_err(), "{bad}");
        }
        for bad in ["nvcap:8", "nvcap:a.b", "nvcap:8.", "novalue:", ":x", "plain", "a:b c"] {
            assert!(bad.parse::<Feature>().is_err(), "{bad}");
        }
    }

    #[test]
    fn lenient_features_are_what_the_strict_parse_accepts_or_other() {
        let long_cpu = format!("cpu:{}", "x".repeat(120));
        for text in [
            "cpu:skylake",
            "cpu:skylak",
            "nvcap:8.6",
            "nvcap:08.06",
            "nvcap:8",
            "nvcap:1234.0",
            "fabric:efa",
            "plain",
            ":x",
            "a:b c",
            "cpu:",
            &long_cpu,
        ] {
            let want = text.parse::<Feature>().unwrap_or_else(|_| Feature::Other(text.to_owned()));
            assert_eq!(Feature::parse_lenient(text), want, "{text}");
            assert_eq!(FeatureRef::lenient(text), want, "{text}");
        }
        assert_eq!(FeatureRef::lenient("nvcap:08.06"), Feature::NvCap { major: 8, minor: 6 });
        assert_eq!(FeatureRef::lenient(&long_cpu), FeatureRef::Other(&long_cpu));
    }

    #[test]
    fn machine_types_refuse_duplicates() {
        assert!(MachineType::new("m", vec!["cpu:haswell".into(), "cpu:haswell".into()], MatchMode::Best).is_err());
        assert!(MachineType::new("m", vec!["cpu:haswell".into(), "cpu:zen2".into()], MatchMode::Best).is_err());
        assert!(MachineType::new("bad name", vec![], MatchMode::Best).is_err());
        assert!(MachineType::new("m", vec!["cuda:12.4".into(), "cuda:12.2".into()], MatchMode::Best).is_err());
        let e = MachineType::new("m", vec!["gpu-brand:geforc".into()], MatchMode::Best).unwrap_err();
        assert_eq!(e.detail.as_ref().unwrap()["suggestions"][0], "geforce");
        let m = MachineType::new("hsw-m60", vec!["cpu:haswell".into(), "nvcap:5.2".into()], MatchMode::Exact).unwrap();
        assert_eq!(m.features, ["cpu:haswell", "nvcap:5.2"]);
    }

    #[test]
    fn variants_are_levels() {
        let table: &[(&str, &str, Level)] = &[
            ("amd64", "", Level::Baseline),
            ("amd64", "v1", Level::Baseline),
            ("amd64", "v2", Level::Archspec("x86_64_v2")),
            ("amd64", "v3", Level::Archspec("x86_64_v3")),
            ("x86_64", "v4", Level::Archspec("x86_64_v4")),
            ("amd64", "v5", Level::Unknown),
            ("amd64", "v8", Level::Unknown),
            ("arm64", "", Level::Baseline),
            ("arm64", "v8", Level::Baseline),
            ("arm64", "v8.0", Level::Baseline),
            ("arm64", "v8.2", Level::Archspec("armv8.2a")),
            ("aarch64", "v8.6", Level::Archspec("armv8.6a")),
            ("arm64", "v9", Level::Archspec("armv9.0a")),
            ("arm64", "v9.0", Level::Archspec("armv9.0a")),
            ("arm64", "v8.7", Level::Unknown),
            ("arm64", "v1", Level::Unknown),
            ("arm", "v7", Level::NotALevel),
            ("ppc64le", "", Level::NotALevel),
        ];
        for (arch, variant, want) in table {
            assert_eq!(Level::of(arch, variant), *want, "{arch}/{variant}");
        }
        // every archspec name used is known to archspec
        for (_, name) in AMD64_LEVELS.iter().chain(ARM64_LEVELS) {
            assert!(Microarchitecture::known_targets().contains_key(*name), "{name}");
        }
    }

    #[test]
    fn cpus_have_levels() {
        assert_eq!(cpu_level("core2", "amd64"), Some("x86_64"));
        assert_eq!(cpu_level("nehalem", "amd64"), Some("x86_64_v2"));
        assert_eq!(cpu_level("haswell", "amd64"), Some("x86_64_v3"));
        assert_eq!(cpu_level("zen4", "amd64"), Some("x86_64_v4"));
        assert_eq!(cpu_level("haswell", "arm64"), None);
        assert_eq!(cpu_level("neoverse_v1", "arm64"), Some("armv8.4a"));
        assert_eq!(cpu_level_any("neoverse_n1"), Some("armv8.2a"));
        assert_eq!(cpu_level_any("x86_64_v3"), Some("x86_64_v3"));
        assert_eq!(level_variant("haswell", "amd64"), Some("v3"));
        assert_eq!(level_variant("sapphirerapids", "amd64"), Some("v4"));
        assert_eq!(level_variant("core2", "amd64"), None);
        assert_eq!(level_variant("neoverse_v1", "arm64"), Some("v8.4"));
        assert_eq!(level_variant("haswell", "arm64"), None);
    }
}
