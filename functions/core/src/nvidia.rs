//! The driver dimension: the `NVIDIA_REQUIRE_*` variables of an image config, evaluated against what a machine type
//! says about its GPU driver (`cuda:`, `driver:`, `gpu-brand:`, `nvcap:`), as the NVIDIA container stack evaluates
//! them when it starts the container.
//!
//! Two evaluators exist upstream, and a node runs one of them:
//! - nvidia-container-toolkit, `cmd/nvidia-container-runtime-hook/container_config.go`: the hook (legacy mode, the
//!   default on x86 and SBSA nodes) collects the requirements (`internal/config/image/cuda_image.go`,
//!   `GetRequirements`) and passes each as `--require=` to `nvidia-container-cli configure`, which evaluates them in
//!   libnvidia-container `src/cli/dsl.c` (`dsl_evaluate`, `dsl_compare_version`, `dsl_compare_string`) with the rules
//!   of `src/cli/configure.c` (`cuda`, `driver`, `arch`, `brand`).
//! - CSV mode (Tegra), `internal/modifier/csv.go`: the toolkit's own Go evaluator, `internal/requirements/` and
//!   `internal/requirements/constraints/factory.go`.
//!
//! Both share the grammar: each requirement is split on spaces into alternatives (ORed), each alternative on commas
//! into conditions (ANDed), a condition is `PROPERTY OPERATOR VALUE` with an operator of `= != < <= > >=`, and all the
//! requirements (one per `NVIDIA_REQUIRE_*` variable, `NVIDIA_REQUIRE_JETPACK*` excepted) are ANDed. Versions compare
//! numerically component by component (`12.10` > `12.4`; dsl.c ignores trailing `.0`s, the Go side reads semver), so
//! `12.4` and `12.4.0` are equal. Where they differ, MetaHub takes the answer neither runtime contradicts, so that a
//! build it calls runnable starts in either mode:
//! - an unknown property (`foo=bar`) is ignored by the Go factory ("unsupported property is ignored",
//!   factory_test.go) but is an "invalid expression" in dsl.c (`evaluate_rule` finds no rule): the requirement is
//!   malformed here;
//! - a condition without an operator, an empty value or a version that is not numeric is an error in both
//!   (factory.go `parse` and `Validate`; dsl.c `evaluate_rule` returns -1, and `dsl_evaluate` fails with "invalid
//!   expression"): the container is not started, so the build runs on no GPU node;
//! - brands compare without case and only with `=` and `!=` (dsl.c `dsl_compare_string`);
//! - a fact the machine type does not state (no `gpu-brand:`, no `nvcap:`) satisfies no condition on it. dsl.c
//!   assumes a brand or arch it cannot see is fine; MetaHub does not know the node's GPU, so it does not assume.
//!
//! With `NVIDIA_DISABLE_REQUIRE` true (Go's `strconv.ParseBool`: `1`, `t`, `T`, `TRUE`, `true`, `True`) nothing is
//! required (cuda_image.go `HasDisableRequire`). A "legacy" image (`CUDA_VERSION` set, `NVIDIA_REQUIRE_CUDA` unset or
//! empty) requires `cuda>=<major>.<minor>` of its `CUDA_VERSION` (cuda_image.go `IsLegacy`, `legacyVersion`). With no
//! variable at all there is no requirement.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The brand names of the toolkit (libnvidia-container's names of NVML's `nvmlBrandType`), as they appear in
/// `brand=` conditions and in `gpu-brand:` features.
pub const BRANDS: &[&str] = &[
    "tesla",
    "nvidia",
    "geforce",
    "geforcertx",
    "quadro",
    "quadrortx",
    "nvidiartx",
    "titan",
    "titanrtx",
    "grid",
    "nvs",
    "vapps",
    "vpc",
    "vcs",
    "vws",
    "cloudgaming",
    "unknown",
];

/// The NVIDIA requirements of an index's children, by child manifest digest.
pub type GpuRequirements = std::collections::HashMap<String, std::sync::Arc<Requirements>>;

/// Bytes of a requirement MetaHub reads at most: NVIDIA's own strings are under 2 KiB (12.1: 1.5 KiB).
pub const MAX_REQUIREMENT_BYTES: usize = 16 << 10;

