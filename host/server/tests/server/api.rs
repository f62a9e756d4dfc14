//! The HTTP API through its router (no socket): every endpoint, with its error cases.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::support::{TestApp, qemu_img, raw_disk};

fn application(name: &str, version: &str) -> Value {
    json!({
        "name": name,
        "version": version,
        "description": "a web server",
        "recipes": [
            {"os_family": "linux", "distro": "debian",
             "method": {"kind": "packages", "manager": "apt", "packages": [name]}},
            {"os_family": "linux",
             "method": {"kind": "packages", "manager": "apk", "packages": [name]}}
        ]
    })
}

fn model(name: &str, image: &str, apps: Value) -> Value {
    json!({
        "name": name,
        "description": "Debian 12, small",
        "hardware": {
            "vcpus": 2, "memory_mib": 2048,
            "disks": [{"size_mib": 10240, "bus": "virtio", "image": image}],
            "nics": [{"model": "virtio"}],
            "firmware": "uefi", "arch": "x86_64", "machine_type": "q35"
        },
        "os": {"family": "linux", "distro": "debian", "version": "12", "arch": "x86_64"},
        "applications": apps,
        "labels": {"tier": "gold", "topology/rack": "r1"}
    })
}

async fn stored_disk(t: &TestApp, name: &str, seed: u64) -> String {
    let raw = raw_disk(t.dir.path(), &format!("{name}.raw"), 4, seed);
    t.upload_ok(name, &raw).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn health_needs_no_token_and_names_the_schema() {
    let t = TestApp::new().await;
    let reply = t.call(Method::GET, "/v1/health", None, None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["status"], "ok");
    assert_eq!(reply.body["schema"], json!([1, 2, 3, 4]));
}

#[tokio::test]
async fn every_endpoint_but_health_refuses_a_missing_or_unknown_token() {
    let t = TestApp::new().await;
    let doc = serde_json::to_value(slipway_server::api::openapi()).unwrap();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        // A join proves itself with the join token in its body; a guest's seed with the seed
        // token in its path (tested in deployments.rs: 403 for any other).
        if path == "/v1/health" || path == "/v1/agent/join" || path.starts_with("/v1/seed/") {
            continue;
        }
        let path = path.replace("{id}", "01a2019f-0000-7000-8000-000000000000");
        for method in item.as_object().unwrap().keys() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            for token in [None, Some("slw_not-a-token")] {
                let reply = t.call(method.clone(), &path, token, None).await;
                assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{method} {path}");
                assert_eq!(reply.problem(), "unauthorized", "{method} {path}");
                assert_eq!(reply.headers[header::WWW_AUTHENTICATE], "Bearer");
                assert_eq!(
                    reply.headers[header::CONTENT_TYPE],
                    "application/problem+json"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 18, "only {checked} endpoints found");
}

#[tokio::test]
async fn a_wrong_role_is_403_whether_or_not_the_resource_exists() {
    let t = TestApp::new().await;
    let id = stored_disk(&t, "disk", 1).await;
    let present = t
        .call(
            Method::GET,
            &format!("/v1/images/{id}"),
            Some(&t.requester),
            None,
        )
        .await;
    let absent = t
        .call(
            Method::GET,
            &format!("/v1/images/{}", "0".repeat(64)),
            Some(&t.requester),
            None,
        )
        .await;
    assert_eq!(present.status, StatusCode::FORBIDDEN);
    assert_eq!(
        present.body, absent.body,
        "the answer must not depend on existence"
    );
    assert_eq!(
        present.body["detail"],
        "this needs the operator role; the token has the requester role"
    );
    // Operators cannot manage tokens or list plugins; requesters may read applications.
    let reply = t
        .call(Method::GET, "/v1/tokens", Some(&t.operator), None)
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let reply = t
        .call(Method::GET, "/v1/plugins", Some(&t.operator), None)
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let reply = t
        .call(Method::GET, "/v1/applications", Some(&t.requester), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = t
        .call(
            Method::POST,
            "/v1/applications",
            Some(&t.requester),
            Some(application("nginx", "1")),
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn admins_create_list_and_revoke_tokens() {
    let t = TestApp::new().await;
    let reply = t
        .call(
            Method::POST,
            "/v1/tokens",
            Some(&t.admin),
            Some(json!({"name": "ci", "role": "operator"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let secret = reply.body["secret"].as_str().unwrap().to_owned();
    let id = reply.body["token"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        t.call(Method::GET, "/v1/images", Some(&secret), None)
            .await
            .status,
        StatusCode::OK
    );
    let list = t
        .call(Method::GET, "/v1/tokens", Some(&t.admin), None)
        .await;
    assert_eq!(list.body.as_array().unwrap().len(), 4);
    assert!(
        !list.body.to_string().contains(&secret),
        "secrets are never listed"
    );
    let revoked = t
        .call(
            Method::DELETE,
            &format!("/v1/tokens/{id}"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK);
    assert!(revoked.body["revoked_at"].is_string());
    let after = t.call(Method::GET, "/v1/images", Some(&secret), None).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    let bad = t
        .call(
            Method::POST,
            "/v1/tokens",
            Some(&t.admin),
            Some(json!({"name": "x", "role": "root"})),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad.body["errors"][0]["field"], "role");
}

#[tokio::test]
async fn the_openapi_document_is_served_and_matches_the_committed_copy() {
    let t = TestApp::new().await;
    let served = t.call(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(served.status, StatusCode::OK);
    let generated = slipway_server::api::openapi().to_pretty_json().unwrap() + "\n";
    let committed_path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
    if std::env::var_os("SLIPWAY_BLESS").is_some() {
        std::fs::write(committed_path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(committed_path).unwrap_or_default();
    assert!(
        committed == generated,
        "host/server/openapi.json is out of date; regenerate it with \
         SLIPWAY_BLESS=1 cargo test -p slipway-server --test server openapi"
    );
    assert_eq!(
        served.body,
        serde_json::from_str::<Value>(&generated).unwrap()
    );
    for path in [
        "/v1/images",
        "/v1/model-vms/{id}",
        "/v1/jobs/{id}/events",
        "/v1/tokens",
    ] {
        assert!(
            served.body["paths"][path].is_object(),
            "{path} undocumented"
        );
    }
}

#[tokio::test]
async fn bodies_with_bad_json_get_the_field_path() {
    let t = TestApp::new().await;
    let wrong_type = t
        .post(
            "/v1/applications",
            json!({"name": "x", "version": 1, "recipes": []}),
        )
        .await;
    assert_eq!(wrong_type.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(wrong_type.problem(), "invalid-body");
    assert_eq!(wrong_type.body["errors"][0]["field"], "version");

    let mut body = model("m", &"a".repeat(64), json!([]));
    body["hardware"]["disks"][0]["speed"] = json!(9);
    let unknown = t.post("/v1/model-vms", body).await;
    assert_eq!(unknown.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        unknown.body["errors"][0]["field"],
        "hardware.disks[0].speed"
    );
    assert!(
        unknown.body["detail"]
            .as_str()
            .unwrap()
            .contains("unknown field `speed`")
    );

    let request = Request::post("/v1/applications")
        .header(header::AUTHORIZATION, format!("Bearer {}", t.operator))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"name\": "))
        .unwrap();
    let malformed = t.send(request).await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(malformed.problem(), "malformed-json");

    let request = Request::post("/v1/applications")
        .header(header::AUTHORIZATION, format!("Bearer {}", t.operator))
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("{}"))
        .unwrap();
    assert_eq!(
        t.send(request).await.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );

    let huge =
        json!({"name": "x", "version": "1", "description": "d".repeat(2 << 20), "recipes": []});
    let too_large = t.post("/v1/applications", huge).await;
    assert_eq!(too_large.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(too_large.problem(), "payload-too-large");

    let wrong_method = t
        .call(Method::PATCH, "/v1/model-vms", Some(&t.operator), None)
        .await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.problem(), "method-not-allowed");
    let nowhere = t.get("/v2/anything").await;
    assert_eq!(nowhere.status, StatusCode::NOT_FOUND);
    assert_eq!(nowhere.problem(), "not-found");

    let query = t.get("/v1/model-vms?colour=blue").await;
    assert_eq!(query.status, StatusCode::BAD_REQUEST);
    assert!(query.body["detail"].as_str().unwrap().contains("colour"));
}

#[tokio::test]
async fn applications_are_created_listed_replaced_and_deleted() {
    let t = TestApp::new().await;
    let created = t
        .post("/v1/applications", application("nginx", "1.22"))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(created.headers[header::ETAG], "\"1\"");
    assert_eq!(
        created.headers[header::LOCATION],
        format!("/v1/applications/{id}").as_str()
    );
    assert_eq!(created.body["recipes"][0]["method"]["manager"], "apt");

    let duplicate = t
        .post("/v1/applications", application("nginx", "1.22"))
        .await;
    assert_eq!(duplicate.status, StatusCode::CONFLICT);
    assert_eq!(duplicate.problem(), "already-exists");

    for version in ["1.24", "1.26"] {
        let r = t
            .post("/v1/applications", application("nginx", version))
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    t.post("/v1/applications", application("redis", "7")).await;
    let page = t.get("/v1/applications?name=nginx&limit=2").await;
    assert_eq!(page.body["items"].as_array().unwrap().len(), 2);
    let next = page.body["next"].as_str().unwrap();
    let rest = t
        .get(&format!("/v1/applications?name=nginx&limit=2&after={next}"))
        .await;
    assert_eq!(rest.body["items"].as_array().unwrap().len(), 1);
    assert!(rest.body["next"].is_null());

    let mut changed = application("nginx", "1.22");
    changed["description"] = json!("changed");
    let mut put = Request::put(format!("/v1/applications/{id}"))
        .header(header::AUTHORIZATION, format!("Bearer {}", t.operator))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::IF_MATCH, "\"1\"")
        .body(Body::from(changed.to_string()))
        .unwrap();
    let replaced = t.send(put).await;
    assert_eq!(replaced.status, StatusCode::OK, "{}", replaced.body);
    assert_eq!(replaced.body["revision"], 2);
    put = Request::put(format!("/v1/applications/{id}"))
        .header(header::AUTHORIZATION, format!("Bearer {}", t.operator))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::IF_MATCH, "\"1\"")
        .body(Body::from(changed.to_string()))
        .unwrap();
    let stale = t.send(put).await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(stale.problem(), "stale-revision");

    let invalid = t
        .post(
            "/v1/applications",
            json!({"name": "evil", "version": "1", "recipes": [
                {"os_family": "linux", "method": {"kind": "packages", "manager": "apt", "packages": ["a; rm -rf /"]}},
                {"os_family": "linux", "method": {"kind": "bundle", "artifact": "f".repeat(64), "install_script": "../../bin/sh"}}
            ]}),
        )
        .await;
    assert_eq!(invalid.status, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<&str> = invalid.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "recipes[0].method.packages[0]",
            "recipes[1].method.install_script"
        ]
    );

    let id_shaped = t
        .post(
            "/v1/applications",
            application("01a2019f-0000-7000-8000-000000000000", "1"),
        )
        .await;
    assert_eq!(id_shaped.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        id_shaped.body["detail"]
            .as_str()
            .unwrap()
            .contains("shape of an id")
    );

    let dangling = t
        .post(
            "/v1/applications",
            json!({"name": "tool", "version": "1", "recipes": [
                {"os_family": "linux", "method": {"kind": "bundle", "artifact": "f".repeat(64), "install_script": "install.sh"}}
            ]}),
        )
        .await;
    assert_eq!(dangling.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        dangling.body["errors"][0]["field"],
        "recipes[0].method.artifact"
    );

    let deleted = t
        .call(
            Method::DELETE,
            &format!("/v1/applications/{id}"),
            Some(&t.operator),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::OK);
    let gone = t.get(&format!("/v1/applications/{id}")).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(gone.problem(), "not-found");
}

#[tokio::test]
async fn model_vms_check_their_references_and_protect_what_they_use() {
    let t = TestApp::new().await;
    let image = stored_disk(&t, "debian", 2).await;
    let missing = "e".repeat(64);

    let dangling = t
        .post(
            "/v1/model-vms",
            model(
                "web",
                &missing,
                json!([{"name": "nginx", "version": "1.22"}]),
            ),
        )
        .await;
    assert_eq!(dangling.status, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<&str> = dangling.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["hardware.disks[0].image", "applications[0]"]);

    let app = t
        .post("/v1/applications", application("nginx", "1.22"))
        .await;
    let app_id = app.body["id"].as_str().unwrap().to_owned();
    let created = t
        .post(
            "/v1/model-vms",
            model("web", &image, json!([{"name": "nginx", "version": "1.22"}])),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(created.body["hardware"]["disks"][0]["bus"], "virtio");

    let by_name = t.get("/v1/model-vms/web").await;
    assert_eq!(by_name.body["id"], id.as_str());

    let in_use = t
        .call(
            Method::DELETE,
            &format!("/v1/images/{image}"),
            Some(&t.operator),
            None,
        )
        .await;
    assert_eq!(in_use.status, StatusCode::CONFLICT);
    assert_eq!(in_use.problem(), "in-use");
    assert!(
        in_use.body["detail"]
            .as_str()
            .unwrap()
            .contains("model VM web")
    );
    let app_in_use = t
        .call(
            Method::DELETE,
            &format!("/v1/applications/{app_id}"),
            Some(&t.operator),
            None,
        )
        .await;
    assert_eq!(app_in_use.status, StatusCode::CONFLICT);

    // Filters.
    let mut other = model("alpine", &image, json!([]));
    other["os"] =
        json!({"family": "linux", "distro": "alpine", "version": "3.20", "arch": "x86_64"});
    other["labels"] = json!({"tier": "silver"});
    assert_eq!(
        t.post("/v1/model-vms", other).await.status,
        StatusCode::CREATED
    );
    let names = |r: &crate::support::Reply| -> Vec<String> {
        r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names(&t.get("/v1/model-vms?os_distro=alpine").await),
        ["alpine"]
    );
    assert_eq!(
        names(&t.get("/v1/model-vms?label=tier%3Dgold").await),
        ["web"]
    );
    assert_eq!(
        names(&t.get("/v1/model-vms?os_family=linux").await),
        ["web", "alpine"]
    );
    assert!(names(&t.get("/v1/model-vms?arch=aarch64").await).is_empty());

    // Inconsistent hardware: every problem at once.
    let mut bad = model("Bad", &image, json!([]));
    bad["hardware"]["vcpus"] = json!(0);
    bad["hardware"]["machine_type"] = json!("virt");
    bad["os"]["arch"] = json!("aarch64");
    bad["labels"] = json!({"a=b": "c"});
    let reply = t.post("/v1/model-vms", bad).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        reply.body["errors"].as_array().unwrap().len(),
        5,
        "{}",
        reply.body
    );

    // Replace, then delete the model: its image and application are free again.
    let mut changed = model("web", &image, json!([]));
    changed["hardware"]["memory_mib"] = json!(4096);
    let replaced = t
        .call(
            Method::PUT,
            &format!("/v1/model-vms/{id}"),
            Some(&t.operator),
            Some(changed),
        )
        .await;
    assert_eq!(replaced.status, StatusCode::OK, "{}", replaced.body);
    assert_eq!(replaced.body["revision"], 2);
    assert_eq!(
        t.call(
            Method::DELETE,
            &format!("/v1/applications/{app_id}"),
            Some(&t.operator),
            None
        )
        .await
        .status,
        StatusCode::OK
    );
    for name in ["web", "alpine"] {
        let r = t
            .call(
                Method::DELETE,
                &format!("/v1/model-vms/{name}"),
                Some(&t.operator),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let deleted = t
        .call(
            Method::DELETE,
            &format!("/v1/images/{image}"),
            Some(&t.operator),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert!(t.blobs().is_empty(), "the blob file goes with its record");
}

#[tokio::test]
async fn uploads_detect_the_format_from_the_header_and_store_qcow2() {
    let t = TestApp::new().await;
    let dir = t.dir.path();
    let raw = raw_disk(dir, "disk.img", 8, 3);
    let qcow2 = dir.join("disk.qcow2");
    // Another cluster size than Slipway's conversion uses, so that its bytes differ.
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-o",
        "cluster_size=131072",
        raw.to_str().unwrap(),
        qcow2.to_str().unwrap(),
    ]);
    let other_raw = raw_disk(dir, "other.img", 8, 4);
    let vmdk = dir.join("disk.vmdk");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        other_raw.to_str().unwrap(),
        vmdk.to_str().unwrap(),
    ]);
    // Misleading names: the header decides.
    let disguised = dir.join("disk.raw");
    std::fs::copy(&qcow2, &disguised).unwrap();

    let from_raw = t.upload_ok("from-raw", &raw).await;
    assert_eq!(from_raw["source_format"], "raw");
    assert_eq!(from_raw["format"], "qcow2");
    assert_eq!(from_raw["virtual_size"], 8 << 20);
    assert!(from_raw["allocated_size"].as_u64().unwrap() > 0);
    let from_qcow2 = t.upload_ok("from-qcow2", &disguised).await;
    assert_eq!(from_qcow2["source_format"], "qcow2");
    assert_eq!(
        from_qcow2["id"], from_qcow2["source_sha256"],
        "a qcow2 is stored as it came"
    );
    let from_vmdk = t.upload_ok("from-vmdk", &vmdk).await;
    assert_eq!(from_vmdk["source_format"], "vmdk");
    assert_eq!(from_vmdk["virtual_size"], 8 << 20);

    // The stored bytes are what the id says, and qemu-img reads them as qcow2.
    let id = from_vmdk["id"].as_str().unwrap();
    let blob = t.app.images.blob_path(id);
    let digest = sha2_hex(&std::fs::read(&blob).unwrap());
    assert_eq!(digest, id);
    let out = std::process::Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2"])
        .arg(&other_raw)
        .arg(&blob)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The same bytes as an artifact and then as a disk: one id, so the second is refused.
    let other_qcow2 = dir.join("other.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-o",
        "cluster_size=4096",
        raw.to_str().unwrap(),
        other_qcow2.to_str().unwrap(),
    ]);
    let artifact_again = t
        .upload(
            "name=o-artifact&kind=artifact",
            std::fs::read(&other_qcow2).unwrap(),
        )
        .await;
    assert_eq!(artifact_again.status, StatusCode::CREATED);
    let as_disk = t
        .upload("name=o-disk", std::fs::read(&other_qcow2).unwrap())
        .await;
    assert_eq!(
        as_disk.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        as_disk.body
    );
    assert!(
        as_disk.body["detail"]
            .as_str()
            .unwrap()
            .contains("already stored as artifact"),
        "{}",
        as_disk.body
    );

    // The same bytes again are the same image: content addressing.
    let again = t.upload_ok("again", &raw).await;
    assert_eq!(again["id"], from_raw["id"]);
    assert_eq!(again["name"], "from-raw", "the first record stands");

    let artifact = t
        .upload(
            "name=bundle&kind=artifact",
            b"#!/bin/sh\necho hi\n".to_vec(),
        )
        .await;
    assert_eq!(artifact.status, StatusCode::CREATED, "{}", artifact.body);
    assert_eq!(artifact.body["result"]["format"], "blob");

    let list = t.get("/v1/images?kind=disk").await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 3);
    let list = t.get("/v1/images?kind=artifact").await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 2);
    assert!(t.tmp_files().is_empty());
}

fn sha2_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Each refusal: the status, the problem type, one more failed job, failed at `step`, and
/// nothing left behind.
async fn refused(
    t: &TestApp,
    query: &str,
    bytes: Vec<u8>,
    status: StatusCode,
    problem: &str,
    step: &str,
) -> Value {
    let failed = |r: &crate::support::Reply| r.body["items"].as_array().unwrap().len();
    let before = failed(&t.get("/v1/jobs?state=failed").await);
    let blobs = t.blobs();
    let reply = t.upload(query, bytes).await;
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.problem(), problem, "{}", reply.body);
    assert!(t.tmp_files().is_empty(), "left behind: {:?}", t.tmp_files());
    assert_eq!(t.blobs(), blobs, "no blob may appear");
    let jobs = t.get("/v1/jobs?state=failed").await;
    assert_eq!(failed(&jobs), before + 1, "one more failed job");
    let last = jobs.body["items"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["error"]["step"], step, "{last}");
    reply.body
}

#[tokio::test]
async fn hostile_images_are_refused_and_leave_nothing_behind() {
    let t = TestApp::new().await;
    let dir = t.dir.path();
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();

    // A qcow2 whose backing file is /etc/passwd: never followed.
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-F",
        "raw",
        "-b",
        "/etc/passwd",
        &path("backed.qcow2"),
        "1M",
    ]);
    let body = refused(
        &t,
        "name=backed",
        std::fs::read(path("backed.qcow2")).unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "job-failed",
        "inspect",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("backing file"),
        "{body}"
    );
    assert_eq!(
        body["detail"].as_str().unwrap().split(':').next().unwrap(),
        "step inspect failed"
    );

    // A header claiming 10 TB.
    qemu_img(&["create", "-f", "qcow2", &path("huge.qcow2"), "10T"]);
    let body = refused(
        &t,
        "name=huge",
        std::fs::read(path("huge.qcow2")).unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "job-failed",
        "inspect",
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("virtual size of 10995116277760 bytes"),
        "{body}"
    );

    // External data file.
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={}", path("data.raw")),
        &path("external.qcow2"),
        "1M",
    ]);
    let body = refused(
        &t,
        "name=external",
        std::fs::read(path("external.qcow2")).unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "job-failed",
        "inspect",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("external file"),
        "{body}"
    );

    // A VMDK that is only a descriptor naming other files.
    let descriptor = String::from(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"/etc/shadow\" 0\n",
    );
    refused(
        &t,
        "name=descriptor",
        descriptor.into_bytes(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "job-failed",
        "inspect",
    )
    .await;

    // A VMDK with no capacity of its own, whose descriptor (past a harmless first sector, with
    // its type behind a `#`) names the server's admin token as a flat extent: qemu would copy
    // the token into the image.
    let mut vmdk = vec![0u8; 3 * 512];
    vmdk[..4].copy_from_slice(b"KDMV");
    vmdk[4..8].copy_from_slice(&1u32.to_le_bytes());
    vmdk[28..36].copy_from_slice(&1u64.to_le_bytes()); // descriptor at sector 1
    vmdk[36..44].copy_from_slice(&1u64.to_le_bytes()); // of one sector
    let harmless = b"# Disk DescriptorFile\n";
    vmdk[512..512 + harmless.len()].copy_from_slice(harmless);
    let evil = b"#createType=\"monolithicFlat\"\nRW 8 FLAT \"../../admin.token\" 0\n";
    vmdk[1024..1024 + evil.len()].copy_from_slice(evil);
    let body = refused(
        &t,
        "name=extents",
        vmdk,
        StatusCode::UNPROCESSABLE_ENTITY,
        "job-failed",
        "inspect",
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("no capacity of its own"),
        "{body}"
    );

    // A qcow2 header our checks accept, with a cluster size qemu-img rejects: damaged.
    let mut corrupt = vec![0u8; 4096];
    corrupt[..4].copy_from_slice(b"QFI\xfb");
    corrupt[4..8].copy_from_slice(&3u32.to_be_bytes());
    corrupt[20..24].copy_from_slice(&99u32.to_be_bytes()); // cluster_bits
    corrupt[24..32].copy_from_slice(&(1u64 << 20).to_be_bytes()); // size
    corrupt[100..104].copy_from_slice(&104u32.to_be_bytes()); // header_length
    let body = refused(
        &t,
        "name=corrupt",
        corrupt,
        StatusCode::UNPROCESSABLE_ENTITY,
        "job-failed",
        "inspect",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("damaged"),
        "{body}"
    );

    // Empty.
    refused(
        &t,
        "name=empty",
        Vec::new(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "job-failed",
        "inspect",
    )
    .await;

    // A digest that does not match: refused at `receive`.
    let body = refused(
        &t,
        &format!("name=x&sha256={}", "0".repeat(64)),
        vec![1; 4096],
        StatusCode::UNPROCESSABLE_ENTITY,
        "digest-mismatch",
        "receive",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("not the 0000"),
        "{body}"
    );

    // Unknown query parameters and bad names.
    let reply = t.upload("name=x&colour=red", vec![1]).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = t.upload("name=..%2Fetc", vec![1]).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(t.tmp_files().is_empty());
}

#[tokio::test]
async fn a_truncated_upload_fails_at_receive_and_leaves_nothing() {
    let t = TestApp::new().await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
        Ok(vec![7u8; 64 << 10]),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "client went away",
        )),
    ];
    let request = Request::post("/v1/images?name=cut")
        .header(header::AUTHORIZATION, format!("Bearer {}", t.operator))
        .header(header::CONTENT_LENGTH, 1 << 20)
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap();
    let reply = t.send(request).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    assert_eq!(reply.problem(), "truncated-upload");
    assert_eq!(
        reply.body["detail"],
        "the upload ended after 65536 bytes, before the 1048576 it declared"
    );
    assert!(t.tmp_files().is_empty());
    let jobs = t.get("/v1/jobs").await;
    assert_eq!(jobs.body["items"][0]["state"], "failed");
    assert_eq!(jobs.body["items"][0]["error"]["step"], "receive");
}

