//! `slipway place`, run as a user runs it, against the real plugins built to WebAssembly.

use std::path::Path;
use std::process::{Command, Output};

use slipway_test_artifacts as artifacts;

/// The directory holding every built plugin directory.
fn plugins_dir() -> &'static Path {
    Path::new(artifacts::CAPACITY_FILTER.dir).parent().unwrap()
}

fn slipway(args: &[&str]) -> Output {
    let cache = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_slipway"))
        .arg("place")
        .arg("--plugins")
        .arg(plugins_dir())
        .args(args)
        .env("SLIPWAY_CACHE_DIR", cache.path())
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn place_chooses_a_host_and_explains_the_rest() {
    let out = slipway(&["--hosts", "300", "--label", "tier=gold"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("capacity-filter → label-filter → binpack-score"),
        "{stdout}"
    );
    assert!(stdout.contains("/300 hosts fit: "), "{stdout}");
    assert!(stdout.contains("missing label (label-filter)"), "{stdout}");
    assert!(stdout.contains("chosen: host-"), "{stdout}");
}

#[test]
fn place_says_when_nothing_fits_and_exits_1() {
    let out = slipway(&["--hosts", "50", "--memory-mib", "99999999"]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("0/50 hosts fit"), "{stdout}");
    assert!(
        stdout.contains("insufficient memory (capacity-filter)"),
        "{stdout}"
    );
    assert!(stdout.contains("no host can take this VM"), "{stdout}");
}

#[test]
fn place_reads_a_fleet_from_json() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = dir.path().join("fleet.json");
    std::fs::write(
        &fleet,
        r#"[
          { "id": "small", "arch": "x86_64", "vcpus_total": 4, "memory_total_mib": 4096, "disk_total_mib": 100000 },
          { "id": "big", "arch": "x86_64", "vcpus_total": 64, "memory_total_mib": 262144, "disk_total_mib": 100000 }
        ]"#,
    )
    .unwrap();
    let out = slipway(&["--fleet", fleet.to_str().unwrap(), "--memory-mib", "8192"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("1/2 hosts fit: 1 insufficient memory"),
        "{stdout}"
    );
    assert!(stdout.contains("chosen: big"), "{stdout}");
}

#[test]
fn bad_input_gets_a_clear_error() {
    let out = slipway(&["--label", "no-equals-sign"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("must be written key=value"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let fleet = dir.path().join("fleet.json");
    std::fs::write(&fleet, r#"[{ "id": "x", "arch": "x86_64", "vcpus": 4 }]"#).unwrap();
    let out = slipway(&["--fleet", fleet.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("unknown field `vcpus`"), "{stderr}");
}
