//! A request becomes a real VM: a server and two agents on loopback, the test guest (a Debian
//! cloud kernel and a busybox root, built by `scripts/fixtures/test-guest`) registered as a model
//! VM and staged, then deployed with an app it lacks; the guest boots under QEMU, fetches its
//! seed, installs the app and reports ready with the identity it was given.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Agent, Api, free_port, start_server_with};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The test guest's directory (`disk.qcow2`, `guest.json`), built or taken from the cache; or
/// why it cannot be here.
fn test_guest() -> Result<PathBuf, String> {
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        return Err("qemu-system-x86_64 is not installed (scripts/fixtures/qemu-system)".into());
    }
    let out = Command::new(repo().join("scripts/fixtures/test-guest"))
        .output()
        .map_err(|e| format!("scripts/fixtures/test-guest: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "scripts/fixtures/test-guest failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let dir = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned();
    Ok(PathBuf::from(dir))
}

/// Skips (printing why) unless the machine can run the test; CI sets the variable so that it
/// must.
fn guest_or_skip() -> Option<PathBuf> {
    match test_guest() {
        Ok(dir) => Some(dir),
        Err(why) if std::env::var_os("SLIPWAY_REQUIRE_QEMU_TESTS").is_none() => {
            eprintln!("skipped: {why}");
            None
        }
        Err(why) => panic!("{why}"),
    }
}

impl Api {
    async fn upload(&self, name: &str, kind: &str, bytes: Vec<u8>) -> String {
        let response = self
            .http
            .post(format!(
                "{}/v1/images?name={name}&kind={kind}&wait=true",
                self.url
            ))
            .bearer_auth(&self.admin)
            .header("content-type", "application/octet-stream")
            .body(bytes)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let job: Value = response.json().await.unwrap();
        assert_eq!(status, 201, "{job}");
        job["result"]["id"].as_str().unwrap().to_owned()
    }

    async fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (status, reply) = self.call(method.clone(), path, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {reply}"
        );
        reply
    }
}

/// A bundle: a tar with `install.sh`, which leaves a mark the test can see in the guest's report.
fn bundle(dir: &Path) -> Vec<u8> {
    let src = dir.join("bundle");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("install.sh"),
        "#!/bin/sh\nset -e\nmkdir -p \"$SLIPWAY_ROOT/opt/hello\"\necho hello > \"$SLIPWAY_ROOT/opt/hello/installed\"\necho \"hello installed on $(hostname)\"\n",
    )
    .unwrap();
    let tar = dir.join("hello.tar");
    let status = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&src)
        .arg("install.sh")
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read(tar).unwrap()
}

