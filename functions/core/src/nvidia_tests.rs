//! The evaluator against every example of the toolkit's own tests, and against NVIDIA's real `NVIDIA_REQUIRE_CUDA`
//! strings (functions/core/testdata/nvidia_require_cuda.json, with their source).

use super::*;

fn facts(features: &[&str]) -> GpuFacts {
    GpuFacts::of(features)
}

fn nvidia_string(version: &str) -> String {
    let all: serde_json::Value =
        serde_json::from_str(include_str!("../testdata/nvidia_require_cuda.json")).expect("fixture is JSON");
    all[version].as_str().expect("fixture has the version").to_owned()
}

fn requirement(text: &str) -> Requirements {
    Requirements { expressions: vec![text.to_owned()] }
}

fn runs(r: &Requirements, features: &[&str]) -> bool {
    matches!(r.check(&facts(features)), Check::Runs { .. })
}

/// nvidia-container-toolkit internal/requirements/constraints/factory_test.go `TestParse`: one condition each.
#[test]
fn toolkit_parse_examples() {
    let c = |property, op, value| Ok(vec![vec![Condition { property, op, value }]]);
    // "empty is nil"
    assert_eq!(parse(""), Ok(vec![]));
    // "missing operator is invalid"
    assert!(parse("notvalid").is_err());
    // "invalid property is invalid": the Go factory skips it (nil, no error); dsl.c has no rule for it and fails
    // with "invalid expression". Malformed here: refused by the legacy runtime.
    assert!(parse("foo=45").is_err());
    // "cuda must be semver"
    assert!(parse("cuda=foo").is_err());
    assert_eq!(parse("cuda>=11.6"), c(Property::Cuda, Op::Ge, "11.6"));
    assert_eq!(parse("cuda>11.6"), c(Property::Cuda, Op::Gt, "11.6"));
    assert_eq!(parse("cuda<=11.6"), c(Property::Cuda, Op::Le, "11.6"));
    assert_eq!(parse("cuda<11.6"), c(Property::Cuda, Op::Lt, "11.6"));
    assert_eq!(parse("cuda=11.6"), c(Property::Cuda, Op::Eq, "11.6"));
    assert_eq!(parse("cuda!=11.6"), c(Property::Cuda, Op::Ne, "11.6"));
}

/// factory_test.go `TestNewConstraintFromRequirement`. Its descriptions say "space-separated is and" and
/// "comma-separated is or", but the factory builds OR over spaces and AND over commas (its `EqualValues` does not
/// tell the two slice types apart); the README and dsl.c agree: spaces OR, commas AND.
#[test]
fn toolkit_requirement_examples() {
    let cond = |property, op, value| Condition { property, op, value };
    // "empty is nil"
    assert_eq!(parse(""), Ok(vec![]));
    // "malformed constraint is invalid"
    assert!(parse("notvalid").is_err());
    // "unsupported property is ignored" (Go) — an invalid expression for nvidia-container-cli: malformed here.
    assert!(parse("cuda>=11.6 foo=bar").is_err());
    assert!(requirement("cuda>=11.6 foo=bar").malformed().unwrap().contains("foo"));
    // "space-separated is and": in truth OR of two alternatives.
    assert_eq!(
        parse("cuda>=11.6 arch=5.3"),
        Ok(vec![vec![cond(Property::Cuda, Op::Ge, "11.6")], vec![cond(Property::Arch, Op::Eq, "5.3")]])
    );
    assert!(runs(&requirement("cuda>=11.6 arch=5.3"), &["cuda:11.6"]));
    assert!(runs(&requirement("cuda>=11.6 arch=5.3"), &["cuda:11.0", "nvcap:5.3"]));
    assert!(!runs(&requirement("cuda>=11.6 arch=5.3"), &["cuda:11.0", "nvcap:5.2"]));
    // "comma-separated is or": in truth AND.
    assert_eq!(
        parse("cuda>=11.6,arch=5.3"),
        Ok(vec![vec![cond(Property::Cuda, Op::Ge, "11.6"), cond(Property::Arch, Op::Eq, "5.3")]])
    );
    assert!(!runs(&requirement("cuda>=11.6,arch=5.3"), &["cuda:11.6"]));
    assert!(runs(&requirement("cuda>=11.6,arch=5.3"), &["cuda:11.6", "nvcap:5.3"]));
    // "and takes precedence"
    assert_eq!(
        parse("cuda<13.6 cuda>=11.6,arch=5.3"),
        Ok(vec![
            vec![cond(Property::Cuda, Op::Lt, "13.6")],
            vec![cond(Property::Cuda, Op::Ge, "11.6"), cond(Property::Arch, Op::Eq, "5.3")]
        ])
    );
    assert!(runs(&requirement("cuda<13.6 cuda>=11.6,arch=5.3"), &["cuda:12.0"]));
    assert!(runs(&requirement("cuda<13.6 cuda>=11.6,arch=5.3"), &["cuda:13.6", "nvcap:5.3"]));
    assert!(!runs(&requirement("cuda<13.6 cuda>=11.6,arch=5.3"), &["cuda:13.6", "nvcap:8.0"]));
}

