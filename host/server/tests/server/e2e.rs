//! A real `slipway serve` on a loopback port, driven through the `slipway` command line and raw
//! TCP: the walkthrough of the README, crashes, graceful shutdowns, a full disk.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{ServerProcess, eventually, files_in, noise, ok, raw_disk, stderr};

fn json_out(out: &std::process::Output) -> Value {
    serde_json::from_str(&ok(out)).unwrap()
}

#[test]
fn the_cli_registers_a_model_vm_from_an_uploaded_image() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let admin = server.admin_token();

    // An operator token, made by the admin through the API.
    let created = json_out(&server.cli(
        &admin,
        &[
            "token", "create", "--name", "ops", "--role", "operator", "--json",
        ],
    ));
    let operator = created["secret"].as_str().unwrap().to_owned();

    let raw = raw_disk(dir.path(), "debian-12.raw", 16, 11);
    let image = json_out(&server.cli(
        &operator,
        &["image", "upload", raw.to_str().unwrap(), "--json"],
    ));
    assert_eq!(image["state"], "succeeded", "{image}");
    let image_id = image["result"]["id"].as_str().unwrap().to_owned();
    assert_eq!(image["result"]["name"], "debian-12");

    let table = ok(&server.cli(&operator, &["image", "list"]));
    assert!(
        table.contains("qcow2 (from raw)") && table.contains("16.00 MiB"),
        "{table}"
    );

    let app = dir.path().join("nginx.json");
    std::fs::write(
        &app,
        json!({"name": "nginx", "version": "1.22", "recipes": [
            {"os_family": "linux", "method": {"kind": "packages", "manager": "apt", "packages": ["nginx"]}}]})
        .to_string(),
    )
    .unwrap();
    ok(&server.cli(&operator, &["app", "create", app.to_str().unwrap()]));
    let model = dir.path().join("model.json");
    std::fs::write(
        &model,
        json!({
            "name": "debian-12-web",
            "hardware": {"vcpus": 2, "memory_mib": 2048,
                "disks": [{"size_mib": 20480, "bus": "virtio", "image": image_id}],
                "nics": [{"model": "virtio"}], "firmware": "bios", "arch": "x86_64", "machine_type": "q35"},
            "os": {"family": "linux", "distro": "debian", "version": "12", "arch": "x86_64"},
            "applications": [{"name": "nginx", "version": "1.22"}]
        })
        .to_string(),
    )
    .unwrap();
    let table = ok(&server.cli(&operator, &["model", "create", model.to_str().unwrap()]));
    assert!(
        table.contains("debian-12-web") && table.contains("linux debian 12"),
        "{table}"
    );
    let listed = json_out(&server.cli(
        &operator,
        &["model", "list", "--filter", "os_distro=debian", "--json"],
    ));
    assert_eq!(listed.as_array().unwrap().len(), 1);

    // The image is in use: the CLI says so and exits non-zero.
    let out = server.cli(&operator, &["image", "delete", &image_id]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("409 In use") && stderr(&out).contains("model VM debian-12-web"),
        "{}",
        stderr(&out)
    );

    // A requester cannot touch the catalog; the CLI shows the 403.
    let requester = json_out(&server.cli(
        &admin,
        &[
            "token",
            "create",
            "--name",
            "alice",
            "--role",
            "requester",
            "--json",
        ],
    ))["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = server.cli(&requester, &["model", "list"]);
    assert!(stderr(&out).contains("403 Not allowed"), "{}", stderr(&out));

    // A requester plans: the findings with their suggestions, and `--fix` takes them all.
    let request = dir.path().join("request.json");
    std::fs::write(
        &request,
        r#"{"os": {"distro": "debian"}, "hardware": {"memory": "8 GB"}, "hostname": "web", "count": 2}"#,
    )
    .unwrap();
    let out = server.cli(&requester, &["plan", request.to_str().unwrap()]);
    assert!(!out.status.success());
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("error   hardware.memory: \"8 GB\" is a decimal size")
            && shown.contains("→ suggest \"8GiB\""),
        "{shown}"
    );
    assert!(
        shown.contains("hostname: 2 VMs cannot all be named"),
        "{shown}"
    );
    assert!(
        stderr(&out).contains("the request cannot be met as it is"),
        "{}",
        stderr(&out)
    );
    let fixed = json_out(&server.cli(&requester, &["plan", request.to_str().unwrap(), "--fix"]));
    assert_eq!(fixed["hardware"]["memory"], "8GiB");
    assert_eq!(fixed["hostname_pattern"], "web-{n}");
    assert_eq!(fixed.get("hostname"), None);
    // Deploying the same request is refused with the same findings, and deploys nothing.
    let out = server.cli(&requester, &["deploy", request.to_str().unwrap()]);
    assert!(!out.status.success());
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("hardware.memory"), "{shown}");
    assert!(stderr(&out).contains("422"), "{}", stderr(&out));
    let vms = json_out(&server.cli(&requester, &["vm", "list", "--json"]));
    assert_eq!(vms, serde_json::json!([]));
    let out = server.cli(
        &requester,
        &["vm", "show", "01a2019f-0000-7000-8000-000000000000"],
    );
    assert!(stderr(&out).contains("404"), "{}", stderr(&out));

    let jobs = json_out(&server.cli(&operator, &["job", "list", "--json"]));
    assert_eq!(jobs[0]["kind"], "image.upload");
    assert_eq!(jobs[0]["state"], "succeeded");
    let followed = ok(&server.cli(
        &operator,
        &["job", "follow", jobs[0]["id"].as_str().unwrap()],
    ));
    assert!(followed.contains("succeeded"), "{followed}");
}

