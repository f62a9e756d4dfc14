//! Hosts and placement through the API: agents joining and heartbeating with the agent
//! protocol, the inventory's states, placements that claim atomically and explain themselves,
//! claims that expire, and a pipeline changed at run time.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use slipway_test_artifacts as artifacts;

use crate::support::{Reply, TestApp};

/// A plugin directory with the four first-party placement plugins, as `scripts/run` passes.
pub fn first_party_plugins(dir: &Path) -> std::path::PathBuf {
    artifacts::first_party_placement_plugins(dir)
}

/// An app with the first-party placement plugins and a fast heartbeat.
async fn app_with(adjust: impl FnOnce(&mut slipway_server::config::Config)) -> TestApp {
    let plugins = tempfile::tempdir().unwrap().keep();
    TestApp::with(|c| {
        c.plugins = first_party_plugins(&plugins);
        adjust(c);
    })
    .await
}

pub fn report(cpus: u32, memory_mib: u64, disk_mib: u64, labels: &[(&str, &str)]) -> Value {
    json!({
        "arch": "x86_64",
        "cpus": cpus,
        "load_milli": [100, 100, 100],
        "memory_total_mib": memory_mib,
        "memory_available_mib": memory_mib,
        "disk_total_mib": disk_mib,
        "disk_free_mib": disk_mib,
        "hypervisor": {
            "kvm": { "usable": false, "detail": "test host" },
            "accelerator": "tcg"
        },
        "labels": labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "agent_version": "0.1.0"
    })
}

/// A host of the test: its id, the credential of its heartbeats, and its last sequence number.
pub struct Agent {
    pub id: String,
    pub credential: String,
    pub seq: u64,
    pub report: Value,
}

