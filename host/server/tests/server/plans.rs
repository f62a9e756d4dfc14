//! VM requests through `POST /v1/plans`: a table of requests with the findings and suggestions
//! each must get, the property that taking every suggestion yields a valid request, the site's
//! validator plugins, and hostile ones contained.
//!
//! The catalog is made through the API (applications, model VMs) and the store (staged VMs:
//! staging itself is tested with real images in `staging.rs`; here only the records matter).
//! Hosts join through the agent protocol.

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use slipway_core::catalog::ModelVmSpec;
use slipway_core::resources::{FoundOs, Image, ImageFormat, ImageKind, StagedVm, Timestamp};
use slipway_test_artifacts as artifacts;

use crate::hosts::{first_party_plugins, join, join_token, report};
use crate::support::{Reply, TestApp};

fn digest(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

async fn fake_image(app: &TestApp, n: u8, kind: ImageKind, mib: u64) -> String {
    let id = digest(n);
    app.app
        .store
        .insert_image(&Image {
            id: id.clone(),
            name: format!("image-{n}"),
            kind,
            format: if kind == ImageKind::Disk {
                ImageFormat::Qcow2
            } else {
                ImageFormat::Blob
            },
            source_format: ImageFormat::Raw,
            source_sha256: None,
            virtual_size: Some(mib << 20),
            stored_size: 1 << 20,
            allocated_size: 1 << 20,
            created_at: Timestamp::now(),
        })
        .await
        .unwrap();
    id
}

/// A model VM through the API, and a staged VM of it in the store.
async fn staged(app: &TestApp, model: Value, init: &str) {
    let reply = app.post("/v1/model-vms", model.clone()).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let spec: ModelVmSpec = serde_json::from_value(model).unwrap();
    let image = spec.hardware.disks[0].image.clone().unwrap();
    let staged = StagedVm {
        id: slipway_store::new_id(),
        name: format!("{}-staged", spec.name),
        job: "test".into(),
        model_vm: reply.body["id"].as_str().unwrap().to_owned(),
        model_revision: 1,
        image: image.clone(),
        hardware: spec.hardware.clone(),
        os: FoundOs {
            family: spec.os.family.as_str().to_owned(),
            distro: spec.os.distro.clone(),
            version: spec.os.version.clone(),
            arch: spec.os.arch.as_str().to_owned(),
            init_system: init.to_owned(),
        },
        first_boot: "cloud-init".into(),
        plugin: "identity-linux@0.1.0".into(),
        operations: vec![],
        applications: spec.applications.clone(),
        created_at: Timestamp::now(),
    };
    let record = app.app.store.image(&image).await.unwrap();
    app.app
        .store
        .insert_staged_vm(&record, &staged)
        .await
        .unwrap();
}

fn model(
    name: &str,
    (distro, version): (&str, &str),
    family: &str,
    firmware: &str,
    disk: (&str, u64),
    apps: Value,
) -> Value {
    json!({
        "name": name,
        "hardware": {"vcpus": 2, "memory_mib": 2048, "firmware": firmware, "arch": "x86_64", "machine_type": "q35",
                     "disks": [{"size_mib": disk.1, "bus": "nvme", "image": disk.0}], "nics": [{"model": "virtio"}]},
        "os": {"family": family, "distro": distro, "version": version, "arch": "x86_64"},
        "applications": apps,
    })
}

/// The catalog: Debian 12 (nginx installed), Debian 11, a busybox test guest, Windows 11 (UEFI
/// only); nginx 1.22 and 1.24 and redis for Linux, a Windows-only bundle. Hosts: two on rack a
/// (8 CPUs, 16 GiB), one big one on rack b (4 CPUs, 96 GiB), one drained.
pub(crate) async fn world(adjust: impl FnOnce(&mut slipway_server::config::Config)) -> TestApp {
    let plugins = tempfile::tempdir().unwrap().keep();
    let dir = first_party_plugins(&plugins);
    std::os::unix::fs::symlink(artifacts::VALIDATE_BASIC.dir, dir.join("validate-basic")).unwrap();
    let app = TestApp::with(|c| {
        c.plugins = dir;
        adjust(c);
    })
    .await;
    let (d12, d11, tiny, win) = (
        fake_image(&app, 1, ImageKind::Disk, 4096).await,
        fake_image(&app, 2, ImageKind::Disk, 3072).await,
        fake_image(&app, 3, ImageKind::Disk, 64).await,
        fake_image(&app, 4, ImageKind::Disk, 32768).await,
    );
    let bundle = fake_image(&app, 5, ImageKind::Artifact, 1).await;
    let apt = |p: &str| json!([{"os_family": "linux", "method": {"kind": "packages", "manager": "apt", "packages": [p]}}]);
    for app_spec in [
        json!({"name": "nginx", "version": "1.22", "recipes": apt("nginx")}),
        json!({"name": "nginx", "version": "1.24", "recipes": apt("nginx")}),
        json!({"name": "redis", "version": "7.0", "recipes": apt("redis-server")}),
        json!({"name": "wintool", "version": "2.0", "recipes": [{"os_family": "windows",
            "method": {"kind": "bundle", "artifact": bundle, "install_script": "install.ps1"}}]}),
    ] {
        let r = app.post("/v1/applications", app_spec).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    staged(
        &app,
        model(
            "debian-12",
            ("debian", "12"),
            "linux",
            "bios",
            (&d12, 4096),
            json!([{"name": "nginx", "version": "1.22"}]),
        ),
        "systemd",
    )
    .await;
    staged(
        &app,
        model(
            "debian-11",
            ("debian", "11"),
            "linux",
            "bios",
            (&d11, 3072),
            json!([]),
        ),
        "systemd",
    )
    .await;
    staged(
        &app,
        model(
            "tiny",
            ("slipway-test", "1"),
            "linux",
            "bios",
            (&tiny, 64),
            json!([]),
        ),
        "busybox",
    )
    .await;
    staged(
        &app,
        model(
            "win-11",
            ("windows", "11"),
            "windows",
            "uefi",
            (&win, 32768),
            json!([]),
        ),
        "unknown",
    )
    .await;
    let token = join_token(&app, json!({}), None).await;
    join(
        &app,
        &token,
        "a-1",
        report(8, 16384, 204800, &[("rack", "a")]),
    )
    .await;
    join(
        &app,
        &token,
        "a-2",
        report(8, 16384, 204800, &[("rack", "a")]),
    )
    .await;
    let big = {
        let mut r = report(4, 98304, 204800, &[("rack", "b")]);
        r["features"] = json!(["uefi"]);
        r
    };
    join(&app, &token, "b-1", big).await;
    let drained = join(
        &app,
        &token,
        "a-3",
        report(64, 262144, 204800, &[("rack", "a")]),
    )
    .await;
    let r = app
        .call(
            Method::PATCH,
            &format!("/v1/hosts/{}", drained.id),
            Some(&app.admin),
            Some(json!({"mode": "draining"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    app
}

pub(crate) async fn plan_as(app: &TestApp, token: &str, body: Value) -> Reply {
    app.call(Method::POST, "/v1/plans", Some(token), Some(body))
        .await
}

fn findings(reply: &Reply) -> Vec<Value> {
    reply.body["findings"]
        .as_array()
        .cloned()
        .or_else(|| reply.body["plan"]["findings"].as_array().cloned())
        .unwrap_or_default()
}

/// The finding of `code` in a 422 answer; `what` names the case when it is not there.
fn refused_with(reply: &Reply, code: &str, what: &str) -> Value {
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{what}: {}",
        reply.body
    );
    let f = findings(reply);
    f.iter()
        .find(|x| x["code"] == code)
        .cloned()
        .unwrap_or_else(|| panic!("{what}: no {code} in {f:?}"))
}

/// One row: a request, whether it is valid, and findings it must have: (field, code,
/// suggestion; `None` for "any or none").
struct Row {
    what: &'static str,
    body: Value,
    valid: bool,
    expect: Vec<(&'static str, &'static str, Option<Value>)>,
}

fn row(
    what: &'static str,
    body: Value,
    valid: bool,
    expect: Vec<(&'static str, &'static str, Option<Value>)>,
) -> Row {
    Row {
        what,
        body,
        valid,
        expect,
    }
}

#[tokio::test]
async fn a_table_of_requests_gets_the_findings_and_suggestions_it_should() {
    let app = world(|_| {}).await;
    let debian12 = json!({"distro": "debian", "version": "12"});
    let rows = vec![
        row(
            "valid: the staged VM has the app",
            json!({"os": debian12, "applications": ["nginx"]}),
            true,
            vec![],
        ),
        row(
            "units: 8 GB is explained",
            json!({"os": debian12, "hardware": {"memory": "8 GB"}}),
            false,
            vec![("hardware.memory", "decimal-unit", Some(json!("8GiB")))],
        ),
        row(
            "units: 8GiB and 8192 are the same",
            json!({"os": debian12, "hardware": {"memory": 8192}}),
            true,
            vec![],
        ),
        row(
            "below the OS's minimum",
            json!({"os": {"family": "windows"}, "hardware": {"memory": "1GiB"}}),
            false,
            vec![("hardware.memory", "below-os-minimum", Some(json!("4GiB")))],
        ),
        row(
            "UEFI-only OS with BIOS",
            json!({"os": {"family": "windows", "version": "11"}, "hardware": {"firmware": "bios", "memory": "4GiB"}}),
            false,
            vec![("hardware.firmware", "uefi-only", Some(json!("uefi")))],
        ),
        row(
            "disk smaller than the staged image",
            json!({"os": debian12, "hardware": {"disks": [{"size": "1GiB"}]}}),
            false,
            vec![(
                "hardware.disks[0].size",
                "disk-too-small",
                Some(json!("4GiB")),
            )],
        ),
        row(
            "app not available for the OS",
            json!({"os": {"family": "windows"}, "hardware": {"memory": "4GiB"}, "applications": ["redis"]}),
            false,
            vec![(
                "applications[0]",
                "app-not-available-for-os",
                Some(Value::Null),
            )],
        ),
        row(
            "unknown app, with the nearest name",
            json!({"os": debian12, "applications": ["ngnix"]}),
            false,
            vec![("applications[0].name", "unknown-app", Some(json!("nginx")))],
        ),
        row(
            "unknown app version",
            json!({"os": debian12, "applications": [{"name": "redis", "version": "9"}]}),
            false,
            vec![(
                "applications[0].version",
                "unknown-app-version",
                Some(json!("7.0")),
            )],
        ),
        row(
            "arch mismatch",
            json!({"os": debian12, "hardware": {"arch": "aarch64"}}),
            false,
            vec![("hardware.arch", "arch-mismatch", Some(json!("x86_64")))],
        ),
        row(
            "more NICs than the machine has slots for",
            json!({"os": debian12, "hardware": {
                "machine_type": "pc",
                "disks": std::iter::once(json!({})).chain((0..15).map(|_| json!({"size": "1GiB", "bus": "virtio"}))).collect::<Vec<_>>(),
                "nics": (0..16).map(|_| json!({"model": "virtio"})).collect::<Vec<_>>()}}),
            false,
            vec![("hardware.nics", "too-many-nics", None)],
        ),
        row(
            "infeasible ever: more memory than any host",
            json!({"os": debian12, "hardware": {"memory": "512GiB"}}),
            false,
            vec![(
                "hardware.memory",
                "exceeds-every-host",
                Some(json!("96GiB")),
            )],
        ),
        row(
            "a label no host has",
            json!({"os": debian12, "placement": {"labels": {"rack": "z"}}}),
            false,
            vec![(
                "placement.labels.rack",
                "no-host-with-label",
                Some(json!("a")),
            )],
        ),
        row(
            "ambiguous OS: the newest version, said",
            json!({"os": {"distro": "debian"}}),
            true,
            vec![("os.version", "ambiguous-os", Some(json!("12")))],
        ),
        row(
            "a version the catalog lacks",
            json!({"os": {"distro": "debian", "version": "13"}}),
            false,
            vec![("os.version", "no-staged-vm-for-os", Some(json!("12")))],
        ),
        row(
            "wrong OS family",
            json!({"os": {"family": "bsd"}}),
            false,
            vec![("os.family", "no-staged-vm-for-os", Some(json!("linux")))],
        ),
        row(
            "a requester pinning a host",
            json!({"os": debian12, "placement": {"host": "a-1"}}),
            false,
            vec![("placement.host", "admin-only", Some(Value::Null))],
        ),
        row(
            "a fixed hostname for three VMs",
            json!({"os": debian12, "hostname": "web", "count": 3}),
            false,
            vec![
                ("hostname", "hostname-with-count", Some(Value::Null)),
                (
                    "hostname_pattern",
                    "hostname-with-count",
                    Some(json!("web-{n}")),
                ),
            ],
        ),
        row(
            "more VMs than fit now",
            json!({"os": debian12, "hardware": {"memory": "12GiB"}, "count": 20,
                "hostname_pattern": "w-{n}", "placement": {"anti_affinity_group": "w"}}),
            false,
            vec![("count", "count-exceeds-room", Some(json!(3)))],
        ),
        row(
            "a typo'd field",
            json!({"os": debian12, "hardwre": {}}),
            false,
            vec![("hardwre", "unknown-field", Some(Value::Null))],
        ),
    ];
    let mut failures = Vec::new();
    for r in &rows {
        let reply = plan_as(&app, &app.requester, r.body.clone()).await;
        let found = findings(&reply);
        let status_ok = if r.valid {
            reply.status == StatusCode::OK
        } else {
            reply.status == StatusCode::UNPROCESSABLE_ENTITY && reply.problem() == "invalid-request"
        };
        if !status_ok {
            failures.push(format!(
                "{}: status {} {}",
                r.what, reply.status, reply.body
            ));
            continue;
        }
        for (field, code, suggestion) in &r.expect {
            let hit = found.iter().any(|f| {
                f["field"] == *field
                    && f["code"] == *code
                    && suggestion
                        .as_ref()
                        .is_none_or(|s| f.get("suggestion") == Some(s))
            });
            if !hit {
                failures.push(format!(
                    "{}: no {field} {code} {suggestion:?} in {}",
                    r.what,
                    serde_json::to_string_pretty(&found).unwrap()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    // A valid plan says everything, and claims nothing.
    let reply = plan_as(
        &app,
        &app.admin,
        json!({"os": debian12, "hardware": {"memory": "4GiB"}, "applications": ["nginx", "redis"],
               "hostname_pattern": "web-{n}", "count": 2, "placement": {"labels": {"rack": "a"}}}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let plan = &reply.body;
    assert_eq!(plan["valid"], true);
    eprintln!("a valid plan took {} µs", plan["elapsed_us"]);
    assert_eq!(plan["staged_vm"]["chosen"]["name"], "debian-12-staged");
    assert_eq!(plan["staged_vm"]["runner_up"]["name"], "debian-11-staged");
    let parts = plan["staged_vm"]["chosen"]["parts"].as_array().unwrap();
    assert!(
        parts.iter().any(|p| p["criterion"] == "applications"
            && p["detail"]
                .as_str()
                .unwrap()
                .contains("1 of 2 asked installed: nginx 1.22")),
        "{parts:?}"
    );
    assert_eq!(
        plan["install"],
        json!([{"name": "redis", "version": "7.0",
        "method": {"kind": "packages", "manager": "apt", "packages": ["redis-server"]}}])
    );
    assert_eq!(plan["hardware"]["memory_mib"], 4096);
    assert_eq!(plan["hardware"]["disks"][0]["size_mib"], 4096);
    let host = plan["placement"]["host"]["name"].as_str().unwrap();
    assert!(host.starts_with("a-"), "{host}");
    let ids = plan["identities"].as_array().unwrap();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0]["hostname"], "web-1");
    assert_eq!(ids[1]["hostname"], "web-2");
    assert!(ids[0]["macs"][0].as_str().unwrap().starts_with("52:54:00:"));
    assert_ne!(ids[0]["uuid"], ids[1]["uuid"]);
    let claims = app.get("/v1/claims").await;
    assert_eq!(claims.body["items"], json!([]), "a plan claims nothing");

    // Infeasible now (not ever): the big host's memory is claimed.
    let claim = app
        .post(
            "/v1/placements",
            json!({"request": {"vcpus": 1, "memory_mib": 65536, "arch": "x86_64", "required_labels": {"rack": "b"}}, "confirmed": true}),
        )
        .await;
    assert_eq!(claim.status, StatusCode::CREATED, "{}", claim.body);
    let reply = plan_as(
        &app,
        &app.requester,
        json!({"os": debian12, "hardware": {"memory": "64GiB"}}),
    )
    .await;
    let now = refused_with(&reply, "exceeds-free-now", "infeasible now");
    assert_eq!(now["field"], "hardware.memory");
    assert!(
        now["message"].as_str().unwrap().contains("the largest free is 32 GiB on 1 host (1 more are unreachable, draining or in maintenance)"),
        "{now}"
    );
    assert_eq!(now["suggestion"], "32GiB");
    // All findings at once, errors first; the detail line names the first.
    assert!(
        reply.body["detail"]
            .as_str()
            .unwrap()
            .starts_with("1 error: hardware.memory")
    );
}

/// A small deterministic generator, so that a failure names its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[(self.next() % items.len() as u64) as usize].clone()
    }
}

/// Mistakes a requester makes, each applied to a valid request.
fn mistake(rng: &mut Rng, body: &mut Value) {
    let which = rng.next() % 16;
    let set = |body: &mut Value, path: &[&str], v: Value| {
        let mut at = body;
        for (i, key) in path.iter().enumerate() {
            if i + 1 == path.len() {
                at[*key] = v;
                return;
            }
            if !at[*key].is_object() {
                at[*key] = json!({});
            }
            at = &mut at[*key];
        }
    };
    match which {
        0 => set(
            body,
            &["hardware", "memory"],
            json!(format!("{} GB", rng.pick(&[2, 4, 8]))),
        ),
        1 => set(
            body,
            &["hardware", "vcpus"],
            rng.pick(&[json!(0), json!(5000), json!("two"), json!(2.5)]),
        ),
        2 => set(body, &["hardwre"], json!({"vcpus": 2})),
        3 => set(
            body,
            &["hardware", "arch"],
            rng.pick(&[json!("x86"), json!("aarch64"), json!("sparc")]),
        ),
        4 => set(
            body,
            &["os", "version"],
            rng.pick(&[json!("13"), json!(""), json!("11")]),
        ),
        5 => set(
            body,
            &["os", "distro"],
            rng.pick(&[json!("ubunto"), json!("Debian"), json!("fedora")]),
        ),
        6 => set(
            body,
            &["applications"],
            json!(["ngnix", {"name": "redis", "version": "9"}]),
        ),
        7 => set(
            body,
            &["hostname"],
            rng.pick(&[json!("Bad_Name!"), json!("-x-"), json!(42)]),
        ),
        8 => {
            set(body, &["count"], json!(3));
            set(body, &["hostname"], json!("web"));
        }
        9 => set(
            body,
            &["hardware", "memory"],
            rng.pick(&[json!("512GiB"), json!("4TiB"), json!(1)]),
        ),
        10 => set(
            body,
            &["hardware", "firmware"],
            rng.pick(&[json!("uefi"), json!("efi")]),
        ),
        11 => set(
            body,
            &["hardware", "disks"],
            json!([{"size": rng.pick(&["1GiB", "2 GB", "10MiB"])}]),
        ),
        12 => set(
            body,
            &["placement", "labels"],
            json!({"rack": rng.pick(&["z", "c"])}),
        ),
        13 => set(body, &["placement", "host"], json!("a-1")),
        14 => set(
            body,
            &["hardware", "nics"],
            json!([{"model": "virtio", "network": "back"}]),
        ),
        _ => set(
            body,
            &["count"],
            rng.pick(&[json!(0), json!(1000), json!(40)]),
        ),
    }
}

#[tokio::test]
async fn taking_every_suggestion_of_an_invalid_request_yields_a_valid_one() {
    let app = world(|_| {}).await;
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut invalid = 0;
    for case in 0..60 {
        let mut body = json!({"os": {"distro": "debian", "version": "12"}, "hardware": {"memory": "2GiB"},
                              "applications": ["nginx"]});
        for _ in 0..=(rng.next() % 3) {
            mistake(&mut rng, &mut body);
        }
        let reply = plan_as(&app, &app.requester, body.clone()).await;
        let took = reply.body["elapsed_us"]
            .as_u64()
            .or(reply.body["plan"]["elapsed_us"].as_u64());
        eprintln!("generated request {case}: {} in {took:?} µs", reply.status);
        if reply.status == StatusCode::OK {
            continue;
        }
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            reply.body
        );
        invalid += 1;
        let found: Vec<slipway_core::request::Finding> =
            serde_json::from_value(json!(findings(&reply))).unwrap();
        let mut fixed = body.clone();
        slipway_core::request::apply_suggestions(&mut fixed, &found);
        let again = plan_as(&app, &app.requester, fixed.clone()).await;
        assert_eq!(
            again.status,
            StatusCode::OK,
            "case {case}: {body}\nfindings: {}\nwith the suggestions: {fixed}\nstill: {}",
            serde_json::to_string_pretty(&found).unwrap(),
            serde_json::to_string_pretty(&findings(&again)).unwrap()
        );
    }
    assert!(
        invalid >= 40,
        "only {invalid} of 60 generated requests were invalid"
    );
}

async fn set_validators(app: &TestApp, body: Value) -> Reply {
    app.call(
        Method::PUT,
        "/v1/validation/validators",
        Some(&app.admin),
        Some(body),
    )
    .await
}

#[tokio::test]
async fn site_policy_from_validate_basic_is_merged_with_slipways_findings() {
    let app = world(|_| {}).await;
    // Without configuration every loaded validator runs, and allows everything.
    let view = app.get("/v1/validation/validators").await;
    assert_eq!(
        view.body["running"],
        json!(["validate-basic@0.1.0"]),
        "{}",
        view.body
    );
    let reply = set_validators(
        &app,
        json!({"validators": [{"plugin": "validate-basic", "config": {
            "roles": {"requester": {"max-vcpus": 4, "max-memory-mib": 8192}},
            "allowed-os": ["linux/debian/12"],
            "required-labels": ["rack=a"]}}]}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let body = json!({"os": {"distro": "debian", "version": "11"}, "hardware": {"vcpus": 8, "memory": "16 GB"}});
    let reply = plan_as(&app, &app.requester, body.clone()).await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    let f = findings(&reply);
    let has = |field: &str, source: &str, suggestion: Value| {
        assert!(
            f.iter().any(|x| x["field"] == field
                && x["source"] == source
                && x["suggestion"] == suggestion),
            "{field} {source} {suggestion} not in {}",
            serde_json::to_string_pretty(&f).unwrap()
        )
    };
    // "16 GB" would be 16GiB, but the site allows 8 GiB: the suggestion is what passes both.
    has("hardware.memory", "schema", json!(8192));
    has("hardware.vcpus", "plugin:validate-basic", json!(4));
    has("os.version", "plugin:validate-basic", json!("12"));
    has("placement.labels.rack", "plugin:validate-basic", json!("a"));
    // Taking the suggestions satisfies Slipway and the site alike.
    let found: Vec<slipway_core::request::Finding> = serde_json::from_value(json!(f)).unwrap();
    let mut fixed = body;
    slipway_core::request::apply_suggestions(&mut fixed, &found);
    let again = plan_as(&app, &app.requester, fixed.clone()).await;
    assert_eq!(again.status, StatusCode::OK, "{fixed}: {}", again.body);
    // Limits are per role: an admin is not bound by the requester's.
    let admin = plan_as(&app, &app.admin, json!({"os": {"distro": "debian", "version": "12"}, "hardware": {"vcpus": 8}, "placement": {"labels": {"rack": "a"}}})).await;
    assert_eq!(admin.status, StatusCode::OK, "{}", admin.body);
    // A bad policy is refused whole, naming its field.
    let bad = set_validators(
        &app,
        json!({"validators": [{"plugin": "validate-basic", "config": {"roles": {"boss": {}}}}]}),
    )
    .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.body);
    assert_eq!(bad.body["errors"][0]["field"], "validators[0].config");
    let wrong = set_validators(&app, json!({"validators": [{"plugin": "capacity-filter"}]})).await;
    assert_eq!(
        wrong.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        wrong.body
    );
    let forbidden = app
        .call(
            Method::PUT,
            "/v1/validation/validators",
            Some(&app.operator),
            Some(json!({"validators": []})),
        )
        .await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn hostile_validators_are_contained_and_reported() {
    let app = world(|_| {}).await;
    let manifest = std::fs::read_to_string(
        std::path::Path::new(artifacts::TEST_PLUGIN_HOSTILE_VALIDATOR.dir).join("plugin.toml"),
    )
    .unwrap();
    let wasm = std::fs::read(artifacts::TEST_PLUGIN_HOSTILE_VALIDATOR.wasm).unwrap();
    let reply = app
        .send(crate::hosts::plugin_upload(
            &app,
            "hostile-validator",
            &manifest,
            wasm,
        ))
        .await;
    assert!(reply.status.is_success(), "{}", reply.body);
    let body = json!({"os": {"distro": "debian", "version": "12"}});
    for (mode, expect) in [
        ("loop", "exceeded its deadline"),
        ("trap", "trapped"),
        ("flood", "memory limit"),
        ("many", "5000 findings; at most 1000"),
    ] {
        let set = set_validators(
            &app,
            json!({"validators": [{"plugin": "validate-basic"}, {"plugin": "hostile-validator", "config": {"mode": mode}}]}),
        )
        .await;
        assert_eq!(set.status, StatusCode::OK, "{}", set.body);
        let started = std::time::Instant::now();
        let reply = plan_as(&app, &app.requester, body.clone()).await;
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{mode} took {:?}",
            started.elapsed()
        );
        let failed = refused_with(&reply, "validator-failed", mode);
        assert_eq!(failed["source"], "plugin:hostile-validator");
        assert!(
            failed["message"].as_str().unwrap().contains(expect),
            "{mode}: {failed}"
        );
        let runs = reply.body["plan"]["validators"].as_array().unwrap();
        assert_eq!(
            runs[0]["error"],
            Value::Null,
            "the other validator ran: {runs:?}"
        );
        assert!(runs[1]["error"].as_str().unwrap().contains(expect));
    }
    // Findings on fields the request does not have are kept, moved to the request as a whole.
    set_validators(
        &app,
        json!({"validators": [{"plugin": "hostile-validator", "config": {"mode": "nowhere"}}]}),
    )
    .await;
    let reply = plan_as(&app, &app.requester, body.clone()).await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    let f = findings(&reply);
    let nowhere: Vec<&Value> = f
        .iter()
        .filter(|x| x["code"] == "plugin-unknown-field")
        .collect();
    assert_eq!(nowhere.len(), 2, "{f:?}");
    assert!(nowhere.iter().all(|x| x["field"] == ""));
    assert!(
        nowhere[0]["message"]
            .as_str()
            .unwrap()
            .contains("\"no-such-field\"")
    );
    // A 16 MiB message is refused by the runtime before it is copied out.
    set_validators(
        &app,
        json!({"validators": [{"plugin": "hostile-validator", "config": {"mode": "huge"}}]}),
    )
    .await;
    let reply = plan_as(&app, &app.requester, body.clone()).await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    let failed = findings(&reply)
        .into_iter()
        .find(|x| x["code"] == "validator-failed")
        .unwrap();
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("too much data"),
        "{failed}"
    );
    assert!(failed["message"].as_str().unwrap().len() < 2048);
    // And the server keeps serving: back to a well-behaved validator, plans work.
    set_validators(
        &app,
        json!({"validators": [{"plugin": "hostile-validator", "config": {"mode": "ok"}}]}),
    )
    .await;
    let reply = plan_as(&app, &app.requester, body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
}