/// The VM once its deploy job has ended.
async fn wait_for_vm(api: &Api, id: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let vm = api
            .ok(reqwest::Method::GET, &format!("/v1/vms/{id}"), None)
            .await;
        let job = api
            .ok(
                reqwest::Method::GET,
                &format!("/v1/jobs/{}", vm["job"].as_str().unwrap()),
                None,
            )
            .await;
        if job["state"] == "succeeded" || job["state"] == "failed" {
            return api
                .ok(reqwest::Method::GET, &format!("/v1/vms/{id}"), None)
                .await;
        }
        assert!(Instant::now() < deadline, "VM {id} still deploying: {vm}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Kills every QEMU whose command line names a path under the directory.
struct KillVms(PathBuf);

impl Drop for KillVms {
    fn drop(&mut self) {
        let _ = Command::new("pkill")
            .args(["-KILL", "-f"])
            .arg(self.0.display().to_string())
            .status();
    }
}

/// A server with the first-party plugins and the first-boot agent, two agents joined (each on a
/// port of its own, kept across restarts), the test guest registered as a model VM and staged,
/// and an app it lacks.
struct Env {
    _dir: tempfile::TempDir,
    /// Stops any QEMU a failed test leaves (they run detached, on purpose).
    _vms: KillVms,
    server: slipway_server::Server,
    api: Api,
    url: String,
    agents: Vec<(Agent, PathBuf, u16)>,
    os: Value,
}

async fn setup(adjust: impl Fn(&mut slipway_server::config::Config)) -> Option<Env> {
    let guest = guest_or_skip()?;
    let described: Value =
        serde_json::from_slice(&std::fs::read(guest.join("guest.json")).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let plugins = slipway_test_artifacts::first_party_placement_plugins(dir.path());
    std::os::unix::fs::symlink(
        slipway_test_artifacts::IDENTITY_LINUX.dir,
        plugins.join("identity-linux"),
    )
    .unwrap();
    let server = start_server_with(&data, port, |c| {
        c.plugins = plugins.clone();
        c.guest_agent = Some(slipway_test_artifacts::GUEST_AGENT.into());
        c.ready_timeout = Duration::from_secs(120);
        adjust(c);
    })
    .await;
    let api = Api::new(&url, &data);

    // Two hosts, each an agent with its own data directory.
    let (_, token) = api
        .call(
            reqwest::Method::POST,
            "/v1/join-tokens",
            Some(json!({ "name": "e2e", "uses": 2 })),
        )
        .await;
    let token_file = dir.path().join("join.token");
    std::fs::write(&token_file, token["secret"].as_str().unwrap()).unwrap();
    let agents: Vec<(Agent, PathBuf, u16)> = ["node-a", "node-b"]
        .into_iter()
        .map(|name| {
            let data = dir.path().join(name);
            let port = free_port();
            (
                Agent::start_at(&url, &data, Some(&token_file), name, port),
                data,
                port,
            )
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while api
        .hosts()
        .await
        .iter()
        .filter(|h| h["state"] == "ready")
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "the agents did not join");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The catalog: the test guest as a model VM, staged; an app it lacks, as a bundle.
    let image = api
        .upload(
            "test-guest",
            "disk",
            std::fs::read(guest.join("disk.qcow2")).unwrap(),
        )
        .await;
    let artifact = api.upload("hello", "artifact", bundle(dir.path())).await;
    api.ok(
        reqwest::Method::POST,
        "/v1/applications",
        Some(
            json!({"name": "hello", "version": "1.0", "recipes": [{"os_family": "linux",
            "method": {"kind": "bundle", "artifact": artifact, "install_script": "install.sh"}}]}),
        ),
    )
    .await;
    let mut hardware = described["hardware"].clone();
    hardware["disks"][0]["image"] = json!(image);
    let os = described["os"].clone();
    api.ok(
        reqwest::Method::POST,
        "/v1/model-vms",
        Some(json!({"name": "tiny", "hardware": hardware, "os": os})),
    )
    .await;
    let staged = api
        .ok(
            reqwest::Method::POST,
            "/v1/staged-vms?wait=true",
            Some(json!({"model_vm": "tiny"})),
        )
        .await;
    assert_eq!(staged["state"], "succeeded", "{staged}");
    Some(Env {
        _vms: KillVms(dir.path().to_owned()),
        _dir: dir,
        server,
        api,
        url,
        agents,
        os,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_becomes_a_vm_that_boots_installs_its_app_and_reports_ready() {
    let Some(env) = setup(|_| {}).await else {
        return;
    };
    let Env {
        _dir,
        _vms,
        server,
        api,
        url,
        mut agents,
        os,
        ..
    } = env;
    let api = &api;

    // The plan names the host; the deployment goes there and the guest reports ready.
    let request =
        json!({"os": {"distro": os["distro"]}, "applications": ["hello"], "hostname": "web-1"});
    let plan = api
        .ok(reqwest::Method::POST, "/v1/plans", Some(request.clone()))
        .await;
    assert_eq!(plan["install"][0]["name"], "hello", "{plan}");
    let deployed = api
        .ok(reqwest::Method::POST, "/v1/deployments", Some(request))
        .await;
    let first = deployed["vms"][0]["id"].as_str().unwrap().to_owned();
    let vm = wait_for_vm(api, &first, Duration::from_secs(180)).await;
    let host = vm["host"].as_str().unwrap().to_owned();
    let console = api
        .call(
            reqwest::Method::GET,
            &format!("/v1/vms/{first}/console"),
            None,
        )
        .await;
    assert_eq!(vm["phase"], "ready", "{vm}\nconsole: {console:?}");
    let ready = &vm["ready"];
    assert_eq!(ready["hostname"], "web-1", "{vm}");
    assert_eq!(ready["instance_id"], vm["instance_id"]);
    assert_eq!(ready["agent"], "slipway-firstboot");
    for applied in ["hostname", "machine-id"] {
        assert!(
            ready["applied"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a == applied),
            "{applied} not applied: {ready}"
        );
    }
    let app = &ready["apps"][0];
    assert_eq!(app["name"], "hello", "{ready}");
    assert_eq!(app["ok"], true, "{ready}");
    assert!(
        app["detail"]
            .as_str()
            .unwrap()
            .contains("hello installed on web-1"),
        "{ready}"
    );
    assert!(vm["transferred_bytes"].as_u64().unwrap() > 0, "{vm}");
    let claim = vm["claim"].as_str().unwrap().to_owned();
    let claimed = api
        .ok(reqwest::Method::GET, &format!("/v1/claims/{claim}"), None)
        .await;
    assert_eq!(claimed["state"], "confirmed");
    assert_eq!(claimed["host"], host.as_str());

    // The host's agent is killed (SIGKILL) and started again: the VM kept running, and the
    // agent adopts it, same QEMU process.
    let at = agents
        .iter()
        .position(|(_, d, _)| d.ends_with(vm["host_name"].as_str().unwrap()))
        .unwrap();
    let (agent, data, port) = &mut agents[at];
    let record = |data: &Path| -> Value {
        serde_json::from_slice(
            &std::fs::read(data.join("vms").join(&first).join("vm.json")).unwrap(),
        )
        .unwrap()
    };
    let pid = record(data)["pid"].as_u64().unwrap();
    let _ = agent.child.kill();
    let _ = agent.child.wait();
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU died with its agent"
    );
    let name = data.file_name().unwrap().to_string_lossy().into_owned();
    *agent = Agent::start_at(&url, data, None, &name, *port);
    let secret: Value =
        serde_json::from_slice(&std::fs::read(data.join("agent.json")).unwrap()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let answer = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}/v1/vms/{first}"))
            .bearer_auth(secret["agent_secret"].as_str().unwrap())
            .send()
            .await;
        if let Ok(r) = answer
            && r.status().is_success()
        {
            break r.json::<Value>().await.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the restarted agent did not answer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(status["pid"], pid, "{status}");
    assert_eq!(status["qmp_status"], "running", "{status}");

    // Stopped (the guest powers itself down on ACPI's button), started again, the console read.
    let stopped = api
        .ok(
            reqwest::Method::POST,
            &format!("/v1/vms/{first}/stop"),
            Some(json!({"timeout_s": 30})),
        )
        .await;
    assert_eq!(stopped["state"], "stopped", "{stopped}");
    let started = api
        .ok(
            reqwest::Method::POST,
            &format!("/v1/vms/{first}/start"),
            None,
        )
        .await;
    assert_eq!(started["state"], "running", "{started}");
    let console = reqwest::Client::new()
        .get(format!("{url}/v1/vms/{first}/console"))
        .bearer_auth(&api.admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(console.contains("slipway-test-guest: up"), "{console}");

    // A second VM from the same staged image, pinned to the same host: nothing is sent again,
    // and its disk is an overlay on the same cached base.
    let asked = Instant::now();
    let second = api
        .ok(
            reqwest::Method::POST,
            "/v1/deployments",
            Some(json!({"os": {"distro": os["distro"]}, "hostname": "web-2", "placement": {"host": host}})),
        )
        .await;
    let accepted = asked.elapsed();
    let job = second["vms"][0]["job"].as_str().unwrap().to_owned();
    let second = second["vms"][0]["id"].as_str().unwrap().to_owned();
    // How long until QEMU runs (the job enters `boot` once the agent has started it): printed,
    // the bench measures it properly.
    loop {
        let j = api
            .ok(reqwest::Method::GET, &format!("/v1/jobs/{job}"), None)
            .await;
        if j["step"].as_u64().unwrap_or(0) >= 2 || j["state"] != "running" {
            eprintln!(
                "cached deploy: accepted in {:?}, QEMU started {:?} after the request (polled every 5 ms)",
                accepted,
                asked.elapsed()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let vm2 = wait_for_vm(api, &second, Duration::from_secs(180)).await;
    assert_eq!(vm2["phase"], "ready", "{vm2}");
    assert_eq!(vm2["host"], host.as_str());
    assert_eq!(vm2["transferred_bytes"], 0, "{vm2}");
    assert_eq!(vm2["ready"]["hostname"], "web-2");
    assert_ne!(vm2["macs"], vm["macs"]);

    // Both deleted: their claims released, their files gone from the host.
    let agent_dir = agents
        .iter()
        .find(|(_, d, _)| d.ends_with(vm["host_name"].as_str().unwrap()))
        .expect("the chosen host's agent")
        .1
        .clone();
    for id in [&first, &second] {
        // A copy-on-write overlay whose backing file is the one cached base.
        let info = Command::new("qemu-img")
            .args(["info", "--output=json", "-U"])
            .arg(agent_dir.join("vms").join(id).join("disk0.qcow2"))
            .output()
            .unwrap();
        let info: Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(
            info["full-backing-filename"].as_str().map(Path::new),
            Some(
                agent_dir
                    .join("images")
                    .join(vm["image"].as_str().unwrap())
                    .as_path()
            ),
            "{info}"
        );
        api.ok(reqwest::Method::DELETE, &format!("/v1/vms/{id}"), None)
            .await;
        assert!(
            !agent_dir.join("vms").join(id).exists(),
            "{id}'s files stayed"
        );
    }
    let claims = api.ok(reqwest::Method::GET, "/v1/claims", None).await;
    assert_eq!(claims["items"], json!([]));
    drop(agents);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_never_reports_fails_with_its_console_and_gives_everything_back() {
    // The seed where no server listens: the guest boots, and waits for a seed that never comes.
    let Some(env) = setup(|c| {
        c.seed_url = Some("http://10.0.2.2:9".into());
        c.ready_timeout = Duration::from_secs(20);
    })
    .await
    else {
        return;
    };
    let api = &env.api;
    let deployed = api
        .ok(
            reqwest::Method::POST,
            "/v1/deployments",
            Some(json!({"os": {"distro": env.os["distro"]}, "hostname": "silent"})),
        )
        .await;
    let id = deployed["vms"][0]["id"].as_str().unwrap().to_owned();
    let vm = wait_for_vm(api, &id, Duration::from_secs(120)).await;
    assert_eq!(vm["phase"], "failed", "{vm}");
    let error = vm["error"].as_str().unwrap();
    assert!(
        error.starts_with("step ready failed: the guest did not report ready within 20 s"),
        "{error}"
    );
    assert!(
        error.contains("slipway-test-guest: up"),
        "the console's end: {error}"
    );
    assert_eq!(vm.get("claim"), None, "{vm}");
    let claims = api.ok(reqwest::Method::GET, "/v1/claims", None).await;
    assert_eq!(claims["items"], json!([]));
    for (_, data, _) in &env.agents {
        assert!(
            !data.join("vms").join(&id).exists(),
            "the failed VM stayed on its host"
        );
    }
    let job = api
        .ok(
            reqwest::Method::GET,
            &format!("/v1/jobs/{}", vm["job"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(job["error"]["step"], "ready");
    let Env { server, agents, .. } = env;
    drop(agents);
    server.stop().await.unwrap();
}