/// A CUDA version as `major.minor`: what `nvidia-smi` calls "CUDA Version", and what `cuda>=` requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct CudaVersion {
    pub major: u32,
    pub minor: u32,
}

impl CudaVersion {
    /// `12.4`, `12.4.1` (the patch is dropped); `None` for anything else.
    pub fn parse(text: &str) -> Option<CudaVersion> {
        let mut parts = text.split('.');
        let number = |p: Option<&str>| {
            p.filter(|p| !p.is_empty() && p.len() <= 6 && p.bytes().all(|b| b.is_ascii_digit()))?.parse().ok()
        };
        let major = number(parts.next())?;
        let minor = number(parts.next()).unwrap_or(0);
        Some(CudaVersion { major, minor })
    }
}

impl fmt::Display for CudaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Whether `value` is a driver version a machine type may state: one to four numeric components (`535`,
/// `535.129.03`).
pub fn is_driver_version(value: &str) -> bool {
    let parts: Vec<&str> = value.split('.').collect();
    parts.len() <= 4 && parts.iter().all(|p| !p.is_empty() && p.len() <= 6 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// What a machine type says about its GPU and driver, read from its features.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuFacts {
    /// `cuda:` — the highest CUDA version the driver supports.
    pub cuda: Option<String>,
    /// `driver:` — the driver version.
    pub driver: Option<String>,
    /// `gpu-brand:` — the toolkit's brand name.
    pub brand: Option<String>,
    /// `nvcap:` — the compute capability, which the toolkit calls `arch`.
    pub arch: Option<String>,
}

impl GpuFacts {
    pub fn of<S: AsRef<str>>(features: &[S]) -> GpuFacts {
        let mut facts = GpuFacts::default();
        for feature in features {
            let Some((key, value)) = feature.as_ref().split_once(':') else { continue };
            let slot = match key {
                "cuda" => &mut facts.cuda,
                "driver" => &mut facts.driver,
                "gpu-brand" => &mut facts.brand,
                "nvcap" => &mut facts.arch,
                _ => continue,
            };
            *slot = Some(value.to_owned());
        }
        facts
    }

    /// Whether the machine type states a driver at all (`cuda:` or `driver:`).
    pub fn has_driver(&self) -> bool {
        self.cuda.is_some() || self.driver.is_some()
    }

    fn describe(&self) -> String {
        if !self.has_driver() {
            return "the machine type names no GPU driver (cuda:, driver:)".to_owned();
        }
        let mut what = match &self.cuda {
            Some(cuda) => format!("this node's driver supports cuda {cuda}"),
            None => "this node's driver names no cuda version".to_owned(),
        };
        let details: Vec<String> =
            [self.driver.as_ref().map(|d| format!("driver {d}")), self.brand.clone()].into_iter().flatten().collect();
        if !details.is_empty() {
            what.push_str(&format!(" ({})", details.join(", ")));
        }
        what
    }
}

/// The requirements of one build: the toolkit's `GetRequirements` of its config (plus a `cuda:` feature of its index
/// entry), ANDed. Kept by the child manifest's digest in the store and the caches; parsed again where evaluated, so
/// what is stored is only the strings the image carries.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Requirements {
    /// One requirement per `NVIDIA_REQUIRE_*` variable (sorted by name: AND is commutative, and the order stays the
    /// same however the config lists them), the legacy `cuda>=` of `CUDA_VERSION`; empty: none.
    #[serde(default)]
    pub expressions: Vec<String>,
}

/// How a build fares on a machine type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The build starts there; `cuda` is its newest CUDA requirement (0.0 without one), which ranks builds.
    Runs { cuda: CudaVersion },
    /// It does not, and why, in one line.
    Misses(String),
}