#[tokio::test]
async fn uploads_over_the_size_limit_are_refused_while_streaming() {
    let t = TestApp::with(|c| c.max_image_size = 1 << 20).await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..4).map(|_| Ok(vec![0u8; 512 << 10])).collect();
    // No Content-Length: the limit must hold on a chunked body too.
    let request = Request::post("/v1/images?name=big")
        .header(header::AUTHORIZATION, format!("Bearer {}", t.operator))
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap();
    let reply = t.send(request).await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.body
    );
    assert!(t.tmp_files().is_empty());
}

#[tokio::test]
async fn imports_come_only_from_import_directories() {
    let t = TestApp::new().await;
    let inside = raw_disk(&t.import_dir(), "inside.raw", 2, 5);
    let reply = t
        .post("/v1/images/import?wait=true", json!({"path": inside}))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(reply.body["result"]["name"], "inside");
    assert_eq!(
        reply.body["steps"],
        json!(["copy", "inspect", "convert", "store"])
    );

    let outside = t
        .post("/v1/images/import", json!({"path": "/etc/passwd"}))
        .await;
    assert_eq!(outside.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(outside.problem(), "import-refused");
    assert_eq!(outside.body["errors"][0]["field"], "path");

    // A symlink inside that points outside is judged by its target.
    let link = t.import_dir().join("shadow.raw");
    std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
    let reply = t.post("/v1/images/import", json!({"path": link})).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    let reply = t
        .post(
            "/v1/images/import",
            json!({"path": t.import_dir().join("../import/../x")}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    // A FIFO would block a plain open forever: refused at once instead.
    let fifo = t.import_dir().join("pipe.raw");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let reply = t
        .post("/v1/images/import?wait=true", json!({"path": fifo}))
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    assert!(
        reply.body["detail"]
            .as_str()
            .unwrap()
            .contains("not a regular file"),
        "{}",
        reply.body
    );
    // Outside the import directories, the answer is the same whether the path exists or not.
    let absent = t
        .post("/v1/images/import", json!({"path": "/etc/no-such-file"}))
        .await;
    assert_eq!(absent.status, outside.status);
    assert!(
        absent.body["detail"]
            .as_str()
            .unwrap()
            .contains("not inside an import directory")
    );
    assert!(
        outside.body["detail"]
            .as_str()
            .unwrap()
            .contains("not inside an import directory")
    );
    let reply = t
        .post("/v1/images/import", json!({"path": t.import_dir()}))
        .await;
    assert_eq!(
        reply.status,
        StatusCode::ACCEPTED,
        "a directory is refused by its job"
    );
    let job = t
        .app
        .jobs
        .wait(reply.body["id"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(job.error.unwrap().step, "copy");
}

#[tokio::test]
async fn job_event_streams_replay_from_the_log_and_end_with_the_job() {
    let t = TestApp::new().await;
    let raw = raw_disk(&t.import_dir(), "streamed.raw", 2, 6);
    let reply = t.post("/v1/images/import", json!({"path": raw})).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    let id = reply.body["id"].as_str().unwrap().to_owned();
    t.app.jobs.wait(&id).await.unwrap();

    // The job is over, yet the stream replays all of it and then closes.
    let stream = t.get(&format!("/v1/jobs/{id}/events")).await;
    assert_eq!(stream.status, StatusCode::OK);
    assert_eq!(stream.headers[header::CONTENT_TYPE], "text/event-stream");
    let text = stream.body.as_str().unwrap();
    let kinds: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .filter(|k| *k != "job.progress")
        .collect();
    assert_eq!(
        kinds,
        [
            "job.created",
            "job.step_started",
            "job.step_started",
            "job.step_started",
            "job.step_started",
            "job.succeeded"
        ]
    );
    let last_id: i64 = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .next_back()
        .unwrap()
        .parse()
        .unwrap();
    // Resuming after the last event gives nothing more, and ends at once for a finished job.
    let request = Request::get(format!("/v1/jobs/{id}/events"))
        .header(header::AUTHORIZATION, format!("Bearer {}", t.operator))
        .header("last-event-id", last_id.to_string())
        .body(Body::empty())
        .unwrap();
    let resumed = t.router.clone().oneshot(request).await.unwrap();
    let bytes = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        axum::body::to_bytes(resumed.into_body(), usize::MAX),
    )
    .await
    .expect("the stream of a finished job ends")
    .unwrap();
    assert!(bytes.is_empty(), "{}", String::from_utf8_lossy(&bytes));
    // The global stream has the inventory change too.
    let all = t.app.store.events(0, None, 100).await.unwrap();
    assert!(
        all.iter()
            .any(|e| e.topic == "image" && e.kind == "created")
    );
}

#[tokio::test]
async fn an_upload_job_interrupted_by_a_crash_fails_on_restart_naming_its_step() {
    let dir = tempfile::tempdir().unwrap();
    let config = slipway_server::config::Config::with_data_dir(&dir.path().join("data"));
    {
        let t = TestApp::open(config.clone(), tempfile::tempdir().unwrap()).await;
        let job = t
            .app
            .jobs
            .create(
                "image.upload",
                json!({"name": "x", "kind": "disk"}),
                &["receive", "inspect", "convert", "store"],
                "someone",
            )
            .await
            .unwrap();
        t.app.jobs.start_now(&job).await.unwrap();
        t.app.store.set_job_step(&job.id, 2, None).await.unwrap();
        // A leftover temporary file, as a crash would leave it.
        std::fs::write(
            config.data_dir.join("images/tmp/incoming-crashed"),
            b"partial",
        )
        .unwrap();
        t.app.store.close().await;
    }
    let t = TestApp::open(config.clone(), dir).await;
    let jobs = t.get("/v1/jobs").await;
    let job = &jobs.body["items"][0];
    assert_eq!(job["state"], "failed");
    assert_eq!(job["error"]["step"], "convert");
    assert!(
        job["error"]["message"]
            .as_str()
            .unwrap()
            .contains("restart")
    );
    assert!(
        t.tmp_files().is_empty(),
        "the sweep at start removes leftovers"
    );
}

#[tokio::test]
async fn the_first_party_plugins_are_loaded_at_start_and_listed_for_admins() {
    use slipway_test_artifacts as artifacts;
    let plugins = tempfile::tempdir().unwrap();
    for guest in [
        artifacts::CAPACITY_FILTER,
        artifacts::LABEL_FILTER,
        artifacts::BINPACK_SCORE,
        artifacts::SPREAD_SCORE,
    ] {
        let name = std::path::Path::new(guest.dir).file_name().unwrap();
        std::os::unix::fs::symlink(guest.dir, plugins.path().join(name)).unwrap();
    }
    let dir = plugins.path().to_owned();
    let t = TestApp::with(move |c| c.plugins = dir).await;
    let reply = t
        .call(Method::GET, "/v1/plugins", Some(&t.admin), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let mut names: Vec<&str> = reply
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(p["kind"], "placement");
            assert_eq!(p["contract"], "0.1.0");
            p["name"].as_str().unwrap()
        })
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "binpack-score",
            "capacity-filter",
            "label-filter",
            "spread-score"
        ]
    );
    assert_eq!(t.app.plugins.all().len(), 4);
}

#[tokio::test]
async fn a_plugin_that_cannot_load_stops_the_start_with_its_name() {
    use slipway_test_artifacts as artifacts;
    let plugins = tempfile::tempdir().unwrap();
    let name = std::path::Path::new(artifacts::TEST_PLUGIN_FUTURE_CONTRACT.dir)
        .file_name()
        .unwrap();
    std::os::unix::fs::symlink(
        artifacts::TEST_PLUGIN_FUTURE_CONTRACT.dir,
        plugins.path().join(name),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = slipway_server::config::Config::with_data_dir(&dir.path().join("data"));
    config.plugins = plugins.path().to_owned();
    let error = match slipway_server::App::open(config).await {
        Ok(_) => panic!("a plugin for another contract must not load"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains("loading plugin"), "{error}");
    assert!(error.contains("0.2.0"), "{error}");
}

#[tokio::test]
async fn the_event_stream_carries_catalog_changes_live() {
    use http_body_util::BodyExt;
    let t = TestApp::new().await;
    let request = Request::get("/v1/events")
        .header(header::AUTHORIZATION, format!("Bearer {}", t.operator))
        .body(Body::empty())
        .unwrap();
    let response = t.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    // The first change may come from the stream's replay of the log; once it has arrived the
    // stream is caught up and waiting, so the second can only come live.
    let mut seen = String::new();
    let mut found = Ok(());
    for name in ["redis", "valkey"] {
        let created = t.post("/v1/applications", application(name, "7")).await;
        let id = created.body["id"].as_str().unwrap().to_owned();
        found = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    seen.push_str(&String::from_utf8_lossy(&data));
                    if seen.contains("event: application.created") && seen.contains(&id) {
                        return;
                    }
                }
            }
        })
        .await
        .map_err(|_| ());
        if found.is_err() {
            break;
        }
    }
    assert!(found.is_ok(), "no application.created event in {seen:?}");
}

#[tokio::test]
async fn a_call_that_outlives_the_request_timeout_is_answered_503() {
    use sqlx::Connection;
    let t = TestApp::with(|c| c.request_timeout = std::time::Duration::from_secs(1)).await;
    // Another writer holds the database: the insert waits for it, longer than the deadline.
    let mut other =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}", t.app.config.database().display()))
            .await
            .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let reply = t.post("/v1/applications", application("slow", "1")).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.body
    );
    assert_eq!(reply.problem(), "timeout");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    // Nothing half-done: the application was not created.
    let list = t.get("/v1/applications?name=slow").await;
    assert_eq!(list.body["items"], json!([]));
}