/// Sends `len` declared bytes but only `sent`, then closes the connection.
fn truncated_upload(url: &str, token: &str, len: usize, sent: usize) -> String {
    let addr = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST /v1/images?name=cut HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n"
    )
    .unwrap();
    stream.write_all(&noise(sent, 1)).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

#[test]
fn a_connection_cut_mid_upload_fails_its_job_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &[]);
    let token = server.admin_token();
    truncated_upload(&server.url, &token, 8 << 20, 1 << 20);
    let failed = eventually(Duration::from_secs(20), || {
        let jobs = json_out(&server.cli(&token, &["job", "list", "--json"]));
        (jobs[0]["state"] == "failed").then(|| jobs[0].clone())
    });
    assert_eq!(failed["error"]["step"], "receive");
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("before the 8388608 it declared"),
        "{failed}"
    );
    assert!(files_in(&data.join("images/tmp")).is_empty());
    assert!(files_in(&data.join("images/blobs/sha256")).is_empty());
}

/// A job as the stopped server's database has it.
fn job_state(data: &Path, id: &str) -> (String, u32) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = slipway_store::Store::open(&data.join("slipway.db"))
            .await
            .unwrap();
        let job = store.job(id).await.unwrap();
        store.close().await;
        (job.state.as_str().to_owned(), job.attempts)
    })
}

/// Starts a throttled import of `mib` MiB and returns (server, job id) once bytes are moving.
fn slow_import(data: &Path, import: &Path, extra: &[&str], mib: usize) -> (ServerProcess, String) {
    std::fs::write(import.join("big.raw"), noise(mib << 20, 3)).unwrap();
    let mut args = vec![
        "--import-dir",
        import.to_str().unwrap(),
        "--import-rate",
        "8388608",
    ];
    args.extend_from_slice(extra);
    let server = ServerProcess::start(data, &args);
    let token = server.admin_token();
    let job = json_out(&server.cli(
        &token,
        &[
            "image",
            "import",
            import.join("big.raw").to_str().unwrap(),
            "--no-wait",
            "--json",
        ],
    ));
    let id = job["id"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(20), || {
        let job = json_out(&server.cli(&token, &["job", "show", &id]));
        (job["state"] == "running" && job["done_bytes"].as_u64().unwrap_or(0) > 0).then_some(())
    });
    (server, id)
}

#[test]
fn an_import_killed_by_a_crash_resumes_at_restart_and_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let (data, import) = (dir.path().join("data"), dir.path().join("import"));
    std::fs::create_dir_all(&import).unwrap();
    let (mut server, id) = slow_import(&data, &import, &[], 24);
    server.kill();
    // The crash left the job running and a partial copy behind.
    assert_eq!(job_state(&data, &id), ("running".to_owned(), 1));
    assert_eq!(files_in(&data.join("images/tmp")).len(), 1);

    let server = ServerProcess::start(&data, &["--import-dir", import.to_str().unwrap()]);
    let token = server.admin_token();
    let job = json_out(&server.cli(&token, &["job", "follow", &id, "--json"]));
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 2, "resumed, not started twice over");
    assert!(files_in(&data.join("images/tmp")).is_empty());
    let images = json_out(&server.cli(&token, &["image", "list", "--json"]));
    assert_eq!(images.as_array().unwrap().len(), 1);
    assert_eq!(images[0]["virtual_size"], 24 << 20);
    assert!(
        server
            .log_text()
            .contains("resuming an import interrupted by a restart")
    );
}

