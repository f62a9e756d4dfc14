//! Deployments through the API without a real hypervisor: admission (claims, identities),
//! failures that give everything back, and the seed's tokens. The end-to-end deployment with real
//! agents and QEMU is in the agent crate's tests.

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::plans::world;
use crate::support::TestApp;

async fn deploy(app: &TestApp, token: &str, body: Value) -> crate::support::Reply {
    app.call(
        Method::POST,
        "/v1/deployments?wait=true",
        Some(token),
        Some(body),
    )
    .await
}

#[tokio::test]
async fn a_deployment_that_fails_gives_back_its_claims_and_says_where() {
    let app = world(|c| c.ready_timeout = std::time::Duration::from_secs(2)).await;
    let body = json!({"os": {"distro": "debian", "version": "12"}, "applications": ["redis"],
                      "hostname_pattern": "db-{n}", "count": 2, "placement": {"anti_affinity_group": "db"}});
    let reply = deploy(&app, &app.requester, body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let vms = reply.body["vms"].as_array().unwrap();
    assert_eq!(vms.len(), 2);
    let hosts: std::collections::BTreeSet<&str> =
        vms.iter().map(|v| v["host"].as_str().unwrap()).collect();
    assert_eq!(hosts.len(), 2, "anti-affinity: two hosts");
    let mut macs = Vec::new();
    for vm in vms {
        // The test hosts' agents do not exist: the first step fails, and says so.
        assert_eq!(vm["phase"], "failed", "{vm}");
        let error = vm["error"].as_str().unwrap();
        assert!(error.starts_with("step transfer failed: "), "{error}");
        assert_eq!(vm.get("claim"), None, "the claim is released: {vm}");
        assert!(vm["hostname"].as_str().unwrap().starts_with("db-"));
        assert_eq!(vm["install"][0]["name"], "redis");
        macs.extend(vm["macs"].as_array().unwrap().iter().cloned());
        let job = app
            .get(&format!("/v1/jobs/{}", vm["job"].as_str().unwrap()))
            .await;
        assert_eq!(job.body["state"], "failed", "{}", job.body);
        assert_eq!(job.body["error"]["step"], "transfer");
        assert!(
            !job.body["params"]
                .to_string()
                .contains(&app.app.deployer.seed_token(vm["id"].as_str().unwrap())),
            "no seed token in the job's params"
        );
    }
    assert_eq!(macs.len(), 2);
    assert_ne!(macs[0], macs[1]);
    assert!(
        macs.iter()
            .all(|m| m.as_str().unwrap().starts_with("52:54:00:"))
    );
    let claims = app.get("/v1/claims").await;
    assert_eq!(claims.body["items"], json!([]), "{}", claims.body);

    // A requester sees their own VMs; another requester sees none of them.
    let mine = app
        .call(Method::GET, "/v1/vms", Some(&app.requester), None)
        .await;
    assert_eq!(mine.body["items"].as_array().unwrap().len(), 2);
    let (_, other) = app
        .app
        .store
        .create_token("bob", slipway_core::resources::Role::Requester)
        .await
        .unwrap();
    let theirs = app.call(Method::GET, "/v1/vms", Some(&other), None).await;
    assert_eq!(theirs.body["items"], json!([]));
    let id = vms[0]["id"].as_str().unwrap();
    let hidden = app
        .call(Method::GET, &format!("/v1/vms/{id}"), Some(&other), None)
        .await;
    assert_eq!(hidden.status, StatusCode::NOT_FOUND);

    // The seed: the VM's token gets its files; any other gets 403, whatever the file.
    let token = app.app.deployer.seed_token(id);
    let meta = app
        .call(
            Method::GET,
            &format!("/v1/seed/{token}/meta-data"),
            None,
            None,
        )
        .await;
    assert_eq!(meta.status, StatusCode::OK);
    let instance = vms[0]["instance_id"].as_str().unwrap();
    let apps = app
        .call(
            Method::GET,
            &format!("/v1/seed/{token}/slipway-apps"),
            None,
            None,
        )
        .await;
    assert_eq!(apps.body["apps"][0]["name"], "redis", "{}", apps.body);
    assert_eq!(
        apps.body["apps"][0]["method"]["packages"],
        json!(["redis-server"])
    );
    let wrong = "0".repeat(64);
    for path in [
        format!("/v1/seed/{wrong}/meta-data"),
        format!("/v1/seed/{wrong}/user-data"),
        format!("/v1/seed/{wrong}/nothing"),
        "/v1/seed/short/meta-data".to_owned(),
        format!("/v1/seed/{token}/artifacts/{}", "ab".repeat(32)),
    ] {
        let r = app.call(Method::GET, &path, None, None).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {}", r.body);
    }
    let other_instance = app
        .call(
            Method::POST,
            &format!("/v1/seed/{token}/ready"),
            None,
            Some(json!({"instance-id": "i-someone-else"})),
        )
        .await;
    assert_eq!(other_instance.status, StatusCode::CONFLICT);
    // cloud-init's phone-home posts a form.
    let form = app
        .send(
            axum::http::Request::post(format!("/v1/seed/{token}/ready"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(axum::body::Body::from(format!(
                    "instance_id={instance}&hostname=db-1&fqdn=db-1"
                )))
                .unwrap(),
        )
        .await;
    assert_eq!(form.status, StatusCode::NO_CONTENT, "{}", form.body);
    let vm = app.get(&format!("/v1/vms/{id}")).await;
    assert_eq!(vm.body["ready"]["agent"], "cloud-init");
    assert_eq!(
        vm.body["phase"], "failed",
        "a report does not revive a failed VM"
    );

    // Deleting a failed VM forgets it, and its token with it.
    let deleted = app
        .call(
            Method::DELETE,
            &format!("/v1/vms/{id}"),
            Some(&app.requester),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
    let gone = app
        .call(
            Method::GET,
            &format!("/v1/seed/{token}/meta-data"),
            None,
            None,
        )
        .await;
    assert_eq!(gone.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_deployment_that_cannot_be_met_deploys_nothing() {
    let app = world(|_| {}).await;
    let invalid = deploy(&app, &app.requester, json!({"os": {"family": "bsd"}})).await;
    assert_eq!(
        invalid.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        invalid.body
    );
    assert_eq!(invalid.problem(), "invalid-request");
    // More than fit: the findings say so before anything is claimed.
    let many = deploy(
        &app,
        &app.requester,
        json!({"os": {"distro": "debian", "version": "12"}, "hardware": {"memory": "12GiB"}, "count": 5,
               "hostname_pattern": "m-{n}", "placement": {"anti_affinity_group": "m"}}),
    )
    .await;
    assert_eq!(
        many.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        many.body
    );
    assert!(
        many.body["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["code"] == "count-exceeds-room")
    );
    assert_eq!(app.get("/v1/claims").await.body["items"], json!([]));
    assert_eq!(app.get("/v1/vms").await.body["items"], json!([]));

    // Feasible by the numbers, but only one host has UEFI: the first VM is placed and claimed,
    // the second finds no host — and the first's claim and record go with the refusal.
    let partial = deploy(
        &app,
        &app.requester,
        json!({"os": {"family": "windows"}, "hardware": {"memory": "4GiB"}, "count": 2,
               "hostname_pattern": "w-{n}", "placement": {"anti_affinity_group": "w"}}),
    )
    .await;
    assert_eq!(
        partial.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        partial.body
    );
    assert_eq!(partial.problem(), "no-host", "{}", partial.body);
    assert_eq!(app.get("/v1/claims").await.body["items"], json!([]));
    assert_eq!(app.get("/v1/vms").await.body["items"], json!([]));
}
