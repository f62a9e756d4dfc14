//! Upload throughput against `cp`, in the same run, and the server's memory while it receives.
//!
//! A 1 GiB qcow2 of incompressible data is uploaded over loopback to a real `slipway serve`
//! process on the same file system as the source, with the client streaming the file as the CLI
//! does. The same file is copied with `cp`, and with `cp` followed by `sync` of the copy (the
//! server fsyncs a blob before recording it, so that is the like-for-like comparison). Runs
//! alternate, three of each; medians are reported. The server's resident memory is sampled from
//! `/proc` every 20 ms during the uploads.
//!
//! `cargo bench -p slipway-server --bench upload` (`SLIPWAY_BENCH_MIB` changes the size).

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::{cpu_seconds, rss_kib};

/// Seconds to sha256 a file in one thread: the floor of any upload that verifies its bytes.
fn sha256_seconds(path: &Path) -> f64 {
    use sha2::Digest;
    use std::io::Read;
    let mut file = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut hasher = sha2::Sha256::new();
    let started = Instant::now();
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let _ = hasher.finalize();
    started.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn make_source(dir: &Path, mib: u64) -> PathBuf {
    let raw = dir.join("source.raw");
    let qcow2 = dir.join("source.qcow2");
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut block = vec![0u8; 1 << 20];
    let mut out = std::io::BufWriter::new(std::fs::File::create(&raw).unwrap());
    for _ in 0..mib {
        for word in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        std::io::Write::write_all(&mut out, &block).unwrap();
    }
    drop(out);
    let status = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::remove_file(raw).unwrap();
    qcow2
}

struct Server {
    child: std::process::Child,
    url: String,
    token: String,
}

fn start_server(data: &Path, log: &Path) -> Server {
    // Killed and waited for at the end of main.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log",
            "warn",
            "--data-dir",
        ])
        .arg(data)
        .env("SLIPWAY_CONFIG", "/dev/null")
        .stderr(std::fs::File::create(log).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(at) = text.find("listening on http://") {
            let url = text[at + 13..].lines().next().unwrap().trim().to_owned();
            let token = std::fs::read_to_string(data.join("admin.token"))
                .unwrap()
                .trim()
                .to_owned();
            return Server { child, url, token };
        }
        assert!(Instant::now() < deadline, "server did not start: {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn get(client: &reqwest::Client, server: &Server, path: &str) -> serde_json::Value {
    client
        .get(format!("{}{path}", server.url))
        .bearer_auth(&server.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Uploads and returns (seconds until the bytes were received, seconds until stored).
async fn upload(client: &reqwest::Client, server: &Server, file: &Path, n: usize) -> (f64, f64) {
    let started = Instant::now();
    // The CLI's own upload stream.
    let opened = std::fs::File::open(file).unwrap();
    let len = opened.metadata().unwrap().len();
    let body = reqwest::Body::wrap_stream(slipway_server::client::file_stream(opened, |_| {}));
    let response = client
        .post(format!("{}/v1/images?name=bench-{n}", server.url))
        .bearer_auth(&server.token)
        .header("content-length", len)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    let received = started.elapsed().as_secs_f64();
    let job: serde_json::Value = response.json().await.unwrap();
    let id = job["id"].as_str().unwrap();
    loop {
        let job = get(client, server, &format!("/v1/jobs/{id}")).await;
        match job["state"].as_str() {
            Some("succeeded") => break,
            Some("failed") => panic!("upload failed: {job}"),
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    (received, started.elapsed().as_secs_f64())
}

fn timed(command: &mut Command) -> f64 {
    let started = Instant::now();
    assert!(command.status().unwrap().success());
    started.elapsed().as_secs_f64()
}

fn main() {
    // As the `slipway` binary does, so that the client here is the CLI's.
    slipway_server::tune_allocator();
    let mib: u64 = std::env::var("SLIPWAY_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    // On the disk, beside the build, not in a tmpfs: cp and the server write to the same place.
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    eprintln!("making a {mib} MiB qcow2 of incompressible data...");
    let source = make_source(dir.path(), mib);
    let bytes = std::fs::metadata(&source).unwrap().len() as f64;
    let data = dir.path().join("data");
    let server = start_server(&data, &dir.path().join("server.log"));
    let pid = server.child.id();
    let idle_rss = rss_kib(pid);

    let peak = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::new();
    let copy = dir.path().join("copy");
    let (mut cp, mut cp_sync, mut received, mut stored) = (vec![], vec![], vec![], vec![]);
    let mut server_cpu = vec![];
    for n in 0..3 {
        cp.push(timed(Command::new("cp").arg(&source).arg(&copy)));
        std::fs::remove_file(&copy).unwrap();
        cp_sync.push(
            timed(Command::new("cp").arg(&source).arg(&copy))
                + timed(Command::new("sync").arg(&copy)),
        );
        std::fs::remove_file(&copy).unwrap();
        let before = cpu_seconds(pid);
        let (r, s) = runtime.block_on(upload(&client, &server, &source, n));
        server_cpu.push(cpu_seconds(pid) - before);
        received.push(r);
        stored.push(s);
        // Each run stores the same bytes; delete the image so the next one stores them again.
        let id = runtime.block_on(async {
            let page = get(&client, &server, "/v1/images").await;
            page["items"][0]["id"].as_str().unwrap().to_owned()
        });
        runtime.block_on(async {
            client
                .delete(format!("{}/v1/images/{id}", server.url))
                .bearer_auth(&server.token)
                .send()
                .await
                .unwrap();
        });
    }
    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();

    let mibps = |s: f64| bytes / s / (1 << 20) as f64;
    let (cp, cp_sync, received, stored) = (
        median(cp),
        median(cp_sync),
        median(received),
        median(stored),
    );
    println!("upload of a {mib} MiB qcow2 over loopback (median of 3)");
    println!("  cp                 {:7.3} s  {:7.0} MiB/s", cp, mibps(cp));
    println!(
        "  cp + sync          {:7.3} s  {:7.0} MiB/s",
        cp_sync,
        mibps(cp_sync)
    );
    println!(
        "  upload, received   {:7.3} s  {:7.0} MiB/s  {:.2}x cp, {:.2}x cp+sync",
        received,
        mibps(received),
        cp / received,
        cp_sync / received
    );
    println!(
        "  upload, stored     {:7.3} s  {:7.0} MiB/s  {:.2}x cp, {:.2}x cp+sync",
        stored,
        mibps(stored),
        cp / stored,
        cp_sync / stored
    );
    println!(
        "  server CPU per upload {:.2} s; sha256 alone in one thread {:.2} s",
        median(server_cpu),
        sha256_seconds(&source)
    );
    println!(
        "  server memory: {} MiB idle, {} MiB peak while receiving {mib} MiB three times",
        idle_rss / 1024,
        peak.load(Ordering::Relaxed) / 1024
    );
    let mut child = server.child;
    let _ = child.kill();
    let _ = child.wait();
}