pub(crate) async fn join_token(app: &TestApp, labels: Value, uses: Option<u32>) -> String {
    let reply = app
        .call(
            Method::POST,
            "/v1/join-tokens",
            Some(&app.admin),
            Some(json!({ "name": "rack", "labels": labels, "uses": uses })),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    reply.body["secret"].as_str().unwrap().to_owned()
}

async fn join_as(app: &TestApp, token: &str, agent_id: &str, name: &str, report: Value) -> Reply {
    app.call(
        Method::POST,
        "/v1/agent/join",
        None,
        Some(json!({
            "join_token": token,
            "agent_id": agent_id,
            "name": name,
            "agent_url": format!("http://127.0.0.1:1/{name}"),
            "agent_secret": "0123456789abcdef0123",
            "report": report,
        })),
    )
    .await
}

pub(crate) async fn join(app: &TestApp, token: &str, name: &str, report: Value) -> Agent {
    let reply = join_as(
        app,
        token,
        &format!("agent-{name}-0000"),
        name,
        report.clone(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    Agent {
        id: reply.body["host_id"].as_str().unwrap().to_owned(),
        credential: reply.body["credential"].as_str().unwrap().to_owned(),
        seq: 0,
        report,
    }
}

async fn beat_with(app: &TestApp, credential: &str, seq: u64, report: &Value) -> Reply {
    app.call(
        Method::POST,
        "/v1/agent/heartbeat",
        Some(credential),
        Some(json!({ "seq": seq, "report": report })),
    )
    .await
}

async fn beat(app: &TestApp, agent: &mut Agent) -> Reply {
    agent.seq += 1;
    beat_with(app, &agent.credential, agent.seq, &agent.report).await
}

async fn place(app: &TestApp, request: Value) -> Reply {
    app.post("/v1/placements", json!({ "request": request }))
        .await
}

fn vm(vcpus: u32, memory_mib: u64) -> Value {
    json!({ "vcpus": vcpus, "memory_mib": memory_mib, "disk_mib": 1024, "arch": "x86_64" })
}

async fn host(app: &TestApp, id: &str) -> Value {
    let reply = app.get(&format!("/v1/hosts/{id}")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body
}

#[tokio::test]
async fn agents_join_heartbeat_and_join_again_as_the_same_host() {
    let app = app_with(|_| {}).await;
    let token = join_token(&app, json!({ "rack": "r1", "zone": "a" }), None).await;
    let mut a = join(
        &app,
        &token,
        "node-1",
        report(8, 16_384, 100_000, &[("zone", "b")]),
    )
    .await;

    let h = host(&app, &a.id).await;
    assert_eq!(h["state"], "ready");
    assert_eq!(h["name"], "node-1");
    assert_eq!(
        h["capacity"],
        json!({ "vcpus": 32, "memory_mib": 16_384, "disk_mib": 100_000 }),
        "vCPUs are claimable 4 to a thread by default"
    );
    assert_eq!(
        h["report"]["labels"],
        json!({ "rack": "r1", "zone": "b" }),
        "the join token's labels, under the agent's own"
    );
    assert_eq!(
        host(&app, "node-1").await["id"],
        a.id.as_str(),
        "by name too"
    );

    let reply = beat(&app, &mut a).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["host_id"], a.id.as_str());
    assert_eq!(reply.body["heartbeat_interval_ms"], 10_000);
    assert_eq!(reply.body["mode"], "active");

    // Joining again with the same agent id: the same host, a new credential, the old refused.
    let again = join_as(
        &app,
        &token,
        "agent-node-1-0000",
        "node-1",
        report(8, 16_384, 100_000, &[]),
    )
    .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body["created"], false);
    assert_eq!(again.body["host_id"], a.id.as_str());
    let list = app.get("/v1/hosts").await;
    assert_eq!(
        list.body["items"].as_array().unwrap().len(),
        1,
        "no duplicate"
    );
    let old = beat(&app, &mut a).await;
    assert_eq!(old.status, StatusCode::UNAUTHORIZED, "{}", old.body);
    a.credential = again.body["credential"].as_str().unwrap().to_owned();
    a.seq = 0;
    assert_eq!(beat(&app, &mut a).await.status, StatusCode::OK);

    // Another agent may not take the name.
    let clash = join_as(&app, &token, "agent-other", "node-1", report(1, 1, 1, &[])).await;
    assert_eq!(clash.status, StatusCode::CONFLICT, "{}", clash.body);

    // Filters.
    join(
        &app,
        &token,
        "node-2",
        report(4, 8192, 1000, &[("zone", "c")]),
    )
    .await;
    let by_label = app.get("/v1/hosts?label=zone=c").await;
    let names: Vec<&str> = by_label.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["node-2"]);
    let bad = app.get("/v1/hosts?state=asleep").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    let page = app.get("/v1/hosts?limit=1").await;
    assert_eq!(page.body["items"].as_array().unwrap().len(), 1);
    let next = page.body["next"].as_str().unwrap();
    let rest = app.get(&format!("/v1/hosts?after={next}")).await;
    assert_eq!(rest.body["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn forged_replayed_and_malformed_heartbeats_are_refused() {
    let app = app_with(|_| {}).await;
    let token = join_token(&app, json!({}), None).await;
    let mut a = join(&app, &token, "node-1", report(4, 4096, 1000, &[])).await;
    assert_eq!(beat(&app, &mut a).await.status, StatusCode::OK);

    let forged = beat_with(&app, "slh_forged", 99, &a.report).await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED, "{}", forged.body);
    assert_eq!(forged.problem(), "unauthorized");
    let none = app
        .call(
            Method::POST,
            "/v1/agent/heartbeat",
            None,
            Some(json!({ "seq": 1, "report": a.report })),
        )
        .await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);

    // The same heartbeat sent again, and an older one.
    let replayed = beat_with(&app, &a.credential, a.seq, &a.report).await;
    assert_eq!(replayed.status, StatusCode::CONFLICT, "{}", replayed.body);
    assert_eq!(replayed.problem(), "replayed");
    let older = beat_with(&app, &a.credential, a.seq - 1, &a.report).await;
    assert_eq!(older.status, StatusCode::CONFLICT);

    // A report no machine gives is refused by field, and changes nothing.
    let mut lying = a.report.clone();
    lying["memory_available_mib"] = json!(1_000_000);
    lying["cpus"] = json!(0);
    let bad = beat_with(&app, &a.credential, a.seq + 1, &lying).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.body);
    let fields: Vec<&str> = bad.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["report.cpus", "report.memory_available_mib"]);
    assert_eq!(host(&app, &a.id).await["report"]["cpus"], 4);

    let metrics = app.get("/metrics").await;
    let text = metrics.body.as_str().unwrap();
    assert!(
        text.contains("slipway_heartbeats_total{result=\"replayed\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("slipway_heartbeats_total{result=\"unknown_credential\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("slipway_heartbeats_total{result=\"accepted\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn join_tokens_are_checked_and_counted() {
    let app = app_with(|_| {}).await;
    let r = report(2, 2048, 100, &[]);
    let unknown = join_as(&app, "slj_nope", "agent-aaaa", "a", r.clone()).await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED, "{}", unknown.body);

    let once = join_token(&app, json!({}), Some(1)).await;
    assert_eq!(
        join_as(&app, &once, "agent-aaaa", "a", r.clone())
            .await
            .status,
        StatusCode::CREATED
    );
    let used_up = join_as(&app, &once, "agent-bbbb", "b", r.clone()).await;
    assert_eq!(used_up.status, StatusCode::UNAUTHORIZED, "{}", used_up.body);
    assert!(
        used_up.body["detail"]
            .as_str()
            .unwrap()
            .contains("no uses left")
    );
    // The host that used it may still join again (its credential lost).
    assert_eq!(
        join_as(&app, &once, "agent-aaaa", "a", r.clone())
            .await
            .status,
        StatusCode::OK
    );

    let tokens = app
        .call(Method::GET, "/v1/join-tokens", Some(&app.admin), None)
        .await;
    let id = tokens.body[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(tokens.body[0]["uses_left"], 0);
    let revoked = app
        .call(
            Method::DELETE,
            &format!("/v1/join-tokens/{id}"),
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK);
    let after = join_as(&app, &once, "agent-aaaa", "a", r.clone()).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    assert!(after.body["detail"].as_str().unwrap().contains("revoked"));

    // Operators may not make join tokens; bodies are checked by field.
    let op = app.post("/v1/join-tokens", json!({ "name": "x" })).await;
    assert_eq!(op.status, StatusCode::FORBIDDEN);
    let token = join_token(&app, json!({}), None).await;
    let bad = app
        .call(
            Method::POST,
            "/v1/agent/join",
            None,
            Some(json!({
                "join_token": token, "agent_id": "short", "name": "-bad-",
                "agent_url": "ftp://x", "agent_secret": "tiny", "report": r,
            })),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.body);
    assert_eq!(
        bad.body["errors"].as_array().unwrap().len(),
        4,
        "{}",
        bad.body
    );
}

#[tokio::test]
async fn a_silent_host_becomes_unreachable_gets_no_placements_and_comes_back() {
    let app = app_with(|c| {
        c.heartbeat_interval = Duration::from_millis(100);
        c.missed_heartbeats = 2;
    })
    .await;
    let mut events = app.app.events.subscribe();
    let token = join_token(&app, json!({}), None).await;
    let mut small = join(&app, &token, "small", report(2, 2048, 10_000, &[])).await;
    let mut big = join(&app, &token, "big", report(16, 65_536, 10_000, &[])).await;

    // Only `small` keeps heartbeating.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert_eq!(beat(&app, &mut small).await.status, StatusCode::OK);
        if host(&app, &big.id).await["state"] == "unreachable" {
            break;
        }
        assert!(Instant::now() < deadline, "big never became unreachable");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(host(&app, &small.id).await["state"], "ready");

    // Only `big` could take this VM: while it is unreachable, nothing can.
    let refused = place(&app, vm(8, 32_768)).await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.body
    );
    assert_eq!(refused.problem(), "no-host");
    let why = &refused.body["placement"];
    assert_eq!(why["left_out"]["unreachable"], 1, "{why}");
    assert!(
        why["summary"]
            .as_str()
            .unwrap()
            .starts_with("0/2 hosts fit: 1 insufficient"),
        "{why}"
    );
    // A small VM goes to the reachable host, never the silent one.
    let placed = place(&app, vm(1, 512)).await;
    assert_eq!(placed.status, StatusCode::CREATED, "{}", placed.body);
    assert_eq!(placed.body["host"]["name"], "small");

    // It heartbeats again: ready, and placements reach it.
    assert_eq!(beat(&app, &mut big).await.status, StatusCode::OK);
    assert_eq!(host(&app, &big.id).await["state"], "ready");
    let placed = place(&app, vm(8, 32_768)).await;
    assert_eq!(placed.status, StatusCode::CREATED, "{}", placed.body);
    assert_eq!(placed.body["host"]["name"], "big");

    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        if e.topic == "host" && e.kind == "state_changed" && e.subject == big.id {
            seen.push((e.data["from"].clone(), e.data["to"].clone()));
        }
    }
    assert_eq!(
        seen,
        [
            (json!("ready"), json!("unreachable")),
            (json!("unreachable"), json!("ready"))
        ]
    );
}

#[tokio::test]
async fn a_thousand_concurrent_placements_never_over_commit() {
    let app = Arc::new(app_with(|_| {}).await);
    let token = join_token(&app, json!({}), None).await;
    // 12 hosts of 2 threads (8 claimable vCPUs) and 8 GiB: room for a few hundred of the VMs
    // below, not a thousand.
    let mut ids = Vec::new();
    for i in 0..12 {
        let agent = join(
            &app,
            &token,
            &format!("n{i}"),
            report(2, 8192, 200_000, &[]),
        )
        .await;
        ids.push(agent.id);
    }
    let tasks: Vec<_> = (0..1000u64)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move {
                let vcpus = 1 + (i % 2) as u32;
                let memory = 256 * (1 + i % 4);
                (vcpus, memory, place(&app, vm(vcpus, memory)).await)
            })
        })
        .collect();
    let mut placed: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    let (mut n_placed, mut n_refused) = (0, 0);
    for task in tasks {
        let (vcpus, memory, reply) = task.await.unwrap();
        match reply.status {
            StatusCode::CREATED => {
                n_placed += 1;
                let claim = &reply.body["claim"];
                assert_eq!(claim["resources"]["vcpus"], vcpus);
                assert_eq!(claim["resources"]["memory_mib"], memory);
                let e = placed
                    .entry(claim["host"].as_str().unwrap().to_owned())
                    .or_default();
                e.0 += u64::from(vcpus);
                e.1 += memory;
                e.2 += 1;
            }
            StatusCode::UNPROCESSABLE_ENTITY => {
                n_refused += 1;
                assert_eq!(reply.problem(), "no-host", "{}", reply.body);
                let rejections = reply.body["placement"]["rejections"].as_array().unwrap();
                assert!(
                    !rejections.is_empty(),
                    "refused with reasons: {}",
                    reply.body
                );
            }
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    assert_eq!(n_placed + n_refused, 1000);
    assert!(
        n_placed > 50 && n_refused > 50,
        "the fleet fits part of the requests: {n_placed} placed"
    );
    // Every host: what the store says is claimed is what was placed, and within capacity.
    let mut claims_seen = 0;
    for id in &ids {
        let h = host(&app, id).await;
        let (vcpus, memory, count) = placed.get(id).copied().unwrap_or_default();
        assert_eq!(h["claimed"]["vcpus"], vcpus, "{h}");
        assert_eq!(h["claimed"]["memory_mib"], memory, "{h}");
        assert_eq!(h["claims"], count);
        assert!(
            vcpus <= 8 && memory <= 8192,
            "host {id} over-committed: {h}"
        );
        claims_seen += count;
        let record = app.app.store.host(id).await.unwrap();
        assert_eq!(u64::from(record.claimed.vcpus), vcpus);
        assert_eq!(record.claimed.memory_mib, memory);
    }
    assert_eq!(claims_seen, n_placed);
    let all = app.app.store.all_claims().await.unwrap();
    assert_eq!(all.len() as u64, n_placed);
}

#[tokio::test]
async fn nothing_fits_names_the_reasons_and_the_closest_host() {
    let app = app_with(|_| {}).await;
    let token = join_token(&app, json!({}), None).await;
    join(&app, &token, "a", report(4, 4096, 10_000, &[("rack", "b")])).await;
    join(
        &app,
        &token,
        "b",
        report(4, 65_536, 10_000, &[("rack", "a")]),
    )
    .await;
    join(&app, &token, "c", report(4, 2048, 10_000, &[("rack", "a")])).await;
    let reply = place(
        &app,
        json!({ "vcpus": 2, "memory_mib": 8192, "arch": "x86_64",
                "required_labels": { "rack": "b" } }),
    )
    .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    let why = &reply.body["placement"];
    assert_eq!(
        why["summary"],
        "0/3 hosts fit: 2 insufficient memory (capacity-filter), 1 missing label rack=b (label-filter)",
        "{why}"
    );
    assert_eq!(why["closest"]["host"]["name"], "a", "{why}");
    assert_eq!(
        why["closest"]["lacks"],
        json!([{ "plugin": "capacity-filter", "reason": "insufficient memory", "detail": "4096 MiB" }]),
        "{why}"
    );
    assert!(
        reply.body["detail"]
            .as_str()
            .unwrap()
            .starts_with("no host can take this VM: 0/3 hosts fit")
    );
}

#[tokio::test]
async fn a_placement_explains_its_choice_and_a_dry_run_claims_nothing() {
    let app = app_with(|_| {}).await;
    let token = join_token(&app, json!({}), None).await;
    join(&app, &token, "roomy", report(8, 32_768, 10_000, &[])).await;
    let full = join(&app, &token, "fuller", report(8, 32_768, 10_000, &[])).await;
    // Fill `fuller` a little: bin-packing prefers it.
    let first = app
        .post(
            "/v1/placements",
            json!({ "request": vm(4, 8192), "exclude_hosts": [] }),
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let first_host = first.body["host"]["id"].as_str().unwrap().to_owned();

    let dry = app
        .post(
            "/v1/placements",
            json!({ "request": vm(2, 4096), "dry_run": true }),
        )
        .await;
    assert_eq!(dry.status, StatusCode::OK, "{}", dry.body);
    assert!(dry.body.get("claim").is_none());
    assert_eq!(dry.body["host"]["id"], first_host.as_str(), "bin-packing");
    let why = &dry.body["explanation"];
    assert_eq!(why["summary"], "2/2 hosts fit");
    assert_eq!(
        why["pipeline"],
        json!([
            "capacity-filter@0.1.0",
            "label-filter@0.1.0",
            "binpack-score@0.1.0"
        ])
    );
    assert_eq!(why["chosen"]["scores"][0]["plugin"], "binpack-score");
    assert_eq!(why["chosen"]["scores"][0]["normalised"], 1.0);
    assert_eq!(why["runners_up"].as_array().unwrap().len(), 1);
    let h = host(&app, &first_host).await;
    assert_eq!(h["claims"], 1, "the dry run claimed nothing");

    // Excluding a host, and draining one.
    let other = app
        .post(
            "/v1/placements",
            json!({ "request": vm(1, 512), "dry_run": true, "exclude_hosts": [first_host] }),
        )
        .await;
    assert_ne!(other.body["host"]["id"], first_host.as_str());
    let drained = app
        .call(
            Method::PATCH,
            &format!("/v1/hosts/{}", full.id),
            Some(&app.admin),
            Some(json!({ "mode": "draining" })),
        )
        .await;
    assert_eq!(drained.status, StatusCode::OK, "{}", drained.body);
    assert_eq!(drained.body["state"], "draining");
    let away = place(&app, vm(1, 512)).await;
    assert_eq!(away.body["host"]["name"], "roomy", "{}", away.body);
    assert_eq!(away.body["explanation"]["left_out"]["draining"], 1);
    let ready = app.get("/v1/hosts?state=ready").await;
    assert_eq!(ready.body["items"].as_array().unwrap().len(), 1);

    // Bad requests are refused by field.
    let bad = app
        .post(
            "/v1/placements",
            json!({ "request": { "vcpus": 0, "memory_mib": 1, "arch": "x86_64" } }),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    let bad = app
        .post(
            "/v1/placements",
            json!({ "request": { "vcpus": 1, "memory_mib": 1, "arch": "vax" } }),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.body);
    assert_eq!(bad.body["errors"][0]["field"], "request.arch");
    let requester = app
        .call(
            Method::POST,
            "/v1/placements",
            Some(&app.requester),
            Some(json!({ "request": vm(1, 1) })),
        )
        .await;
    assert_eq!(requester.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn claims_expire_unless_confirmed_and_release_gives_back() {
    let app = app_with(|c| c.claim_ttl = Duration::from_secs(1)).await;
    let token = join_token(&app, json!({}), None).await;
    let a = join(&app, &token, "a", report(4, 8192, 10_000, &[])).await;
    let lapsing = place(&app, vm(2, 1024)).await;
    assert_eq!(lapsing.status, StatusCode::CREATED, "{}", lapsing.body);
    assert_eq!(lapsing.body["claim"]["state"], "pending");
    let kept = place(&app, vm(1, 512)).await;
    let kept_id = kept.body["claim"]["id"].as_str().unwrap().to_owned();
    let confirmed = app
        .post(&format!("/v1/claims/{kept_id}/confirm"), json!({}))
        .await;
    assert_eq!(confirmed.status, StatusCode::OK, "{}", confirmed.body);
    assert_eq!(confirmed.body["state"], "confirmed");
    assert_eq!(host(&app, &a.id).await["claimed"]["vcpus"], 3);

    // The monitor releases the pending one within a couple of seconds.
    let deadline = Instant::now() + Duration::from_secs(10);
    while host(&app, &a.id).await["claimed"]["vcpus"] != 1 {
        assert!(Instant::now() < deadline, "the pending claim never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone = app
        .get(&format!(
            "/v1/claims/{}",
            lapsing.body["claim"]["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);

    // A host with a claim cannot be removed; releasing the claim frees it.
    let refused = app
        .call(
            Method::DELETE,
            &format!("/v1/hosts/{}", a.id),
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
    let released = app
        .call(
            Method::DELETE,
            &format!("/v1/claims/{kept_id}"),
            Some(&app.operator),
            None,
        )
        .await;
    assert_eq!(released.status, StatusCode::OK, "{}", released.body);
    assert_eq!(host(&app, &a.id).await["claimed"]["vcpus"], 0);
    let removed = app
        .call(
            Method::DELETE,
            &format!("/v1/hosts/{}", a.id),
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.body);
    assert_eq!(
        app.get(&format!("/v1/hosts/{}", a.id)).await.status,
        StatusCode::NOT_FOUND
    );
}

/// A multipart body with a plugin's manifest and component.
pub(crate) fn plugin_upload(
    app: &TestApp,
    name: &str,
    manifest: &str,
    wasm: Vec<u8>,
) -> Request<Body> {
    let boundary = "slipway-test-boundary";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"manifest\"\r\n\r\n{manifest}\r\n")
            .as_bytes(),
    );
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"component\"; filename=\"p.wasm\"\r\nContent-Type: application/wasm\r\n\r\n")
            .as_bytes(),
    );
    body.extend_from_slice(&wasm);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    Request::put(format!("/v1/plugins/{name}"))
        .header(header::AUTHORIZATION, format!("Bearer {}", app.admin))
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test]
async fn plugins_and_the_pipeline_change_at_run_time_and_a_trap_fails_one_decision() {
    let app = app_with(|_| {}).await;
    let token = join_token(&app, json!({}), None).await;
    join(&app, &token, "a", report(4, 8192, 10_000, &[])).await;
    join(&app, &token, "b", report(8, 16_384, 10_000, &[])).await;

    // Install the hostile plugin without a restart.
    let manifest =
        std::fs::read_to_string(Path::new(artifacts::TEST_PLUGIN_HOSTILE.dir).join("plugin.toml"))
            .unwrap();
    let wasm = std::fs::read(artifacts::TEST_PLUGIN_HOSTILE.wasm).unwrap();
    let installed = app
        .send(plugin_upload(&app, "hostile", &manifest, wasm.clone()))
        .await;
    assert_eq!(installed.status, StatusCode::CREATED, "{}", installed.body);
    assert_eq!(installed.body["source"], "installed");
    let listed = app
        .call(Method::GET, "/v1/plugins", Some(&app.admin), None)
        .await;
    assert!(
        listed
            .body
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "hostile"),
        "{}",
        listed.body
    );

    // A pipeline naming it mid-way, trapping on odd vCPU counts.
    let before = app.get("/v1/placement/pipeline").await;
    let revision = before.body["revision"].as_u64().unwrap();
    let set = app
        .send(
            Request::put("/v1/placement/pipeline")
                .header(header::AUTHORIZATION, format!("Bearer {}", app.admin))
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::IF_MATCH, format!("\"{revision}\""))
                .body(Body::from(
                    json!({ "steps": [
                        { "plugin": "capacity-filter" },
                        { "plugin": "hostile", "config": { "mode": "panic-on-odd-vcpus" } },
                        { "plugin": "spread-score", "weight": 2.0 },
                        { "plugin": "binpack-score", "enabled": false }
                    ]})
                    .to_string(),
                ))
                .unwrap(),
        )
        .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.body);
    assert_eq!(
        set.body["running"],
        json!([
            "capacity-filter@0.1.0",
            "hostile@0.1.0",
            "spread-score@0.1.0"
        ])
    );
    let trapped = place(&app, vm(3, 512)).await;
    assert_eq!(
        trapped.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        trapped.body
    );
    assert_eq!(trapped.problem(), "plugin-failed");
    let detail = trapped.body["detail"].as_str().unwrap();
    assert!(detail.contains("plugin hostile trapped"), "{detail}");
    let next = place(&app, vm(2, 512)).await;
    assert_eq!(
        next.status,
        StatusCode::CREATED,
        "the next decision works: {}",
        next.body
    );
    assert_eq!(
        next.body["host"]["name"], "b",
        "spread-score prefers the emptier host"
    );
    let metrics = app.get("/metrics").await;
    let text = metrics.body.as_str().unwrap();
    assert!(
        text.contains("slipway_plugin_failures_total{plugin=\"hostile\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(
            "slipway_plugin_call_duration_seconds_count{plugin=\"spread-score\",call=\"score\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("slipway_placement_duration_seconds_count 2"),
        "{text}"
    );
    assert!(text.contains("slipway_hosts{state=\"ready\"} 2"), "{text}");

    // The revision guards concurrent edits; a bad pipeline is refused by field.
    let stale = app
        .send(
            Request::put("/v1/placement/pipeline")
                .header(header::AUTHORIZATION, format!("Bearer {}", app.admin))
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::IF_MATCH, format!("\"{revision}\""))
                .body(Body::from(json!({ "steps": [] }).to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(
        stale.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        stale.body
    );
    for (steps, field) in [
        (
            json!([{ "plugin": "capacity-filter" }, { "plugin": "nope" }]),
            "steps[1].plugin",
        ),
        (
            json!([{ "plugin": "spread-score", "weight": -1.0 }]),
            "steps",
        ),
        (
            json!([{ "plugin": "capacity-filter", "config": { "cpu-allocation-ratio": "lots" } }]),
            "steps[0].config",
        ),
    ] {
        let reply = app
            .call(
                Method::PUT,
                "/v1/placement/pipeline",
                Some(&app.admin),
                Some(json!({ "steps": steps })),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            reply.body
        );
        assert_eq!(reply.body["errors"][0]["field"], field, "{}", reply.body);
    }

    // Replacing the plugin with a new version: the pipeline runs it from then on.
    let newer = manifest.replace("version = \"0.1.0\"", "version = \"0.2.0\"");
    let replaced = app
        .send(plugin_upload(&app, "hostile", &newer, wasm.clone()))
        .await;
    assert_eq!(replaced.status, StatusCode::OK, "{}", replaced.body);
    assert_eq!(
        app.get("/v1/placement/pipeline").await.body["running"][1],
        "hostile@0.2.0"
    );
    // Removing it is refused while a step uses it; disabling the step first allows it.
    let in_use = app
        .call(
            Method::DELETE,
            "/v1/plugins/hostile",
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(in_use.status, StatusCode::CONFLICT, "{}", in_use.body);
    let disabled = app
        .call(
            Method::PUT,
            "/v1/placement/pipeline",
            Some(&app.admin),
            Some(json!({ "steps": [
                { "plugin": "capacity-filter" },
                { "plugin": "hostile", "enabled": false },
                { "plugin": "binpack-score" }
            ]})),
        )
        .await;
    assert_eq!(disabled.status, StatusCode::OK, "{}", disabled.body);
    let removed = app
        .call(
            Method::DELETE,
            "/v1/plugins/hostile",
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.body);
    assert!(
        !app.dir
            .path()
            .join("data/plugins-installed/hostile")
            .exists()
    );
    // A manifest naming another plugin, or a component that is not one, changes nothing.
    let mismatch = app
        .send(plugin_upload(&app, "other", &manifest, wasm))
        .await;
    assert_eq!(
        mismatch.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        mismatch.body
    );
    let garbage = app
        .send(plugin_upload(
            &app,
            "hostile",
            &manifest,
            b"not wasm".to_vec(),
        ))
        .await;
    assert_eq!(
        garbage.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        garbage.body
    );
    assert_eq!(place(&app, vm(1, 512)).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn the_inventory_and_pipeline_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = first_party_plugins(dir.path());
    let config = || {
        let mut c = slipway_server::config::Config::with_data_dir(&dir.path().join("data"));
        c.plugins = plugins.clone();
        c
    };
    let server = slipway_server::Server::start(config()).await.unwrap();
    let app = TestApp::attach(server.app.clone()).await;
    let token = join_token(&app, json!({}), None).await;
    let mut a = join(
        &app,
        &token,
        "a",
        report(4, 8192, 10_000, &[("rack", "r1")]),
    )
    .await;
    assert_eq!(beat(&app, &mut a).await.status, StatusCode::OK);
    let placed = place(&app, vm(2, 1024)).await;
    assert_eq!(placed.status, StatusCode::CREATED);
    let set = app
        .call(
            Method::PUT,
            "/v1/placement/pipeline",
            Some(&app.admin),
            Some(
                json!({ "steps": [{ "plugin": "capacity-filter" }, { "plugin": "spread-score" }] }),
            ),
        )
        .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.body);
    drop(app);
    server.stop().await.unwrap();

    let server = slipway_server::Server::start(config()).await.unwrap();
    let app = TestApp::attach(server.app.clone()).await;
    let h = host(&app, &a.id).await;
    assert_eq!(h["state"], "ready", "heard from just now: {h}");
    assert_eq!(h["claimed"]["vcpus"], 2);
    assert_eq!(h["report"]["labels"]["rack"], "r1");
    assert_eq!(
        app.get("/v1/placement/pipeline").await.body["running"],
        json!(["capacity-filter@0.1.0", "spread-score@0.1.0"])
    );
    // The heartbeat sequence survived too: the last one cannot be replayed.
    let replayed = beat_with(&app, &a.credential, a.seq, &a.report).await;
    assert_eq!(replayed.status, StatusCode::CONFLICT);
    assert_eq!(beat(&app, &mut a).await.status, StatusCode::OK);
    drop(app);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn two_servers_sharing_one_database_never_over_commit() {
    // Each server decides on its own inventory, which the other's claims make stale: only the
    // store's conditional claim stands between them and an over-committed host.
    let one = Arc::new(app_with(|_| {}).await);
    let token = join_token(&one, json!({}), None).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            join(
                &one,
                &token,
                &format!("n{i}"),
                report(2, 4096, 100_000, &[]),
            )
            .await
            .id,
        );
    }
    let mut config = one.app.config.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    let two = Arc::new(TestApp::open(config, tempfile::tempdir().unwrap()).await);
    assert_eq!(
        two.get("/v1/hosts").await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        4,
        "the second server reads the same hosts"
    );
    let tasks: Vec<_> = (0..200u64)
        .map(|i| {
            let app = if i % 2 == 0 { one.clone() } else { two.clone() };
            tokio::spawn(async move { place(&app, vm(1, 256)).await })
        })
        .collect();
    let (mut placed, mut conflicts) = (0u64, 0);
    for task in tasks {
        let reply = task.await.unwrap();
        match reply.status {
            StatusCode::CREATED => {
                placed += 1;
                conflicts += reply.body["explanation"]["claim_conflicts"]
                    .as_array()
                    .map_or(0, Vec::len);
            }
            StatusCode::UNPROCESSABLE_ENTITY => {}
            StatusCode::SERVICE_UNAVAILABLE => conflicts += 1,
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    assert!(
        conflicts > 0,
        "the two servers never raced: the test tests nothing"
    );
    // 4 hosts × 8 claimable vCPUs: at most 32 VMs of one vCPU.
    assert!(placed <= 32, "{placed} placed");
    assert!(placed >= 16, "most of the room is used: {placed} placed");
    let mut claimed = 0;
    for id in &ids {
        let record = one.app.store.host(id).await.unwrap();
        assert!(record.claimed.vcpus <= 8, "{id} over-committed: {record:?}");
        claimed += u64::from(record.claimed.vcpus);
    }
    assert_eq!(claimed, placed);
    assert_eq!(
        one.app.store.all_claims().await.unwrap().len() as u64,
        placed
    );
}