impl Requirements {
    /// The requirements of a config's environment (`KEY=VALUE` strings, the last of a repeated key counts, as in the
    /// toolkit's map of the environment).
    pub fn from_env<'a>(env: impl IntoIterator<Item = &'a str>) -> Requirements {
        let mut vars: std::collections::BTreeMap<&str, &str> = std::collections::BTreeMap::new();
        for pair in env {
            if let Some((key, value)) = pair.split_once('=') {
                vars.insert(key, value);
            }
        }
        // cuda_image.go HasDisableRequire: strconv.ParseBool, an unparseable value is false.
        if vars.get("NVIDIA_DISABLE_REQUIRE").is_some_and(|v| matches!(*v, "1" | "t" | "T" | "TRUE" | "true" | "True"))
        {
            return Requirements::default();
        }
        let mut expressions: Vec<String> = vars
            .iter()
            .filter(|(k, _)| k.starts_with("NVIDIA_REQUIRE_") && !k.starts_with("NVIDIA_REQUIRE_JETPACK"))
            .map(|(_, v)| truncated(v))
            .collect();
        let legacy = vars.get("CUDA_VERSION").filter(|v| !v.is_empty());
        if let Some(version) = legacy
            && vars.get("NVIDIA_REQUIRE_CUDA").is_none_or(|v| v.is_empty())
        {
            // cuda_image.go legacyVersion: an unparseable CUDA_VERSION fails GetRequirements, and the hook panics
            // ("failed to get requirements"): the container does not start. Kept as a malformed requirement.
            expressions.push(match CudaVersion::parse(version) {
                Some(v) => format!("cuda>={v}"),
                None => format!("cuda>={}", truncated(version)),
            });
        }
        expressions.retain(|e| !e.trim().is_empty());
        Requirements { expressions }
    }

    /// The requirements of an image config (`{"config":{"Env":[…]}}`); an error names what is wrong with the JSON.
    pub fn from_config(bytes: &[u8]) -> std::result::Result<Requirements, String> {
        #[derive(Deserialize)]
        struct Config {
            #[serde(default)]
            config: Option<Inner>,
        }
        #[derive(Deserialize)]
        struct Inner {
            #[serde(default, rename = "Env")]
            env: Option<Vec<String>>,
        }
        let config: Config = serde_json::from_slice(bytes).map_err(|e| format!("not an image config: {e}"))?;
        let env = config.config.and_then(|c| c.env).unwrap_or_default();
        Ok(Requirements::from_env(env.iter().map(String::as_str)))
    }

    /// These requirements and a `cuda:M.m` feature of the index entry (both sources apply).
    pub fn with_entry_cuda(&self, cuda: CudaVersion) -> Requirements {
        let mut both = self.clone();
        both.expressions.push(format!("cuda>={cuda}"));
        both
    }

    pub fn is_empty(&self) -> bool {
        self.expressions.is_empty()
    }

    /// The first malformed requirement and why, if any: the NVIDIA runtime then refuses to start the container.
    pub fn malformed(&self) -> Option<String> {
        self.expressions.iter().find_map(|e| parse(e).err().map(|why| format!("{:?}: {why}", shorten(e))))
    }

    /// The newest CUDA version any condition requires (`cuda>=`, `cuda>`, `cuda=`), 0.0 without one.
    pub fn cuda(&self) -> CudaVersion {
        self.expressions
            .iter()
            .filter_map(|e| parse(e).ok())
            .flatten()
            .flatten()
            .filter(|c| c.property == Property::Cuda && matches!(c.op, Op::Ge | Op::Gt | Op::Eq))
            .filter_map(|c| CudaVersion::parse(c.value))
            .max()
            .unwrap_or_default()
    }

    /// Whether a machine with `facts` starts this build, as the NVIDIA runtime decides.
    pub fn check(&self, facts: &GpuFacts) -> Check {
        if self.is_empty() {
            return Check::Runs { cuda: CudaVersion::default() };
        }
        if let Some(why) = self.malformed() {
            return Check::Misses(format!("NVIDIA_REQUIRE_* is malformed, the NVIDIA runtime refuses it: {why}"));
        }
        for expression in &self.expressions {
            let alternatives = parse(expression).unwrap_or_default();
            if !satisfied(&alternatives, facts) {
                return Check::Misses(format!("needs {}; {}", needs(&alternatives, facts), facts.describe()));
            }
        }
        Check::Runs { cuda: self.cuda() }
    }
}

