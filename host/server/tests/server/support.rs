//! What the server's tests share: an app on a fresh data directory driven through its router, a
//! real server process on a loopback port, and disk images made with the real `qemu-img`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use serde_json::Value;
use slipway_core::resources::Role;
use slipway_server::App;
use slipway_server::config::Config;
use tower::ServiceExt;

/// An app on its own data directory, called through its router without a socket.
pub struct TestApp {
    pub app: Arc<App>,
    pub router: axum::Router,
    pub admin: String,
    pub operator: String,
    pub requester: String,
    pub dir: tempfile::TempDir,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The problem's `type` without its `urn:slipway:problem:` prefix.
    pub fn problem(&self) -> &str {
        self.body["type"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches("urn:slipway:problem:")
    }
}

impl TestApp {
    pub async fn new() -> Self {
        Self::with(|_| {}).await
    }

    pub async fn with(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::with_data_dir(&dir.path().join("data"));
        config.import_dirs = vec![dir.path().join("import")];
        std::fs::create_dir_all(dir.path().join("import")).unwrap();
        adjust(&mut config);
        Self::open(config, dir).await
    }

    pub async fn open(config: Config, dir: tempfile::TempDir) -> Self {
        let app = App::open(config).await.unwrap();
        // What `Server::start` runs beside the listener: host states and claim expiry.
        tokio::spawn(slipway_server::monitor::run(app.clone()));
        Self::attached(app, dir).await
    }

    /// Drives the app of a running [`slipway_server::Server`] through its router.
    pub async fn attach(app: Arc<App>) -> Self {
        Self::attached(app, tempfile::tempdir().unwrap()).await
    }

    async fn attached(app: Arc<App>, dir: tempfile::TempDir) -> Self {
        let router = slipway_server::api::router(app.clone());
        let admin = std::fs::read_to_string(app.config.admin_token_file())
            .unwrap()
            .trim()
            .to_owned();
        let operator = app
            .store
            .create_token("op", Role::Operator)
            .await
            .unwrap()
            .1;
        let requester = app
            .store
            .create_token("req", Role::Requester)
            .await
            .unwrap()
            .1;
        Self {
            app,
            router,
            admin,
            operator,
            requester,
            dir,
        }
    }

    pub fn import_dir(&self) -> PathBuf {
        self.dir.path().join("import")
    }

    pub async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        };
        self.send(request.unwrap()).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, Some(&self.operator), None)
            .await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(&self.operator), Some(body))
            .await
    }

    /// Uploads bytes as an operator, waiting for the job.
    pub async fn upload(&self, query: &str, bytes: Vec<u8>) -> Reply {
        let request = Request::post(format!("/v1/images?wait=true&{query}"))
            .header(header::AUTHORIZATION, format!("Bearer {}", self.operator))
            .header(header::CONTENT_LENGTH, bytes.len())
            .body(Body::from(bytes))
            .unwrap();
        self.send(request).await
    }

    /// Uploads a file made by `qemu-img` and returns the stored image.
    pub async fn upload_ok(&self, name: &str, path: &Path) -> Value {
        let reply = self
            .upload(&format!("name={name}"), std::fs::read(path).unwrap())
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.body["result"].clone()
    }

    pub fn tmp_files(&self) -> Vec<PathBuf> {
        files_in(&self.app.config.data_dir.join("images/tmp"))
    }

    pub fn blobs(&self) -> Vec<PathBuf> {
        files_in(&self.app.config.data_dir.join("images/blobs/sha256"))
    }
}

pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// Runs `qemu-img` and insists it succeeds.
pub fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Bytes that do not compress or deduplicate, from a fixed seed.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A raw disk of `mib` MiB with some data at its start, in `dir`.
pub fn raw_disk(dir: &Path, name: &str, mib: usize, seed: u64) -> PathBuf {
    let path = dir.join(name);
    let mut bytes = noise(mib << 20, seed);
    // Keep most of it zeros, as real disks are, so conversion has holes to find.
    bytes[(mib << 20) / 4..].fill(0);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A `slipway serve` process on a loopback port of its own.
pub struct ServerProcess {
    pub child: Child,
    pub url: String,
    pub data: PathBuf,
    pub log: PathBuf,
}

pub fn slipway_bin() -> &'static str {
    env!("CARGO_BIN_EXE_slipway")
}

impl ServerProcess {
    pub fn start(data: &Path, extra: &[&str]) -> Self {
        Self::start_with(data, extra, &[("SLIPWAY_CONFIG", "/dev/null")])
    }

    /// Starts with extra environment; without `SLIPWAY_CONFIG` the data directory's
    /// `slipway.toml` is read.
    pub fn start_with(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let log = data.with_extension(format!(
            "log.{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let out = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(slipway_bin());
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .args(extra);
        isolate(&mut command, data);
        // Owned by the ServerProcess at once, so that a failed start still kills it.
        let child = command
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut server = Self {
            child,
            url: String::new(),
            data: data.to_owned(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = server.log_text();
            if let Some(at) = text.find("listening on http://") {
                server.url = text[at + "listening on ".len()..]
                    .lines()
                    .next()
                    .unwrap()
                    .trim()
                    .to_owned();
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("the server exited ({status}) before listening:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "the server did not start:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// Runs the CLI against this server with `token`.
    pub fn cli(&self, token: &str, args: &[&str]) -> std::process::Output {
        let mut command = Command::new(slipway_bin());
        command.args(args);
        isolate(&mut command, &self.data);
        command
            .env("SLIPWAY_SERVER", &self.url)
            .env("SLIPWAY_TOKEN", token)
            .output()
            .unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Keeps a server or CLI process to what the test gives it: no `SLIPWAY_*` variable of the
/// environment running the tests, and a home of its own (the CLI falls back to the admin token
/// of the default data directory under it).
pub fn isolate(command: &mut Command, data: &Path) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SLIPWAY_") {
            command.env_remove(key);
        }
    }
    let home = data.with_extension("home");
    command
        .env("HOME", &home)
        .env("XDG_DATA_HOME", home.join("share"));
}

/// Runs a command that must end within `limit`, killing it otherwise.
pub fn output_within(command: &mut Command, limit: Duration) -> std::process::Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// The stdout of a CLI run that must succeed.
pub fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Polls `check` until it returns `Some`, for at most `limit`.
pub fn eventually<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
