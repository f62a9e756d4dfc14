//! The real `slipway-agent` binary against a real server on loopback: joining, heartbeating,
//! surviving restarts of either side, joining again when removed, and its own API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use slipway_server::Server;
use slipway_server::config::Config;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[path = "agent/deploy.rs"]
mod deploy;
#[path = "agent/transfer.rs"]
mod transfer;

/// An agent with no server to join (it keeps trying), for its own API.
struct StandaloneAgent {
    child: Child,
    url: String,
    addr: std::net::SocketAddr,
    secret: String,
    data: PathBuf,
}

impl StandaloneAgent {
    fn start(data: &Path, extra: &[&str]) -> Self {
        std::fs::create_dir_all(data).unwrap();
        let port = free_port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_slipway-agent"))
            .args([
                "run",
                "--server",
                "http://127.0.0.1:1",
                "--join-token",
                "slj_none",
            ])
            .args(["--listen", &addr.to_string(), "--name", "standalone"])
            .arg("--data-dir")
            .arg(data)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(data.with_extension("log")).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let secret = loop {
            let up = std::net::TcpStream::connect(addr).is_ok();
            let state = std::fs::read(data.join("agent.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
            if let Some(secret) = state
                .as_ref()
                .and_then(|s| s["agent_secret"].as_str())
                .filter(|_| up)
            {
                break secret.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not start: {}",
                std::fs::read_to_string(data.with_extension("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Self {
            child,
            url: format!("http://{addr}"),
            addr,
            secret,
            data: data.to_owned(),
        }
    }
}

impl Drop for StandaloneAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the test runs as root; a skip (printed) otherwise, unless CI requires it.
fn root_or_skip() -> bool {
    if rustix_is_root() {
        return true;
    }
    assert!(
        std::env::var_os("SLIPWAY_REQUIRE_ROOT_TESTS").is_none(),
        "this test needs root, and SLIPWAY_REQUIRE_ROOT_TESTS is set"
    );
    eprintln!("skipped: needs root");
    false
}

fn rustix_is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

/// Unmounts a file system when dropped.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

async fn start_server(data: &Path, port: u16) -> Server {
    start_server_with(data, port, |_| {}).await
}

async fn start_server_with(data: &Path, port: u16, adjust: impl Fn(&mut Config)) -> Server {
    let mut config = Config::with_data_dir(data);
    config.listen = format!("127.0.0.1:{port}").parse().unwrap();
    config.heartbeat_interval = Duration::from_millis(200);
    config.missed_heartbeats = 3;
    adjust(&mut config);
    // A port just freed may linger briefly after a stop.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Server::start(config.clone()).await {
            Ok(server) => return server,
            Err(e) if Instant::now() < deadline => {
                eprintln!("server not started yet: {e:#}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the server did not start: {e:#}"),
        }
    }
}

/// A `slipway-agent` process, stopped with SIGTERM when dropped.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn start(url: &str, data: &Path, token_file: Option<&Path>) -> Self {
        Self::start_named(url, data, token_file, "node-x")
    }

    fn start_named(url: &str, data: &Path, token_file: Option<&Path>, name: &str) -> Self {
        Self::start_at(url, data, token_file, name, 0)
    }

    /// On a port of its own (0: any), so that a restart keeps the URL the server calls.
    fn start_at(url: &str, data: &Path, token_file: Option<&Path>, name: &str, port: u16) -> Self {
        let log = data.with_extension(format!(
            "log.{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut command = Command::new(env!("CARGO_BIN_EXE_slipway-agent"));
        command
            .args([
                "run",
                "--server",
                url,
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .args(["--name", name, "--label", "zone=a"])
            .arg("--data-dir")
            .arg(data)
            .env("SLIPWAY_AGENT_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(file) = token_file {
            command.arg("--join-token-file").arg(file);
        }
        Self {
            child: command.spawn().unwrap(),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Api {
    url: String,
    admin: String,
    http: reqwest::Client,
}

impl Api {
    fn new(url: &str, data: &Path) -> Self {
        Self {
            url: url.to_owned(),
            admin: std::fs::read_to_string(data.join("admin.token"))
                .unwrap()
                .trim()
                .to_owned(),
            http: reqwest::Client::new(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.admin);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn hosts(&self) -> Vec<Value> {
        let (status, body) = self.call(reqwest::Method::GET, "/v1/hosts", None).await;
        assert_eq!(status, 200, "{body}");
        body["items"].as_array().unwrap().clone()
    }

    /// Waits until there is exactly one host and `check` holds for it.
    async fn one_host(&self, what: &str, agent: &Agent, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let hosts = self.hosts().await;
            if let [host] = hosts.as_slice()
                && check(host)
            {
                return host.clone();
            }
            assert!(hosts.len() <= 1, "the agent duplicated itself: {hosts:?}");
            assert!(
                Instant::now() < deadline,
                "{what}: hosts are {hosts:?}\nagent log:\n{}",
                agent.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn last_heartbeat(host: &Value) -> String {
    host["last_heartbeat"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_joins_heartbeats_and_outlives_restarts_of_either_side() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let server = start_server(&data, port).await;
    let api = Api::new(&url, &data);
    let (status, created) = api
        .call(
            reqwest::Method::POST,
            "/v1/join-tokens",
            Some(json!({ "name": "test", "labels": { "rack": "r1" } })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let token_file = dir.path().join("join.token");
    std::fs::write(&token_file, created["secret"].as_str().unwrap()).unwrap();
    let agent_data = dir.path().join("agent");

    // It joins, with the machine's real numbers.
    let mut agent = Agent::start(&url, &agent_data, Some(&token_file));
    let host = api
        .one_host("the agent never joined", &agent, |h| h["state"] == "ready")
        .await;
    let id = host["id"].as_str().unwrap().to_owned();
    let report = &host["report"];
    assert_eq!(host["name"], "node-x");
    assert!(report["cpus"].as_u64().unwrap() >= 1, "{report}");
    assert!(report["memory_total_mib"].as_u64().unwrap() > 0, "{report}");
    assert!(report["disk_total_mib"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["labels"], json!({ "rack": "r1", "zone": "a" }));
    let hypervisor = &report["hypervisor"];
    let expected = match (
        hypervisor["qemu"].is_object(),
        hypervisor["kvm"]["usable"] == true,
    ) {
        (false, _) => "none",
        (true, true) => "kvm",
        (true, false) => "tcg",
    };
    assert_eq!(hypervisor["accelerator"], expected, "{hypervisor}");
    // The server knows the host before the agent has written down its credential.
    let state = saved_state(&agent_data, |s| s["host_id"] == id.as_str()).await;

    // Its API: open health, the rest with the secret it gave the server.
    let agent_url = host["agent_url"].as_str().unwrap().to_owned();
    let http = reqwest::Client::new();
    let health = http
        .get(format!("{agent_url}/v1/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let wrong = http
        .get(format!("{agent_url}/v1/status"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let none = http
        .get(format!("{agent_url}/v1/vms"))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    let status = http
        .get(format!("{agent_url}/v1/status"))
        .bearer_auth(state["agent_secret"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);
    let status: Value = status.json().await.unwrap();
    assert_eq!(status["labels"]["zone"], "a");

    // The agent restarts (without its join token): the same host, heartbeating.
    agent.stop();
    let before = last_heartbeat(&api.hosts().await[0]);
    let agent = Agent::start(&url, &agent_data, None);
    api.one_host("the restarted agent never heartbeat", &agent, |h| {
        h["id"] == id.as_str() && last_heartbeat(h) > before
    })
    .await;
    assert!(
        !agent.log().contains("joined the server"),
        "it reused its credential:\n{}",
        agent.log()
    );

    // The server restarts: the agent keeps going, and is still one host.
    server.stop().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopped_at = chrono_now();
    let server = start_server(&data, port).await;
    api.one_host(
        "heartbeats never resumed after the server restarted",
        &agent,
        |h| h["id"] == id.as_str() && h["state"] == "ready" && last_heartbeat(h) > stopped_at,
    )
    .await;
    drop(agent);

    // Removed from the inventory, it joins again, with the same agent id: one host again.
    let agent = Agent::start(&url, &agent_data, Some(&token_file));
    let removed_at = chrono_now();
    let (status, body) = api
        .call(reqwest::Method::DELETE, &format!("/v1/hosts/{id}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let again = api
        .one_host("the removed agent never joined again", &agent, |h| {
            h["state"] == "ready" && h["joined_at"].as_str().unwrap() > removed_at.as_str()
        })
        .await;
    assert_eq!(again["name"], "node-x");
    let rejoined = saved_state(&agent_data, |s| s["host_id"] == again["id"]).await;
    assert_eq!(rejoined["agent_id"], state["agent_id"]);
    drop(agent);
    server.stop().await.unwrap();
}

/// The agent's saved state once `check` holds of it (it is replaced atomically, so never torn).
async fn saved_state(agent_data: &Path, check: impl Fn(&Value) -> bool) -> Value {
    let path = agent_data.join("agent.json");
    let mut last = Value::Null;
    for _ in 0..100 {
        if let Ok(bytes) = std::fs::read(&path) {
            last = serde_json::from_slice(&bytes).unwrap();
            if check(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{} never reached the expected state: {last}",
        path.display()
    );
}

/// Now, as the API writes times (RFC 3339, milliseconds), for comparing with them as text.
fn chrono_now() -> String {
    slipway_core::resources::Timestamp::now().to_string()
}

/// `slipway-agent report` with `--reserved-memory-mib` and a label set in the file, the
/// environment and on the command line: the command line wins, then the environment.
#[test]
fn report_prints_the_machine_with_flags_over_environment_over_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("agent.toml"),
        "reserved_memory_mib = 64\nqemu = \"/nonexistent/qemu\"\n[labels]\nrack = \"r1\"\n",
    )
    .unwrap();
    let report = |envs: &[(&str, &str)], args: &[&str]| -> Value {
        let out = Command::new(env!("CARGO_BIN_EXE_slipway-agent"))
            .arg("report")
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .env_remove("SLIPWAY_AGENT_RESERVED_MEMORY_MIB")
            .envs(envs.iter().copied())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let from_file = report(&[], &[]);
    assert_eq!(from_file["memory_reserved_mib"], 64);
    assert_eq!(from_file["labels"], json!({ "rack": "r1" }));
    assert!(from_file["cpus"].as_u64().unwrap() >= 1);
    assert!(from_file["memory_total_mib"].as_u64().unwrap() > 0);
    // The configured QEMU does not exist: no QEMU, so no accelerator.
    assert!(from_file["hypervisor"]["qemu"].is_null());
    assert_eq!(from_file["hypervisor"]["accelerator"], "none");
    assert!(
        !from_file["hypervisor"]["kvm"]["detail"]
            .as_str()
            .unwrap()
            .is_empty()
    );

    let env = [("SLIPWAY_AGENT_RESERVED_MEMORY_MIB", "128")];
    assert_eq!(report(&env, &[])["memory_reserved_mib"], 128);
    let flagged = report(&env, &["--reserved-memory-mib", "256", "--label", "zone=b"]);
    assert_eq!(flagged["memory_reserved_mib"], 256);
    assert_eq!(flagged["labels"], json!({ "rack": "r1", "zone": "b" }));
}

#[tokio::test]
async fn an_agent_without_credential_or_join_token_says_what_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = start_server(&dir.path().join("server"), port).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_slipway-agent"))
        .args(["run", "--server", &format!("http://127.0.0.1:{port}")])
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("agent"))
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no join token"), "{stderr}");
    // A bad token is refused by the server, and said so.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_slipway-agent"))
        .args(["run", "--server", &format!("http://127.0.0.1:{port}")])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--join-token",
            "slj_wrong",
            "--data-dir",
        ])
        .arg(dir.path().join("agent"))
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("join token is unknown"), "{stderr}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_a_local_agent_has_its_own_machine_as_a_host() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let mut config = Config::with_data_dir(&data);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.heartbeat_interval = Duration::from_millis(200);
    config.local_agent = Some(env!("CARGO_BIN_EXE_slipway-agent").into());
    let server = Server::start(config).await.unwrap();
    let url = format!("http://{}", server.addr);
    let api = Api::new(&url, &data);
    let deadline = Instant::now() + Duration::from_secs(20);
    let host = loop {
        let hosts = api.hosts().await;
        if let [host] = hosts.as_slice()
            && host["state"] == "ready"
        {
            break host.clone();
        }
        assert!(Instant::now() < deadline, "no local host: {hosts:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(host["report"]["cpus"].as_u64().unwrap() >= 1);
    assert!(data.join("local-agent/agent.json").exists());
    // The server stops its agent with it.
    server.stop().await.unwrap();
    let out = Command::new("pgrep")
        .args(["-f", &data.join("local-agent").display().to_string()])
        .output()
        .unwrap();
    assert!(out.stdout.is_empty(), "the local agent outlived the server");
}