#[test]
fn a_graceful_shutdown_parks_a_running_import_which_resumes_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let (data, import) = (dir.path().join("data"), dir.path().join("import"));
    std::fs::create_dir_all(&import).unwrap();
    let (mut server, id) = slow_import(&data, &import, &["--shutdown-grace", "1"], 40);
    let status = server.terminate();
    assert!(status.success(), "{}", server.log_text());
    assert!(
        server.log_text().contains("job parked by shutdown"),
        "{}",
        server.log_text()
    );
    assert_eq!(job_state(&data, &id).0, "queued");
    assert!(
        files_in(&data.join("images/tmp")).is_empty(),
        "parking removes the partial copy"
    );

    let server = ServerProcess::start(&data, &["--import-dir", import.to_str().unwrap()]);
    let job = json_out(&server.cli(&server.admin_token(), &["job", "follow", &id, "--json"]));
    assert_eq!(job["state"], "succeeded", "{job}");
}

/// A data directory on a 24 MiB ext4, loop-mounted. That needs root, as CI has (and says so with
/// `SLIPWAY_REQUIRE_ROOT_TESTS=1`, which turns a skip into a failure).
struct SmallDisk {
    mount: tempfile::TempDir,
}

impl SmallDisk {
    fn new(file: &Path) -> Option<Self> {
        // SAFETY: getuid has no preconditions.
        let root = unsafe { libc::getuid() } == 0;
        if !root {
            assert!(
                std::env::var_os("SLIPWAY_REQUIRE_ROOT_TESTS").is_none(),
                "this test needs root to loop-mount a small file system"
            );
            eprintln!("skipped: loop-mounting a small ext4 needs root");
            return None;
        }
        let mount = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(file).unwrap();
        f.set_len(24 << 20).unwrap();
        let mkfs = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(file)
            .output()
            .unwrap();
        assert!(
            mkfs.status.success(),
            "{}",
            String::from_utf8_lossy(&mkfs.stderr)
        );
        let out = Command::new("mount")
            .args(["-o", "loop"])
            .arg(file)
            .arg(mount.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "loop-mounting a small ext4 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Self { mount })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.mount.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Something still holds it: detach it now and let the kernel finish later.
            eprintln!(
                "umount {} failed; detaching it lazily",
                self.mount.path().display()
            );
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.mount.path())
                .status();
        }
    }
}

#[test]
fn a_full_disk_during_upload_is_507_and_leaves_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::new(&dir.path().join("small.ext4")) else {
        return;
    };
    let data = disk.mount.path().join("data");
    {
        let server = ServerProcess::start(&data, &[]);
        let token = server.admin_token();
        let big = raw_disk(dir.path(), "big.raw", 40, 4);
        let out = server.cli(&token, &["image", "upload", big.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            stderr(&out).contains("507 The image store is full"),
            "{}",
            stderr(&out)
        );
        assert!(files_in(&data.join("images/tmp")).is_empty());
        // The server still works, and a small image still fits.
        let small = raw_disk(dir.path(), "small.raw", 1, 5);
        ok(&server.cli(&token, &["image", "upload", small.to_str().unwrap()]));
    }
}