/// A value as read, cut at [`MAX_REQUIREMENT_BYTES`] (on a character boundary): a longer one is no NVIDIA string.
fn truncated(value: &str) -> String {
    let mut end = value.len().min(MAX_REQUIREMENT_BYTES);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].to_owned()
}

/// The start of a long requirement, for messages.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(60) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Property {
    Cuda,
    Driver,
    Arch,
    Brand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    fn text(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }
}

/// One `PROPERTY OPERATOR VALUE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Condition<'s> {
    property: Property,
    op: Op,
    value: &'s str,
}

impl fmt::Display for Condition<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.property {
            Property::Cuda => "cuda",
            Property::Driver => "driver",
            Property::Arch => "arch",
            Property::Brand => "brand",
        };
        write!(f, "{name}{}{}", self.op.text(), self.value)
    }
}

/// Alternatives (ORed) of conditions (ANDed).
type Alternatives<'s> = Vec<Vec<Condition<'s>>>;

/// One requirement: split on `' '` then `','`, empty pieces skipped (dsl.c `dsl_evaluate`, factory.go
/// `newConstraintFromRequirement`); any malformed condition is an error (factory.go parses them all first).
fn parse(requirement: &str) -> std::result::Result<Alternatives<'_>, String> {
    let mut alternatives = Vec::new();
    for term in requirement.split(' ').filter(|t| !t.is_empty()) {
        let conditions: Vec<Condition> =
            term.split(',').filter(|f| !f.is_empty()).map(condition).collect::<std::result::Result<_, _>>()?;
        alternatives.push(conditions);
    }
    Ok(alternatives)
}

/// dsl.c `evaluate_rule`: the property runs to the first of `<>=!`, the operator is the run of those characters that
/// follows (the first of `= != < <= > >=` it begins), the value is the rest and must not be empty.
fn condition(text: &str) -> std::result::Result<Condition<'_>, String> {
    let is_op = |c: char| matches!(c, '<' | '>' | '=' | '!');
    let start = text.find(is_op).filter(|&at| at > 0).ok_or_else(|| format!("{text:?} has no PROPERTY<op>VALUE"))?;
    let (name, rest) = text.split_at(start);
    let end = rest.find(|c: char| !is_op(c)).unwrap_or(rest.len());
    let (run, value) = rest.split_at(end);
    let op = [Op::Eq, Op::Ne, Op::Lt, Op::Le, Op::Gt, Op::Ge]
        .into_iter()
        .find(|op| op.text().starts_with(run))
        .ok_or_else(|| format!("{run:?} in {text:?} is no operator"))?;
    if value.is_empty() {
        return Err(format!("{text:?} has no value"));
    }
    let property = match name.to_ascii_lowercase().as_str() {
        "cuda" => Property::Cuda,
        "driver" => Property::Driver,
        "arch" => Property::Arch,
        "brand" => Property::Brand,
        _ => return Err(format!("unknown property {name:?} (nvidia-container-cli: invalid expression)")),
    };
    match property {
        // dsl.c dsl_compare_version takes digits and dots only; the Go side reads semver (at most three numbers).
        Property::Brand if !matches!(op, Op::Eq | Op::Ne) => {
            Err(format!("{text:?}: a brand compares with = or != only"))
        }
        Property::Brand => Ok(Condition { property, op, value }),
        _ if !is_version(value) => Err(format!("{value:?} in {text:?} is not a version")),
        _ => Ok(Condition { property, op, value }),
    }
}