/// logical_test.go `TestANDConstraint` / `TestORConstraint`, as requirement strings: "empty is always true" (AND of
/// no requirement), one true, one false, both true, mixed.
#[test]
fn toolkit_logical_examples() {
    let machine = ["cuda:12.2"];
    let (yes, no) = ("cuda>=12.0", "cuda>=13.0");
    let all = |exprs: &[&str]| Requirements { expressions: exprs.iter().map(|e| e.to_string()).collect() };
    // AND: separate NVIDIA_REQUIRE_* variables (and commas)
    assert!(runs(&all(&[]), &machine));
    assert!(runs(&all(&[yes]), &machine));
    assert!(!runs(&all(&[no]), &machine));
    assert!(runs(&all(&[yes, yes]), &machine));
    assert!(!runs(&all(&[yes, no]), &machine));
    assert!(!runs(&all(&[no, yes]), &machine));
    assert!(!runs(&requirement(&format!("{no},{yes}")), &machine));
    // OR: spaces
    assert!(runs(&requirement(yes), &machine));
    assert!(!runs(&requirement(no), &machine));
    assert!(runs(&requirement(&format!("{yes} {yes}")), &machine));
    assert!(runs(&requirement(&format!("{yes} {no}")), &machine));
    assert!(runs(&requirement(&format!("{no} {yes}")), &machine));
}

/// internal/config/image/cuda_image_test.go `TestGetRequirements`, every case; and the requirement cases of the hook's
/// container_config_test.go.
#[test]
fn toolkit_get_requirements_examples() {
    let of = |env: &[&str]| Requirements::from_env(env.iter().copied()).expressions;
    assert!(of(&["NVIDIA_REQUIRE_JETPACK=csv-mounts=all"]).is_empty());
    assert!(of(&["NVIDIA_REQUIRE_JETPACK_HOST_MOUNTS=base-only"]).is_empty());
    assert_eq!(of(&["NVIDIA_REQUIRE_CUDA=cuda>=11.6"]), ["cuda>=11.6"]);
    let mut both = of(&["NVIDIA_REQUIRE_CUDA=cuda>=11.6", "NVIDIA_REQUIRE_BRAND=brand=tesla"]);
    both.sort();
    assert_eq!(both, ["brand=tesla", "cuda>=11.6"]);
    assert_eq!(of(&["CUDA_VERSION=11.6"]), ["cuda>=11.6"]);
    let mut legacy = of(&["CUDA_VERSION=11.6", "NVIDIA_REQUIRE_BRAND=brand=tesla"]);
    legacy.sort();
    assert_eq!(legacy, ["brand=tesla", "cuda>=11.6"]);
    assert!(
        of(&["NVIDIA_REQUIRE_CUDA=cuda>=11.6", "NVIDIA_REQUIRE_BRAND=brand=tesla", "NVIDIA_DISABLE_REQUIRE=true"])
            .is_empty()
    );
    assert!(of(&["CUDA_VERSION=11.6", "NVIDIA_REQUIRE_BRAND=brand=tesla", "NVIDIA_DISABLE_REQUIRE=true"]).is_empty());
    // cmd/nvidia-container-runtime-hook/container_config_test.go, the cases with requirements: collected as they are
    // (nvidia-container-cli then finds no rule for req0/req1: an invalid expression, malformed here)
    let hook = |env: &[&str]| {
        let mut r = of(env);
        r.sort();
        r
    };
    let reqs = ["NVIDIA_REQUIRE_REQ0=req0=true", "NVIDIA_REQUIRE_REQ1=req1=false"];
    assert_eq!(hook(&["CUDA_VERSION=9.0", reqs[0], reqs[1]]), ["cuda>=9.0", "req0=true", "req1=false"]);
    assert_eq!(hook(&["NVIDIA_REQUIRE_CUDA=cuda>=9.0", reqs[0], reqs[1]]), ["cuda>=9.0", "req0=true", "req1=false"]);
    assert!(hook(&["CUDA_VERSION=9.0", reqs[0], reqs[1], "NVIDIA_DISABLE_REQUIRE=true"]).is_empty());
    assert!(hook(&["NVIDIA_REQUIRE_CUDA=cuda>=9.0", reqs[0], reqs[1], "NVIDIA_DISABLE_REQUIRE=true"]).is_empty());
    assert_eq!(hook(&["CUDA_VERSION=9.0", "NVIDIA_REQUIRE_CUDA=cuda>=9.0"]), ["cuda>=9.0"]);
    assert!(hook(&["NVIDIA_VISIBLE_DEVICES=all"]).is_empty());
    assert!(Requirements::from_env(["CUDA_VERSION=9.0", reqs[0]]).malformed().unwrap().contains("req0"));
    // and around them: a legacy CUDA_VERSION keeps major.minor; DISABLE must parse as true; no variable, nothing
    assert_eq!(of(&["CUDA_VERSION=12.4.1"]), ["cuda>=12.4"]);
    assert_eq!(of(&["NVIDIA_REQUIRE_CUDA=cuda>=11.6", "NVIDIA_DISABLE_REQUIRE=no"]), ["cuda>=11.6"]);
    assert!(of(&["NVIDIA_REQUIRE_CUDA=cuda>=11.6", "NVIDIA_DISABLE_REQUIRE=1"]).is_empty());
    assert!(of(&["PATH=/usr/bin", "NVIDIA_VISIBLE_DEVICES=all"]).is_empty());
    assert!(of(&["NVIDIA_REQUIRE_CUDA="]).is_empty());
}