#[test]
fn serve_help_documents_every_option_with_its_variable() {
    let mut command = Command::new(crate::support::slipway_bin());
    command.args(["serve", "--help"]);
    let out = crate::support::output_within(&mut command, Duration::from_secs(30));
    let help = ok(&out);
    for (flag, env) in [
        ("--config", "SLIPWAY_CONFIG"),
        ("--data-dir", "SLIPWAY_DATA_DIR"),
        ("--listen", "SLIPWAY_LISTEN"),
        ("--plugins", "SLIPWAY_PLUGINS"),
        ("--log", "SLIPWAY_LOG"),
        ("--log-format", "SLIPWAY_LOG_FORMAT"),
        ("--max-virtual-size", "SLIPWAY_MAX_VIRTUAL_SIZE"),
        ("--max-image-size", "SLIPWAY_MAX_IMAGE_SIZE"),
        ("--import-dir", "SLIPWAY_IMPORT_DIRS"),
        ("--import-rate", "SLIPWAY_IMPORT_RATE"),
        ("--job-workers", "SLIPWAY_JOB_WORKERS"),
        ("--shutdown-grace", "SLIPWAY_SHUTDOWN_GRACE"),
        ("--request-timeout", "SLIPWAY_REQUEST_TIMEOUT"),
        ("--upload-idle-timeout", "SLIPWAY_UPLOAD_IDLE_TIMEOUT"),
        ("--max-json-body", "SLIPWAY_MAX_JSON_BODY"),
        ("--guest-agent", "SLIPWAY_GUEST_AGENT"),
        ("--work-dir", "SLIPWAY_WORK_DIR"),
        ("--heartbeat-interval-ms", "SLIPWAY_HEARTBEAT_INTERVAL_MS"),
        ("--missed-heartbeats", "SLIPWAY_MISSED_HEARTBEATS"),
        ("--claim-ttl", "SLIPWAY_CLAIM_TTL"),
        ("--cpu-allocation-ratio", "SLIPWAY_CPU_ALLOCATION_RATIO"),
        (
            "--memory-allocation-ratio",
            "SLIPWAY_MEMORY_ALLOCATION_RATIO",
        ),
        ("--disk-allocation-ratio", "SLIPWAY_DISK_ALLOCATION_RATIO"),
        ("--local-agent", "SLIPWAY_LOCAL_AGENT"),
        ("--mac-prefix", "SLIPWAY_MAC_PREFIX"),
        ("--seed-url", "SLIPWAY_SEED_URL"),
        ("--ready-timeout", "SLIPWAY_READY_TIMEOUT"),
    ] {
        assert!(help.contains(flag), "{flag} undocumented");
        assert!(
            help.contains(&format!("[env: {env}=")),
            "{env} undocumented"
        );
    }
    // Every option has a sentence, not just a name.
    assert_eq!(help.matches("[env: SLIPWAY_").count(), 27, "{help}");
}

#[test]
fn the_config_file_sets_options_and_the_environment_overrides_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (from_file, from_env) = (dir.path().join("file-dir"), dir.path().join("env-dir"));
    for d in [&data, &from_file, &from_env] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(
        data.join("slipway.toml"),
        format!(
            "log_format = \"json\"\n[images]\nimport_dirs = [\"{}\"]\nmax_virtual_size = 1048576\n",
            from_file.display()
        ),
    )
    .unwrap();
    let a = raw_disk(&from_file, "a.raw", 2, 1);
    let b = raw_disk(&from_env, "b.raw", 1, 2);

    // The file alone: its import directory, its 1 MiB virtual-size limit, JSON logs.
    let server = start_with_env(&data, &[]);
    let token = server.admin_token();
    let out = server.cli(&token, &["image", "import", a.to_str().unwrap()]);
    assert!(
        stderr(&out).contains("more than the limit of 1048576 bytes"),
        "{}",
        stderr(&out)
    );
    assert!(
        server
            .log_text()
            .lines()
            .any(|l| l.starts_with('{') && l.contains("\"listening\""))
    );
    drop(server);

    // The environment wins over the file.
    let server = start_with_env(
        &data,
        &[("SLIPWAY_IMPORT_DIRS", from_env.to_str().unwrap())],
    );
    let out = server.cli(&token, &["image", "import", a.to_str().unwrap()]);
    assert!(
        stderr(&out).contains("not inside an import directory"),
        "{}",
        stderr(&out)
    );
    ok(&server.cli(&token, &["image", "import", b.to_str().unwrap()]));
    drop(server);

    // A misspelt key stops the server with the key named.
    std::fs::write(data.join("slipway.toml"), "[images]\nimport_dir = []\n").unwrap();
    let mut command = Command::new(crate::support::slipway_bin());
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data);
    crate::support::isolate(&mut command, &data);
    let out = crate::support::output_within(&mut command, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown field `import_dir`"),
        "{}",
        stderr(&out)
    );
}

