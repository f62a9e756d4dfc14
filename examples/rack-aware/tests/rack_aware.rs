//! The site's plugin, compiled to WebAssembly and run in Slipway's real runtime by the SDK's
//! harness, against the JSON fixtures beside this file.

use std::path::Path;
use std::sync::OnceLock;

use slipway_plugin_sdk::harness::Harness;

/// The plugin is built once for all tests of this binary.
fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        Harness::build_crate(Path::new(env!("CARGO_MANIFEST_DIR"))).expect("building the plugin")
    })
}

#[test]
fn every_fixture_holds() {
    let harness = harness();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let checked = harness.check_dir(&dir).expect("fixtures");
    assert_eq!(checked, 3, "every fixture in {} ran", dir.display());
}

#[test]
fn a_negative_weight_is_refused_by_the_plugin() {
    let harness = harness();
    let err = harness
        .run_json(
            r#"{ "config": { "rack-weight": -1 },
                 "request": { "vcpus": 1, "memory_mib": 1, "arch": "x86_64", "anti_affinity_group": "g" },
                 "hosts": [ { "id": "a", "arch": "x86_64", "vcpus_total": 1, "memory_total_mib": 1, "disk_total_mib": 1 } ] }"#,
        )
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("rack-weight and power-weight must not be negative"),
        "{err:#}"
    );
}

#[test]
fn a_wrong_expectation_fails_with_what_differed() {
    let fixture: slipway_plugin_sdk::harness::Fixture = serde_json::from_str(
        r#"{ "request": { "vcpus": 1, "memory_mib": 1, "arch": "x86_64", "anti_affinity_group": "g" },
             "hosts": [
               { "id": "a", "arch": "x86_64", "vcpus_total": 1, "memory_total_mib": 1, "disk_total_mib": 1,
                 "labels": { "rack": "r1" }, "groups": ["g"] },
               { "id": "b", "arch": "x86_64", "vcpus_total": 1, "memory_total_mib": 1, "disk_total_mib": 1,
                 "labels": { "rack": "r2" } } ],
             "expect": { "chosen": "a" } }"#,
    )
    .unwrap();
    let err = harness().check(&fixture).unwrap_err().to_string();
    assert_eq!(err, r#"expected a to be chosen; ranking was ["b", "a"]"#);
}