#[test]
fn versions_compare_numerically() {
    assert!(runs(&requirement("cuda>=12.4"), &["cuda:12.10"]));
    assert!(!runs(&requirement("cuda>=12.10"), &["cuda:12.4"]));
    assert!(runs(&requirement("cuda>=12.4.0"), &["cuda:12.4"]));
    assert!(runs(&requirement("cuda=12.4"), &["cuda:12.4.0"]));
    assert!(runs(&requirement("driver>=535,driver<536"), &["driver:535.129.03"]));
    assert!(!runs(&requirement("driver>=535,driver<536"), &["driver:536.0"]));
    assert!(runs(&requirement("driver>=470.57.02"), &["driver:470.103.01"]));
    assert!(runs(&requirement("arch>=7.0"), &["nvcap:8.0"]));
    assert!(!runs(&requirement("arch>=7.0"), &["nvcap:6.1"]));
    assert!(CudaVersion::parse("12.10") > CudaVersion::parse("12.4"));
}

#[test]
fn brands_compare_without_case_and_only_for_equality() {
    assert!(runs(&requirement("brand=TESLA"), &["gpu-brand:tesla"]));
    assert!(runs(&requirement("brand!=geforce"), &["gpu-brand:tesla"]));
    assert!(!runs(&requirement("brand=tesla"), &["gpu-brand:geforce"]));
    // a brand the machine does not state satisfies nothing
    assert!(!runs(&requirement("brand=tesla"), &["cuda:12.4"]));
    assert!(requirement("brand>=tesla").malformed().is_some());
    assert!(runs(&requirement("CUDA>=12.0"), &["cuda:12.2"]), "dsl.c finds rules without case");
}

