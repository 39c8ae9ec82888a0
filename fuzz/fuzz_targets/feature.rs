//! Features and machine types from any text: no panic; a feature that parses prints as text that parses to the same
//! feature; a machine type that is accepted reads back the same from a store's JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metahub_core::machine::{Feature, MachineType, MatchMode, nearest_cpu_names};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let lenient = Feature::parse_lenient(s);
    match s.parse::<Feature>() {
        Ok(feature) => {
            assert_eq!(lenient, feature);
            let printed = feature.to_string();
            assert_eq!(printed.parse::<Feature>().ok(), Some(feature.clone()), "{s:?} printed as {printed:?}");
            assert!(!printed.contains(',') && !printed.chars().any(char::is_whitespace), "{printed:?}");
            if let Feature::Cpu(_) = feature {
                assert!(feature.microarchitecture().is_some());
            }
        }
        Err(_) => assert_eq!(lenient, Feature::Other(s.to_owned())),
    }
    if s.len() <= 256 {
        let _ = nearest_cpu_names(s);
    }

    // "name\nfeature\nfeature…", the mode from the length
    let mut lines = s.split('\n');
    let name = lines.next().unwrap_or_default();
    let features: Vec<String> = lines.map(str::to_owned).collect();
    let mode = if s.len() % 2 == 0 { MatchMode::Best } else { MatchMode::Exact };
    if let Ok(machine) = MachineType::new(name, features, mode) {
        // as a store keeps it (JSON) and reads it back
        let stored = serde_json::to_string(&machine).unwrap();
        assert_eq!(serde_json::from_str::<MachineType>(&stored).ok(), Some(machine.clone()), "{stored}");
        for f in machine.features().as_slice() {
            assert!(!matches!(f, Feature::Other(o) if o.starts_with("cpu:") || o.starts_with("nvcap:")), "{f:?}");
        }
    }
});