fn start_with_env(data: &Path, env: &[(&str, &str)]) -> ServerProcess {
    ServerProcess::start_with(data, &[], env)
}

/// Joins a host the way `slipway-agent` does, over HTTP.
fn join_host(url: &str, token: &str, name: &str, cpus: u32, memory_mib: u64) {
    let body = json!({
        "join_token": token, "agent_id": format!("agent-{name}-0000"), "name": name,
        "agent_url": "http://127.0.0.1:1", "agent_secret": "0123456789abcdef0123",
        "report": crate::hosts::report(cpus, memory_mib, 100_000, &[("rack", "r1")]),
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("{url}/v1/agent/join"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status.as_u16(), 201);
}

#[test]
fn the_cli_shows_hosts_places_explains_and_changes_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = crate::hosts::first_party_plugins(dir.path());
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &["--plugins", plugins.to_str().unwrap()],
    );
    let admin = server.admin_token();
    let token = ok(&server.cli(
        &admin,
        &[
            "host",
            "join-token",
            "create",
            "--name",
            "rack-1",
            "--uses",
            "2",
        ],
    ));
    let token = token.trim();
    join_host(&server.url, token, "node-a", 4, 8192);
    join_host(&server.url, token, "node-b", 8, 32_768);

    let table = ok(&server.cli(&admin, &["host", "list"]));
    assert!(table.contains("NAME") && table.contains("STATE"), "{table}");
    let row = table.lines().find(|l| l.contains("node-b")).unwrap();
    assert!(
        row.contains("ready")
            && row.contains("0/32")
            && row.contains("0.0/32.0 GiB")
            && row.contains("rack=r1"),
        "{table}"
    );
    let drained = ok(&server.cli(&admin, &["host", "drain", "node-a"]));
    assert!(drained.contains("node-a is draining"), "{drained}");

    let decided = ok(&server.cli(
        &admin,
        &[
            "placement",
            "decide",
            "--vcpus",
            "2",
            "--memory-mib",
            "2048",
        ],
    ));
    assert!(decided.contains("1/2 hosts fit: 1 draining"), "{decided}");
    assert!(decided.contains("chosen:   node-b"), "{decided}");
    assert!(decided.contains("claimed:  "), "{decided}");
    let claims = json_out(&server.cli(&admin, &["claim", "list", "--json"]));
    assert_eq!(claims.as_array().unwrap().len(), 1);

    // Nothing fits: the reasons and the closest host, and a non-zero exit.
    let out = server.cli(
        &admin,
        &[
            "placement",
            "decide",
            "--vcpus",
            "2",
            "--memory-mib",
            "65536",
            "--label",
            "rack=r9",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("0/2 hosts fit: 1 insufficient memory (capacity-filter), 1 draining"),
        "{text}"
    );
    assert!(
        text.contains("closest:  node-b, which lacks: insufficient memory"),
        "{text}"
    );
    assert!(
        stderr(&out).contains("no host can take this VM"),
        "{}",
        stderr(&out)
    );

    // The pipeline, changed from a file; a plugin installed from its directory.
    let spec = dir.path().join("pipeline.json");
    std::fs::write(
        &spec,
        json!({ "steps": [{ "plugin": "capacity-filter" }, { "plugin": "spread-score", "weight": 2 }] })
            .to_string(),
    )
    .unwrap();
    let set = ok(&server.cli(
        &admin,
        &["placement", "set-pipeline", spec.to_str().unwrap()],
    ));
    assert!(
        set.contains("running: capacity-filter@0.1.0 → spread-score@0.1.0"),
        "{set}"
    );
    let hostile = std::path::Path::new(slipway_test_artifacts::TEST_PLUGIN_HOSTILE.dir);
    let installed = ok(&server.cli(&admin, &["plugin", "install", hostile.to_str().unwrap()]));
    assert!(installed.contains("installed hostile 0.1.0"), "{installed}");
    let listed = ok(&server.cli(&admin, &["plugin", "list"]));
    assert!(
        listed
            .lines()
            .any(|l| l.contains("hostile") && l.contains("installed")),
        "{listed}"
    );

    let metrics = {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            reqwest::get(format!("{}/metrics", server.url))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        })
    };
    assert!(
        metrics.contains("slipway_hosts{state=\"draining\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("slipway_placements_total{result=\"no_host\"} 1"),
        "{metrics}"
    );
}