#[test]
fn malformed_requirements_run_nowhere_and_say_why() {
    for bad in ["cuda", "cuda>=", "cuda=>12", "cuda==12", "cuda>=12.x", ">=12", "cuda>=1.2.3.4", "gpu=1"] {
        let r = requirement(bad);
        assert!(r.malformed().is_some(), "{bad}");
        match r.check(&facts(&["cuda:12.4", "driver:550.54.15", "gpu-brand:tesla"])) {
            Check::Misses(why) => assert!(why.contains("malformed"), "{bad}: {why}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
    // a legacy CUDA_VERSION that is no version: the hook fails ("failed to get requirements")
    assert!(Requirements::from_env(["CUDA_VERSION=latest"]).malformed().is_some());
    // empty pieces are skipped, as strsep and the Go factory skip them
    assert_eq!(parse("  cuda>=12.0,,driver>=1  "), parse("cuda>=12.0,driver>=1"));
}

#[test]
fn configs_are_read_and_non_configs_refused() {
    let config = br#"{"architecture":"amd64","config":{"Env":["PATH=/bin","NVIDIA_REQUIRE_CUDA=cuda>=12.4"]}}"#;
    assert_eq!(Requirements::from_config(config).unwrap().expressions, ["cuda>=12.4"]);
    assert!(Requirements::from_config(br#"{"architecture":"amd64"}"#).unwrap().is_empty());
    assert!(Requirements::from_config(b"<html>").is_err());
    assert!(Requirements::from_config(br#"{"config":{"Env":"x"}}"#).is_err());
    let long = format!("NVIDIA_REQUIRE_CUDA={}", "x".repeat(100_000));
    assert_eq!(Requirements::from_env([long.as_str()]).expressions[0].len(), MAX_REQUIREMENT_BYTES);
}

/// NVIDIA's 11.8, 12.1, 12.4 and 12.6 base images against driver branches with and without the datacenter brand.
#[test]
fn nvidia_base_images_against_driver_branches() {
    let images = ["11.8", "12.1", "12.4", "12.6"].map(|v| (v, requirement(&nvidia_string(v))));
    // (driver, the CUDA version nvidia-smi prints for it)
    let drivers = [
        ("470.239.06", "11.4"),
        ("525.147.05", "12.0"),
        ("535.183.01", "12.2"),
        ("550.127.05", "12.4"),
        ("560.35.03", "12.6"),
    ];
    let table: Vec<(&str, &str, Vec<&str>)> = vec![
        // (driver, brand, builds that start)
        ("470.239.06", "tesla", vec!["11.8", "12.1", "12.4", "12.6"]),
        ("470.239.06", "geforce", vec!["11.8", "12.1", "12.4"]),
        ("525.147.05", "tesla", vec!["11.8", "12.1", "12.4"]),
        ("525.147.05", "geforce", vec!["11.8", "12.1", "12.4"]),
        ("535.183.01", "tesla", vec!["11.8", "12.1", "12.4", "12.6"]),
        ("535.183.01", "geforce", vec!["11.8", "12.1", "12.4"]),
        ("550.127.05", "tesla", vec!["11.8", "12.1", "12.4", "12.6"]),
        ("550.127.05", "geforce", vec!["11.8", "12.1", "12.4"]),
        ("560.35.03", "tesla", vec!["11.8", "12.1", "12.4", "12.6"]),
        ("560.35.03", "geforce", vec!["11.8", "12.1", "12.4", "12.6"]),
    ];
    for (driver, brand, want) in table {
        let cuda = drivers.iter().find(|(d, _)| *d == driver).unwrap().1;
        let machine = [format!("cuda:{cuda}"), format!("driver:{driver}"), format!("gpu-brand:{brand}")];
        let got: Vec<&str> = images
            .iter()
            .filter(|(_, r)| matches!(r.check(&GpuFacts::of(&machine)), Check::Runs { .. }))
            .map(|(v, _)| *v)
            .collect();
        assert_eq!(got, want, "{driver} {brand}");
    }
    for (version, r) in &images {
        assert_eq!(r.cuda().to_string(), *version);
        assert!(r.malformed().is_none(), "{version}");
        // no GPU named: no CUDA build
        assert!(!runs(r, &[]), "{version}");
    }
}

#[test]
fn misses_say_what_is_needed_and_what_the_node_has() {
    let r = requirement(&nvidia_string("12.4"));
    let Check::Misses(why) = r.check(&facts(&["cuda:12.2", "driver:535.183.01"])) else {
        panic!("12.4 on a 12.2 driver of no stated brand should miss")
    };
    assert!(why.starts_with("needs cuda>=12.4 (or driver 470.x, 525.x, 535.x, with the compat libraries)"), "{why}");
    assert!(why.ends_with("this node's driver supports cuda 12.2 (driver 535.183.01)"), "{why}");
    let Check::Misses(why) = r.check(&facts(&["cuda:12.2", "driver:530.30.02", "gpu-brand:tesla"])) else {
        panic!("530 is no compat branch of 12.4")
    };
    assert!(why.contains("(or driver 470.x, 525.x, 535.x with the compat libraries)"), "{why}");
    assert!(why.contains("(driver 530.30.02, tesla)"), "{why}");
    // the forward-compatibility branch of the node's brand runs it
    assert!(runs(&r, &["cuda:12.2", "driver:535.183.01", "gpu-brand:tesla"]));
    let Check::Misses(why) = r.check(&facts(&[])) else { panic!("no driver, no CUDA build") };
    assert!(why.contains("names no GPU driver"), "{why}");
    assert_eq!(r.check(&facts(&["cuda:12.4"])), Check::Runs { cuda: CudaVersion { major: 12, minor: 4 } });
    // an index entry's cuda: feature applies too
    let both = Requirements::default().with_entry_cuda(CudaVersion { major: 12, minor: 6 });
    assert!(!runs(&both, &["cuda:12.4"]));
    assert!(runs(&both, &["cuda:12.6"]));
}