/// Digits in one to three dot-separated numbers (`12`, `12.4`, `535.129.03`).
fn is_version(value: &str) -> bool {
    let parts: Vec<&str> = value.split('.').collect();
    parts.len() <= 3 && parts.iter().all(|p| !p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// dsl.c `dsl_compare_version`: numbers compared one by one, a shorter version padded with zeros.
fn compare_versions(a: &str, b: &str) -> Option<std::cmp::Ordering> {
    if !is_driver_version(a) && !is_version(a) {
        return None;
    }
    let numbers = |v: &str| -> Option<Vec<u64>> { v.split('.').map(|p| p.parse().ok()).collect() };
    let (mut x, mut y) = (numbers(a)?, numbers(b)?);
    let len = x.len().max(y.len());
    x.resize(len, 0);
    y.resize(len, 0);
    Some(x.cmp(&y))
}

/// Whether one condition holds for the machine; a fact it does not state satisfies nothing.
fn holds(condition: &Condition, facts: &GpuFacts) -> bool {
    let fact = match condition.property {
        Property::Cuda => &facts.cuda,
        Property::Driver => &facts.driver,
        Property::Arch => &facts.arch,
        Property::Brand => &facts.brand,
    };
    let Some(fact) = fact else { return false };
    if condition.property == Property::Brand {
        let same = fact.eq_ignore_ascii_case(condition.value);
        return if condition.op == Op::Eq { same } else { !same };
    }
    let Some(order) = compare_versions(fact, condition.value) else { return false };
    match condition.op {
        Op::Eq => order.is_eq(),
        Op::Ne => order.is_ne(),
        Op::Lt => order.is_lt(),
        Op::Le => order.is_le(),
        Op::Gt => order.is_gt(),
        Op::Ge => order.is_ge(),
    }
}

/// dsl.c `dsl_evaluate`: alternatives are tried in order, each until its first failing condition; the first
/// alternative whose conditions all hold satisfies the requirement. An alternative with no conditions ends the search
/// with the last answer (true when it is the first). With every alternative tried, the last one's answer stands.
fn satisfied(alternatives: &Alternatives, facts: &GpuFacts) -> bool {
    let mut answer = true;
    for conditions in alternatives {
        let mut all = true;
        for condition in conditions {
            answer = holds(condition, facts);
            if !answer {
                all = false;
                break;
            }
        }
        if all {
            break;
        }
    }
    answer
}

/// A requirement said in a line: its first alternative, and the forward-compatibility alternatives
/// (`brand=B,driver>=N,driver<N+1`) as driver branches, those of the machine's brand when it states one.
fn needs(alternatives: &Alternatives, facts: &GpuFacts) -> String {
    let Some((first, others)) = alternatives.split_first() else { return "nothing".to_owned() };
    let first: Vec<String> = first.iter().map(Condition::to_string).collect();
    let mut branches: Vec<(String, &str)> = Vec::new();
    let mut rest: Vec<String> = Vec::new();
    for conditions in others {
        match compat_branch(conditions) {
            Some((brand, branch)) => branches.push((branch, brand)),
            None => rest.push(conditions.iter().map(Condition::to_string).collect::<Vec<_>>().join(",")),
        }
    }
    let mut said = first.join(",");
    if !branches.is_empty() {
        let own: Vec<&str> = match &facts.brand {
            Some(brand) => {
                branches.iter().filter(|(_, b)| b.eq_ignore_ascii_case(brand)).map(|(n, _)| n.as_str()).collect()
            }
            None => Vec::new(),
        };
        let (list, on) = if own.is_empty() {
            let mut all: Vec<&str> = branches.iter().map(|(n, _)| n.as_str()).collect();
            all.dedup();
            let brands = if facts.brand.is_some() { " of another brand" } else { "" };
            (all, format!("{brands}, with the compat libraries"))
        } else {
            (own, " with the compat libraries".to_owned())
        };
        let mut list = list;
        list.sort_by_key(|n| n.trim_end_matches(".x").parse::<u64>().unwrap_or(0));
        list.dedup();
        said.push_str(&format!(" (or driver {}{on})", list.join(", ")));
    }
    if !rest.is_empty() {
        said.push_str(&format!(" (or {})", rest.join(" or ")));
    }
    said
}

/// `brand=B,driver>=N,driver<N+1` → (B, "N.x").
fn compat_branch<'s>(conditions: &[Condition<'s>]) -> Option<(&'s str, String)> {
    let [brand, low, high] = conditions else { return None };
    if brand.property != Property::Brand || brand.op != Op::Eq {
        return None;
    }
    let number = |c: &Condition, op: Op| -> Option<u64> {
        (c.property == Property::Driver && c.op == op).then(|| c.value.parse().ok()).flatten()
    };
    let (n, m) = (number(low, Op::Ge)?, number(high, Op::Lt)?);
    (m == n + 1).then(|| (brand.value, format!("{n}.x")))
}

#[cfg(test)]
#[path = "nvidia_tests.rs"]
mod tests;
