//! Fleet scale: a real `slipway serve` process with 10,000 hosts that join and heartbeat through
//! the agent protocol, as `slipway-agent` does, and placements through the API at that scale.
//!
//! The load generator runs in this process and the server in its own, so the server's CPU time
//! and resident memory (read from `/proc`) are its own. One run:
//!
//! 1. starts `slipway serve` (a temporary data directory beside the build, the four first-party
//!    placement plugins, heartbeats every 10 s) and creates a join token;
//! 2. joins N hosts with `POST /v1/agent/join`, 32 in flight. Their reports vary as a data
//!    centre's do, rack by rack (40 hosts a rack, all alike): 8 to 128 threads, 32 GiB to 1 TiB,
//!    480 GiB to 15 TiB of disk, one rack in 20 aarch64, one in 10 without KVM (TCG), labels
//!    `rack=r<k>` and `zone=z<k>` (8 zones), a few VMs each;
//! 3. heartbeats every host every 10 s with `POST /v1/agent/heartbeat`, spread evenly (N/10 a
//!    second), each with a little different load and available memory, over a small pool of
//!    keep-alive connections. After a warm-up it measures, over the measurement window, the
//!    server's CPU (as a share of one core) and RSS, and the heartbeats' latency; every
//!    heartbeat must be answered 200. The server's CPU is also measured before any host joins
//!    and with the fleet joined but silent (5 s each), and what other processes took of the
//!    machine meanwhile (a build on the same cores spoils the numbers);
//! 4. with heartbeats going on: sequential dry-run placements of a VM most hosts fit (latency as
//!    the client sees it and as the server reports it, `explanation.elapsed_us`), then
//!    placements that claim, 8 in flight, for 10 s (decisions a second), then releases those
//!    claims; pages through the inventory; scrapes `/metrics` for the placement and per-plugin
//!    times;
//! 5. stops the server with SIGTERM, and prints a Markdown summary.
//!
//! Targets, reported and never failed: the server under 10% of one core and 200 MiB RSS while
//! the fleet heartbeats. The run exits non-zero when anything answered other than expected.
//!
//! `cargo bench -p slipway-server --bench fleet`
//!
//! `SLIPWAY_BENCH_HOSTS` (default 10000), `SLIPWAY_BENCH_SECONDS` (the measurement window,
//! default 60), `SLIPWAY_BENCH_WARMUP` (seconds of heartbeats before it, default 15),
//! `SLIPWAY_BENCH_CONNECTIONS` (the heartbeats' keep-alive connections, default 16; as many as
//! hosts gives each host its own, as real agents keep theirs; 0 opens a new connection for each
//! heartbeat, 16 at a time). The server inherits the environment:
//! `TOKIO_WORKER_THREADS=1` runs it on one runtime thread, for comparison.

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::Url;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde::Deserialize;
use slipway_core::agent::{
    Accelerator, Heartbeat, HostReport, Hypervisor, JoinRequest, JoinResponse, KvmProbe, Qemu,
    VmReport, VmState,
};
use slipway_core::{Arch, HostFeature};
use slipway_test_artifacts as artifacts;
use support::{cpu_seconds, rss_kib, status_kib};

/// What the server is told to ask of agents, and what the generator keeps to.
const INTERVAL: Duration = Duration::from_secs(10);
const JOINS_IN_FLIGHT: usize = 32;
const PLACEMENTS_IN_FLIGHT: usize = 8;
/// How long each placement part runs.
const PLACE_FOR: Duration = Duration::from_secs(10);
const HOSTS_PER_RACK: usize = 40;
const ZONES: usize = 8;
/// The targets while the fleet heartbeats.
const CPU_TARGET_PERCENT: f64 = 10.0;
const RSS_TARGET_MIB: f64 = 200.0;
/// A VM most hosts fit.
const TYPICAL: &str = r#"{"vcpus": 2, "memory_mib": 4096, "disk_mib": 20480, "arch": "x86_64"}"#;

// ---------------------------------------------------------------------------------------------
// The server process

/// The most the process was resident since it started.
fn hwm_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// Context switches of every thread of a process so far: each is a thread that slept and was
/// woken (or was preempted).
fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// CPU seconds the whole machine has spent busy, and stolen by the hypervisor, so far.
fn machine_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let at = |k: usize| ticks.get(k).copied().unwrap_or(0.0);
    let busy = at(0) + at(1) + at(2) + at(5) + at(6);
    (busy / 100.0, at(7) / 100.0)
}

/// Open file descriptors of a process: its sockets, mostly.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

struct Server {
    child: std::process::Child,
    pid: u32,
    url: String,
    token: String,
    log: PathBuf,
}

fn start_server(data: &Path, plugins: &Path, log: &Path) -> Server {
    // Stopped and waited for at the end of main.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log",
            "warn",
            "--heartbeat-interval-ms",
            &INTERVAL.as_millis().to_string(),
            "--plugins",
        ])
        .arg(plugins)
        .arg("--data-dir")
        .arg(data)
        .env("SLIPWAY_CONFIG", "/dev/null")
        .stderr(std::fs::File::create(log).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(at) = text.find("listening on http://") {
            let url = text[at + 13..].lines().next().unwrap().trim().to_owned();
            let token = std::fs::read_to_string(data.join("admin.token"))
                .unwrap()
                .trim()
                .to_owned();
            let pid = child.id();
            return Server {
                child,
                pid,
                url,
                token,
                log: log.to_owned(),
            };
        }
        assert!(Instant::now() < deadline, "server did not start: {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Server {
    /// A run that panicked leaves no server behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// SIGTERM, then waits; the time the graceful shutdown took, or `None` if it had to be killed.
fn stop_server(server: &mut Server) -> Option<Duration> {
    let started = Instant::now();
    let pid = rustix::process::Pid::from_raw(server.pid as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let deadline = started + Duration::from_secs(60);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            return status.success().then(|| started.elapsed());
        }
        if Instant::now() > deadline {
            let _ = server.child.kill();
            let _ = server.child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------------
// The fleet

/// xorshift64: cheap, and the same fleet every run.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so that neighbouring seeds differ everywhere, never 0.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `lo..hi`.
    fn between(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Hardware a rack is made of: threads, memory GiB, disk GiB.
const CLASSES: [(u32, u64, u64); 7] = [
    (8, 32, 480),
    (16, 64, 960),
    (32, 128, 1920),
    (48, 256, 3840),
    (64, 384, 3840),
    (96, 512, 7680),
    (128, 1024, 15360),
];

/// A host of the fleet, before it joins.
struct Planned {
    agent_id: String,
    name: String,
    report: HostReport,
    /// The report's members that stay the same from one heartbeat to the next, as JSON without
    /// the braces: a heartbeat's body is a few numbers written before them.
    fixed: String,
    /// How busy the host is, as a share of its threads and of its memory.
    busy_cpu: f64,
    busy_memory: f64,
}

fn plan(i: usize) -> Planned {
    let rack = i / HOSTS_PER_RACK;
    let mut by_rack = Rng::new(rack as u64);
    let (cpus, memory_gib, disk_gib) = CLASSES[by_rack.below(CLASSES.len() as u64) as usize];
    let arch = if rack % 20 == 19 {
        Arch::Aarch64
    } else {
        Arch::X86_64
    };
    let kvm = rack % 10 != 7;
    let mut rng = Rng::new(0x5EED_0000_0000 + i as u64);
    let busy_cpu = rng.between(0.05, 0.6);
    let busy_memory = rng.between(0.1, 0.7);
    let memory_total_mib = memory_gib * 1024;
    let disk_total_mib = disk_gib * 1024;
    let mut features = Vec::new();
    if kvm {
        features.push(HostFeature::Kvm);
    }
    features.push(HostFeature::Uefi);
    if memory_gib >= 256 {
        features.push(HostFeature::Hugepages);
    }
    if kvm && rack.is_multiple_of(3) {
        features.push(HostFeature::NestedVirt);
        features.push(HostFeature::Iommu);
    }
    let labels = BTreeMap::from([
        ("rack".to_owned(), format!("r{rack}")),
        ("zone".to_owned(), format!("z{}", rack % ZONES)),
    ]);
    let vms = (0..i % 7)
        .map(|k| VmReport {
            id: format!("vm-{i:05}-{k}"),
            state: if k == 3 {
                VmState::Stopped
            } else {
                VmState::Running
            },
        })
        .collect();
    let cpu_load = f64::from(cpus) * 1000.0 * busy_cpu;
    let report = HostReport {
        arch,
        cpus,
        load_milli: [cpu_load as u32, cpu_load as u32, cpu_load as u32],
        memory_total_mib,
        memory_available_mib: (memory_total_mib as f64 * (1.0 - busy_memory)) as u64,
        memory_reserved_mib: if memory_gib >= 128 { 4096 } else { 2048 },
        disk_total_mib,
        disk_free_mib: (disk_total_mib as f64 * rng.between(0.3, 0.95)) as u64,
        hypervisor: Hypervisor {
            qemu: Some(Qemu {
                path: format!("/usr/bin/qemu-system-{}", arch.as_str()),
                version: "10.0.2".into(),
            }),
            kvm: KvmProbe {
                usable: kvm,
                detail: if kvm {
                    "KVM_RUN of the probe guest succeeded".into()
                } else {
                    "no /dev/kvm".into()
                },
            },
            accelerator: if kvm {
                Accelerator::Kvm
            } else {
                Accelerator::Tcg
            },
        },
        features,
        labels,
        vms,
        agent_version: "0.1.0".into(),
        uptime_s: 86_400 + rng.below(90 * 86_400),
    };
    let mut members = match serde_json::to_value(&report).unwrap() {
        serde_json::Value::Object(members) => members,
        _ => unreachable!("a report is a JSON object"),
    };
    for changing in ["load_milli", "memory_available_mib", "uptime_s"] {
        members.remove(changing);
    }
    let object = serde_json::to_string(&members).unwrap();
    Planned {
        agent_id: format!("fleet-agent-{i:08}"),
        name: format!("node-{i:05}"),
        fixed: object[1..object.len() - 1].to_owned(),
        report,
        busy_cpu,
        busy_memory,
    }
}

/// A joined host, as the heartbeat generator needs it.
struct Beater {
    auth: HeaderValue,
    fixed: Box<str>,
    cpus: u32,
    memory_total_mib: u64,
    uptime_s: u64,
    busy_cpu: f64,
    busy_memory: f64,
}

impl Beater {
    fn new(p: &Planned, auth: HeaderValue) -> Self {
        Self {
            auth,
            fixed: p.fixed.clone().into_boxed_str(),
            cpus: p.report.cpus,
            memory_total_mib: p.report.memory_total_mib,
            uptime_s: p.report.uptime_s,
            busy_cpu: p.busy_cpu,
            busy_memory: p.busy_memory,
        }
    }

    /// `{"seq": .., "report": {..}}`: the load and available memory move a little each time.
    fn body(&self, seq: u64, rng: &mut Rng) -> Vec<u8> {
        let load = f64::from(self.cpus) * 1000.0 * self.busy_cpu;
        let used = self.memory_total_mib as f64 * self.busy_memory * rng.between(0.97, 1.03);
        let available = self
            .memory_total_mib
            .saturating_sub(used as u64)
            .min(self.memory_total_mib);
        let mut out = Vec::with_capacity(self.fixed.len() + 128);
        write!(
            out,
            r#"{{"seq":{seq},"report":{{"load_milli":[{},{},{}],"memory_available_mib":{available},"uptime_s":{},{}}}}}"#,
            (load * rng.between(0.8, 1.2)) as u32,
            (load * rng.between(0.95, 1.05)) as u32,
            load as u32,
            self.uptime_s + seq * INTERVAL.as_secs(),
            self.fixed,
        )
        .unwrap();
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Answers and their latencies

type Answer = Result<(u16, Bytes), String>;

async fn answer(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response.bytes().await.map_err(|e| e.to_string())?;
    Ok((status, body))
}

/// Latencies of the expected answers, and what else came back.
#[derive(Default)]
struct Tally {
    micros: Vec<u64>,
    unexpected: u64,
    examples: Vec<String>,
}

impl Tally {
    /// The body, when the status was the expected one.
    fn record(&mut self, expected: u16, answer: Answer, took: Duration) -> Option<Bytes> {
        match answer {
            Ok((status, body)) if status == expected => {
                self.micros.push(took.as_micros() as u64);
                Some(body)
            }
            other => {
                self.unexpected += 1;
                if self.examples.len() < 5 {
                    self.examples.push(match other {
                        Ok((status, body)) => {
                            format!("{status}: {}", String::from_utf8_lossy(&body))
                        }
                        Err(e) => format!("no answer: {e}"),
                    });
                }
                None
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.micros.extend(other.micros);
        self.unexpected += other.unexpected;
        for e in other.examples {
            if self.examples.len() < 5 {
                self.examples.push(e);
            }
        }
    }

    fn ok(&self) -> usize {
        self.micros.len()
    }

    fn dist(&self) -> Dist {
        Dist::of(self.micros.clone())
    }

    /// Adds a failure for every unexpected answer.
    fn check(&self, what: &str, expected: u16, failures: &mut Vec<String>) {
        if self.unexpected > 0 {
            failures.push(format!(
                "{what}: {} answers were not {expected}, e.g. {}",
                self.unexpected,
                self.examples.join(" | ")
            ));
        }
    }
}

/// Percentiles of microsecond samples.
#[derive(Clone, Copy, Default)]
struct Dist {
    n: usize,
    p50: u64,
    p99: u64,
    max: u64,
    mean: f64,
}

impl Dist {
    fn of(mut v: Vec<u64>) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        v.sort_unstable();
        let at = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Self {
            n: v.len(),
            p50: at(0.50),
            p99: at(0.99),
            max: v[v.len() - 1],
            mean: v.iter().sum::<u64>() as f64 / v.len() as f64,
        }
    }

    fn line(&self) -> String {
        format!(
            "p50 {}, p99 {}, max {} (mean {})",
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            ms(self.mean as u64)
        )
    }
}

fn ms(us: u64) -> String {
    if us < 10_000 {
        format!("{:.2} ms", us as f64 / 1000.0)
    } else {
        format!("{:.1} ms", us as f64 / 1000.0)
    }
}

/// 12345 → "12,345".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (k, c) in digits.chars().enumerate() {
        if k > 0 && (digits.len() - k).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A log line without its terminal colours.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters, then a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

// ---------------------------------------------------------------------------------------------
// Joining

struct Joined {
    beaters: Vec<Beater>,
    tally: Tally,
    elapsed: Duration,
}

async fn join_fleet(url: &str, secret: &str, planned: &[Planned]) -> Joined {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(JOINS_IN_FLIGHT)
        .build()
        .unwrap();
    let endpoint: Url = format!("{url}/v1/agent/join").parse().unwrap();
    let started = Instant::now();
    // Unordered: an answer that takes long holds back no other join.
    let answers: Vec<(usize, Answer, Duration)> =
        futures_util::stream::iter(planned.iter().enumerate())
            .map(|(i, p)| {
                let request = JoinRequest {
                    join_token: secret.to_owned(),
                    agent_id: p.agent_id.clone(),
                    name: p.name.clone(),
                    agent_url: format!(
                        "http://10.{}.{}.{}:7781",
                        (i >> 16) & 255,
                        (i >> 8) & 255,
                        i & 255
                    ),
                    agent_secret: format!("fleet-agent-secret-{i:016x}"),
                    report: p.report.clone(),
                };
                let call = client.post(endpoint.clone()).json(&request);
                async move {
                    let t = Instant::now();
                    let a = answer(call).await;
                    (i, a, t.elapsed())
                }
            })
            .buffer_unordered(JOINS_IN_FLIGHT)
            .collect()
            .await;
    let elapsed = started.elapsed();
    // In the order the hosts joined, which the heartbeats keep: none waits much more than an
    // interval for its first.
    let mut tally = Tally::default();
    let mut beaters = Vec::with_capacity(planned.len());
    for (i, a, took) in answers {
        let p = &planned[i];
        let Some(body) = tally.record(201, a, took) else {
            continue;
        };
        let joined: JoinResponse = serde_json::from_slice(&body).unwrap();
        assert_eq!(joined.heartbeat_interval_ms, INTERVAL.as_millis() as u64);
        let auth = HeaderValue::from_str(&format!("Bearer {}", joined.credential)).unwrap();
        beaters.push(Beater::new(p, auth));
    }
    Joined {
        beaters,
        tally,
        elapsed,
    }
}

// ---------------------------------------------------------------------------------------------
// Heartbeats

const PHASES: [&str; 4] = ["warm-up", "measured", "placing", "after"];
const WARMUP: usize = 0;
const MEASURED: usize = 1;
const PLACING: usize = 2;
const AFTER: usize = 3;

/// What the generator shares with the main thread.
#[derive(Default)]
struct Beats {
    phase: AtomicUsize,
    stop: AtomicBool,
    tallies: Mutex<[Tally; 4]>,
    /// Heartbeats handed to a connection more than 100 ms after their time.
    late: AtomicU64,
    max_lag_us: AtomicU64,
}

struct Job {
    host: usize,
    seq: u64,
}

/// Heartbeats from every host every interval, on a thread of its own (one runtime thread: the
/// server gets the rest of the machine).
fn spawn_heartbeats(
    url: &str,
    beaters: Arc<Vec<Beater>>,
    beats: Arc<Beats>,
    connections: usize,
    keep_alive: bool,
) -> std::thread::JoinHandle<()> {
    let endpoint: Url = format!("{url}/v1/agent/heartbeat").parse().unwrap();
    std::thread::Builder::new()
        .name("fleet-heartbeats".into())
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(heartbeat(endpoint, beaters, beats, connections, keep_alive))
        })
        .unwrap()
}

async fn heartbeat(
    endpoint: Url,
    beaters: Arc<Vec<Beater>>,
    beats: Arc<Beats>,
    connections: usize,
    keep_alive: bool,
) {
    // A connection each: a host's heartbeats always go over the same one.
    let mut queues = Vec::with_capacity(connections);
    let mut workers = Vec::with_capacity(connections);
    for w in 0..connections {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        queues.push(tx);
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(usize::from(keep_alive))
            .build()
            .unwrap();
        workers.push(tokio::spawn(connection(
            client,
            endpoint.clone(),
            beaters.clone(),
            beats.clone(),
            rx,
            w as u64,
        )));
    }
    let n = beaters.len() as u64;
    let spacing = INTERVAL.as_secs_f64() / n as f64;
    let start = tokio::time::Instant::now();
    let at = |k: u64| start + Duration::from_secs_f64(k as f64 * spacing);
    // The k-th heartbeat is host k % n's, in round k / n; hosts go in the order they joined.
    let mut k = 0u64;
    while !beats.stop.load(Ordering::Relaxed) {
        let now = tokio::time::Instant::now();
        while at(k) <= now {
            let lag = (now - at(k)).as_micros() as u64;
            beats.max_lag_us.fetch_max(lag, Ordering::Relaxed);
            if lag > 100_000 {
                beats.late.fetch_add(1, Ordering::Relaxed);
            }
            let host = (k % n) as usize;
            let _ = queues[host % connections].send(Job {
                host,
                seq: k / n + 1,
            });
            k += 1;
        }
        // At most 50 ms, to notice the stop.
        tokio::time::sleep_until(at(k).min(now + Duration::from_millis(50))).await;
    }
    drop(queues);
    for w in workers {
        let _ = w.await;
    }
}

async fn connection(
    client: reqwest::Client,
    endpoint: Url,
    beaters: Arc<Vec<Beater>>,
    beats: Arc<Beats>,
    mut jobs: tokio::sync::mpsc::UnboundedReceiver<Job>,
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    let json = HeaderValue::from_static("application/json");
    while let Some(job) = jobs.recv().await {
        let beater = &beaters[job.host];
        let call = client
            .post(endpoint.clone())
            .header(AUTHORIZATION, beater.auth.clone())
            .header(CONTENT_TYPE, json.clone())
            .body(beater.body(job.seq, &mut rng));
        let started = Instant::now();
        let a = answer(call).await;
        let took = started.elapsed();
        let phase = beats.phase.load(Ordering::Relaxed);
        beats.tallies.lock().unwrap()[phase].record(200, a, took);
    }
}

// ---------------------------------------------------------------------------------------------
// Placement

#[derive(Deserialize)]
struct Placed {
    #[serde(default)]
    claim: Option<ClaimRef>,
    explanation: Explanation,
}

#[derive(Deserialize)]
struct ClaimRef {
    id: String,
}

#[derive(Deserialize)]
struct Explanation {
    summary: String,
    elapsed_us: u64,
    pipeline: Vec<String>,
}

#[derive(Default)]
struct Placements {
    tally: Tally,
    server_us: Vec<u64>,
    claims: Vec<String>,
    elapsed: Duration,
    /// The first answer's summary, and the plugins that ran.
    summary: Option<(String, Vec<String>)>,
}

/// Places `TYPICAL` over and over from `in_flight` callers until `PLACE_FOR` has passed.
async fn place_for(
    client: &reqwest::Client,
    server: &Server,
    dry_run: bool,
    in_flight: usize,
) -> Placements {
    let endpoint: Url = format!("{}/v1/placements", server.url).parse().unwrap();
    let body = Bytes::from(format!(
        r#"{{"request": {TYPICAL}, "dry_run": {dry_run}, "purpose": "fleet-bench"}}"#
    ));
    let expected = if dry_run { 200 } else { 201 };
    let started = Instant::now();
    let deadline = started + PLACE_FOR;
    let callers = (0..in_flight).map(|_| {
        let (endpoint, body) = (endpoint.clone(), body.clone());
        async move {
            let mut out = Placements::default();
            while Instant::now() < deadline {
                let call = client
                    .post(endpoint.clone())
                    .bearer_auth(&server.token)
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone());
                let t = Instant::now();
                let a = answer(call).await;
                let took = t.elapsed();
                if let Some(body) = out.tally.record(expected, a, took) {
                    let placed: Placed = serde_json::from_slice(&body).unwrap();
                    out.server_us.push(placed.explanation.elapsed_us);
                    out.summary
                        .get_or_insert((placed.explanation.summary, placed.explanation.pipeline));
                    out.claims.extend(placed.claim.map(|c| c.id));
                }
            }
            out
        }
    });
    let mut all = Placements::default();
    for p in futures_util::future::join_all(callers).await {
        all.tally.merge(p.tally);
        all.server_us.extend(p.server_us);
        all.claims.extend(p.claims);
        all.summary = all.summary.or(p.summary);
    }
    all.elapsed = started.elapsed();
    all
}

async fn release(
    client: &reqwest::Client,
    server: &Server,
    claims: &[String],
) -> (Tally, Duration) {
    let started = Instant::now();
    let answers: Vec<(Answer, Duration)> = futures_util::stream::iter(claims)
        .map(|id| {
            let call = client
                .delete(format!("{}/v1/claims/{id}", server.url))
                .bearer_auth(&server.token);
            async move {
                let t = Instant::now();
                let a = answer(call).await;
                (a, t.elapsed())
            }
        })
        .buffer_unordered(PLACEMENTS_IN_FLIGHT)
        .collect()
        .await;
    let mut tally = Tally::default();
    for (a, took) in answers {
        tally.record(200, a, took);
    }
    (tally, started.elapsed())
}

/// Pages through the whole inventory, 500 hosts a page; (pages, hosts seen, answers).
async fn list_inventory(client: &reqwest::Client, server: &Server) -> (usize, usize, Tally) {
    #[derive(Deserialize)]
    struct Page {
        items: Vec<serde::de::IgnoredAny>,
        next: Option<String>,
    }
    let mut tally = Tally::default();
    let (mut pages, mut hosts) = (0, 0);
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{}/v1/hosts?limit=500", server.url);
        if let Some(a) = &after {
            url.push_str("&after=");
            url.push_str(a);
        }
        let t = Instant::now();
        let a = answer(client.get(url).bearer_auth(&server.token)).await;
        let Some(body) = tally.record(200, a, t.elapsed()) else {
            break;
        };
        let page: Page = serde_json::from_slice(&body).unwrap();
        pages += 1;
        hosts += page.items.len();
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    (pages, hosts, tally)
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// The samples of one metric in the Prometheus text format: (labels, value).
fn samples<'a>(text: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let (metric, labels) = match key.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (key, ""),
            };
            (metric == name).then(|| (labels, value.parse().unwrap_or(f64::NAN)))
        })
        .collect()
}

fn sample(text: &str, name: &str, labels: &str) -> f64 {
    samples(text, name)
        .into_iter()
        .find(|(l, _)| *l == labels)
        .map_or(0.0, |(_, v)| v)
}

// ---------------------------------------------------------------------------------------------

fn env_or(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a whole number")),
        Err(_) => default,
    }
}

/// Server CPU (% of one core) and RSS, sampled each second for `seconds`.
struct Window {
    seconds: f64,
    cpu_percent: f64,
    busiest_second: f64,
    rss_mean_kib: f64,
    rss_max_kib: u64,
    generator_cpu_percent: f64,
    switches_per_second: f64,
    /// What the rest of the machine used meanwhile (other builds disturb the result), and what
    /// the hypervisor took.
    others_cpu_percent: f64,
    steal_percent: f64,
    fds: usize,
    /// The seconds in which other processes used under 10% of a core, and the server's CPU over
    /// those alone.
    quiet_seconds: usize,
    quiet_cpu_percent: f64,
}

fn measure(pid: u32, seconds: u64) -> Window {
    let me = std::process::id();
    let started = Instant::now();
    let (cpu0, own0, switches0) = (cpu_seconds(pid), cpu_seconds(me), context_switches(pid));
    let (busy0, steal0) = machine_seconds();
    let (mut last_t, mut last_cpu, mut last_own, mut last_busy) = (started, cpu0, own0, busy0);
    let (mut busiest, mut rss, mut quiet) = (0.0f64, Vec::new(), Vec::new());
    for s in 1..=seconds {
        std::thread::sleep(
            (started + Duration::from_secs(s)).saturating_duration_since(Instant::now()),
        );
        let (now, cpu, own, (busy, _)) = (
            Instant::now(),
            cpu_seconds(pid),
            cpu_seconds(me),
            machine_seconds(),
        );
        let second = (now - last_t).as_secs_f64();
        let percent = (cpu - last_cpu) / second * 100.0;
        busiest = busiest.max(percent);
        let others = (busy - last_busy - (cpu - last_cpu) - (own - last_own)) / second * 100.0;
        // Under 10%: the tick counts of /proc are read at slightly different times.
        if others < 10.0 {
            quiet.push(percent);
        }
        rss.push(rss_kib(pid));
        (last_t, last_cpu, last_own, last_busy) = (now, cpu, own, busy);
    }
    let wall = started.elapsed().as_secs_f64();
    let (server, own) = (cpu_seconds(pid) - cpu0, cpu_seconds(me) - own0);
    let (busy, steal) = machine_seconds();
    Window {
        seconds: wall,
        cpu_percent: server / wall * 100.0,
        others_cpu_percent: ((busy - busy0 - server - own) / wall * 100.0).max(0.0),
        steal_percent: (steal - steal0) / wall * 100.0,
        fds: open_fds(pid),
        busiest_second: busiest,
        rss_mean_kib: rss.iter().sum::<u64>() as f64 / rss.len().max(1) as f64,
        rss_max_kib: rss.iter().copied().max().unwrap_or(0),
        generator_cpu_percent: own / wall * 100.0,
        switches_per_second: (context_switches(pid) - switches0) as f64 / wall,
        quiet_seconds: quiet.len(),
        quiet_cpu_percent: quiet.iter().sum::<f64>() / quiet.len().max(1) as f64,
    }
}

fn main() {
    slipway_server::tune_allocator();
    let n = env_or("SLIPWAY_BENCH_HOSTS", 10_000).max(1) as usize;
    let window = env_or("SLIPWAY_BENCH_SECONDS", 60).max(1);
    let warmup = env_or("SLIPWAY_BENCH_WARMUP", 15);
    let (connections, keep_alive) = match env_or("SLIPWAY_BENCH_CONNECTIONS", 16) {
        0 => (16.min(n), false),
        c => ((c as usize).min(n), true),
    };
    let how = if keep_alive {
        format!("{connections} keep-alive connections")
    } else {
        format!("a new connection each ({connections} at a time)")
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut failures: Vec<String> = Vec::new();
    let mut anomalies: Vec<String> = Vec::new();
    if window < 30 {
        anomalies.push(format!(
            "the measurement window is {window} s, shorter than the 30 s a result needs"
        ));
    }

    // On the disk, beside the build, not in a tmpfs: the store writes where a server's would.
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    let plugins = artifacts::first_party_placement_plugins(dir.path());
    let mut server = start_server(
        &dir.path().join("data"),
        &plugins,
        &dir.path().join("server.log"),
    );
    let pid = server.pid;
    // What the server costs doing nothing, for comparison.
    let idle = measure(pid, 5);
    let idle_rss = rss_kib(pid);
    eprintln!(
        "fleet: {} hosts against {} (pid {pid}), {cores} CPUs; server idle at {:.0} MiB",
        thousands(n as u64),
        server.url,
        mib(idle_rss)
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let admin = reqwest::Client::builder()
        .pool_max_idle_per_host(PLACEMENTS_IN_FLIGHT)
        .build()
        .unwrap();

    // 1. A join token.
    let secret = runtime.block_on(async {
        let (status, body) = answer(
            admin
                .post(format!("{}/v1/join-tokens", server.url))
                .bearer_auth(&server.token)
                .json(&serde_json::json!({ "name": "fleet" })),
        )
        .await
        .unwrap();
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
        let created: serde_json::Value = serde_json::from_slice(&body).unwrap();
        created["secret"].as_str().unwrap().to_owned()
    });

    // 2. The fleet joins.
    let planned: Vec<Planned> = (0..n).map(plan).collect();
    // Every heartbeat body the generator writes is one the protocol reads back.
    let mut body_bytes = 0;
    for (i, p) in planned.iter().enumerate() {
        let beater = Beater::new(p, HeaderValue::from_static("Bearer -"));
        let body = beater.body(7, &mut Rng::new(i as u64));
        body_bytes += body.len();
        let beat: Heartbeat = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)));
        assert_eq!(beat.seq, 7);
        assert_eq!(
            HostReport {
                load_milli: p.report.load_milli,
                memory_available_mib: p.report.memory_available_mib,
                uptime_s: p.report.uptime_s,
                ..beat.report.clone()
            },
            p.report
        );
        assert!(beat.report.memory_available_mib <= beat.report.memory_total_mib);
    }
    let body_bytes = body_bytes / n;
    eprintln!("joining, {JOINS_IN_FLIGHT} in flight...");
    let cpu_before_join = cpu_seconds(pid);
    let joined = runtime.block_on(join_fleet(&server.url, &secret, &planned));
    let join_cpu = cpu_seconds(pid) - cpu_before_join;
    joined.tally.check("join", 201, &mut failures);
    let join_dist = joined.tally.dist();
    let join_rate = joined.tally.ok() as f64 / joined.elapsed.as_secs_f64();
    let joined_rss = rss_kib(pid);
    eprintln!(
        "  {} joined in {:.1} s ({join_rate:.0}/s), {}; server CPU {join_cpu:.1} s, RSS {:.0} MiB",
        thousands(joined.tally.ok() as u64),
        joined.elapsed.as_secs_f64(),
        join_dist.line(),
        mib(joined_rss)
    );
    assert!(!joined.beaters.is_empty(), "no host joined");
    let fleet = joined.beaters.len();
    // The fleet joined and silent (well within the three intervals a host may be).
    let silent = measure(pid, 5);

    // 3. Heartbeats: warm-up, then the measurement window.
    let beaters = Arc::new(joined.beaters);
    let beats = Arc::new(Beats::default());
    beats.phase.store(WARMUP, Ordering::Relaxed);
    let rate = fleet as f64 / INTERVAL.as_secs_f64();
    eprintln!(
        "heartbeating: {rate:.0}/s over {how} (bodies ~{body_bytes} bytes); \
         warm-up {warmup} s, then measuring for {window} s..."
    );
    let generator = spawn_heartbeats(
        &server.url,
        beaters.clone(),
        beats.clone(),
        connections,
        keep_alive,
    );
    std::thread::sleep(Duration::from_secs(warmup));
    let ready_at_start = runtime.block_on(async {
        let (_, body) = answer(admin.get(format!("{}/metrics", server.url)))
            .await
            .unwrap();
        sample(
            &String::from_utf8_lossy(&body),
            "slipway_hosts",
            r#"state="ready""#,
        )
    });
    if ready_at_start as usize != fleet {
        anomalies.push(format!(
            "{ready_at_start} of {fleet} hosts were ready when the measurement began"
        ));
    }
    beats.phase.store(MEASURED, Ordering::Relaxed);
    let measured = measure(pid, window);
    beats.phase.store(PLACING, Ordering::Relaxed);
    eprintln!(
        "  server CPU {:.2}% of one core (busiest second {:.1}%), RSS mean {:.1} MiB, max {:.1} MiB; \
         this process {:.1}%, other processes {:.1}%, steal {:.1}%; {} open fds",
        measured.cpu_percent,
        measured.busiest_second,
        mib(measured.rss_mean_kib as u64),
        mib(measured.rss_max_kib),
        measured.generator_cpu_percent,
        measured.others_cpu_percent,
        measured.steal_percent,
        measured.fds
    );
    // Another engineer's build on the same cores makes the server's numbers worse than they are.
    if measured.others_cpu_percent > 10.0 {
        anomalies.push(format!(
            "other processes used {:.0}% of a core during the measurement ({} of {:.0} seconds quiet): \
             rerun on a quiet machine",
            measured.others_cpu_percent,
            measured.quiet_seconds,
            measured.seconds
        ));
    }

    // 4. Placement while the fleet heartbeats.
    eprintln!("placing (dry runs, one at a time)...");
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let dry = runtime.block_on(async {
        // A few first, out of the count: the first calls of each plugin instance.
        for _ in 0..5 {
            let call = admin
                .post(format!("{}/v1/placements", server.url))
                .bearer_auth(&server.token)
                .header(CONTENT_TYPE, "application/json")
                .body(format!(r#"{{"request": {TYPICAL}, "dry_run": true}}"#));
            let _ = answer(call).await;
        }
        place_for(&admin, &server, true, 1).await
    });
    let dry_cpu = (cpu_seconds(pid) - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
    dry.tally.check("dry-run placement", 200, &mut failures);
    let dry_client = dry.tally.dist();
    let dry_server = Dist::of(dry.server_us.clone());
    eprintln!(
        "  {} decisions: client {}; server {}; {}",
        dry_client.n,
        dry_client.line(),
        dry_server.line(),
        dry.summary
            .as_ref()
            .map_or("-", |(summary, _)| summary.as_str())
    );

    eprintln!("placing with claims, {PLACEMENTS_IN_FLIGHT} in flight...");
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let claimed = runtime.block_on(place_for(&admin, &server, false, PLACEMENTS_IN_FLIGHT));
    let claim_cpu = (cpu_seconds(pid) - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
    claimed
        .tally
        .check("placement with a claim", 201, &mut failures);
    let claim_client = claimed.tally.dist();
    let claim_server = Dist::of(claimed.server_us.clone());
    let claim_rate = claimed.tally.ok() as f64 / claimed.elapsed.as_secs_f64();
    eprintln!(
        "  {} claims in {:.1} s ({claim_rate:.0}/s): client {}; server {}",
        claimed.claims.len(),
        claimed.elapsed.as_secs_f64(),
        claim_client.line(),
        claim_server.line()
    );
    let (released, release_time) = runtime.block_on(release(&admin, &server, &claimed.claims));
    released.check("claim release", 200, &mut failures);
    let release_rate = released.ok() as f64 / release_time.as_secs_f64();
    eprintln!(
        "  released {} claims in {:.1} s ({release_rate:.0}/s): {}",
        released.ok(),
        release_time.as_secs_f64(),
        released.dist().line()
    );

    eprintln!("listing the inventory, 500 hosts a page...");
    let (pages, listed, list_tally) = runtime.block_on(list_inventory(&admin, &server));
    list_tally.check("host listing", 200, &mut failures);
    if listed != fleet {
        failures.push(format!("the inventory lists {listed} hosts, not {fleet}"));
    }
    let list_dist = list_tally.dist();
    eprintln!("  {pages} pages of up to 500: {}", list_dist.line());

    let metrics = runtime.block_on(async {
        let (status, body) = answer(admin.get(format!("{}/metrics", server.url)))
            .await
            .unwrap();
        assert_eq!(status, 200);
        String::from_utf8(body.to_vec()).unwrap()
    });
    let peak_rss = hwm_kib(pid);
    let final_rss = rss_kib(pid);

    // 5. Stop.
    beats.phase.store(AFTER, Ordering::Relaxed);
    beats.stop.store(true, Ordering::Relaxed);
    generator.join().unwrap();
    let shutdown = stop_server(&mut server);
    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
    drop(runtime);
    drop(server);
    // Removed here: `exit` below would leave it in the build directory.
    drop(dir);

    // Heartbeats, phase by phase.
    let tallies = std::mem::take(&mut *beats.tallies.lock().unwrap());
    for (phase, tally) in PHASES.iter().zip(&tallies) {
        tally.check(&format!("heartbeat ({phase})"), 200, &mut failures);
    }
    let sent: u64 = tallies.iter().map(|t| t.ok() as u64 + t.unexpected).sum();
    let beat_measured = tallies[MEASURED].dist();
    let beat_placing = tallies[PLACING].dist();
    let measured_rate =
        (tallies[MEASURED].ok() as u64 + tallies[MEASURED].unexpected) as f64 / measured.seconds;
    let late = beats.late.load(Ordering::Relaxed);
    let max_lag = beats.max_lag_us.load(Ordering::Relaxed);
    if late > 0 {
        anomalies.push(format!(
            "{late} heartbeats were sent more than 100 ms late (at most {}): the generator fell behind",
            ms(max_lag)
        ));
    }

    // What the server counted.
    let accepted = sample(&metrics, "slipway_heartbeats_total", r#"result="accepted""#);
    // The last heartbeats in flight when the metrics were read are counted after.
    if (accepted as u64) > sent || sent - (accepted as u64) > 2 * connections as u64 + rate as u64 {
        anomalies.push(format!(
            "the server counted {accepted} heartbeats accepted; {sent} were answered 200"
        ));
    }
    for (labels, v) in samples(&metrics, "slipway_heartbeats_total") {
        if !labels.contains("accepted") && v > 0.0 {
            failures.push(format!("the server counted heartbeats {labels}: {v}"));
        }
    }
    let states: Vec<String> = samples(&metrics, "slipway_hosts")
        .into_iter()
        .map(|(l, v)| format!("{} {v}", l.trim_start_matches("state=").trim_matches('"')))
        .collect();
    let ready = sample(&metrics, "slipway_hosts", r#"state="ready""#);
    if ready as usize != fleet {
        failures.push(format!(
            "{ready} hosts ready at the end, not {fleet} ({})",
            states.join(", ")
        ));
    }
    for (labels, v) in samples(&metrics, "slipway_placements_total") {
        if !labels.contains("placed") && v > 0.0 {
            failures.push(format!("the server counted placements {labels}: {v}"));
        }
    }
    let place_sum = sample(&metrics, "slipway_placement_duration_seconds_sum", "");
    let place_count = sample(&metrics, "slipway_placement_duration_seconds_count", "");
    let plugin_sums = samples(&metrics, "slipway_plugin_call_duration_seconds_sum");
    let plugin_counts = samples(&metrics, "slipway_plugin_call_duration_seconds_count");
    let mut plugin_lines = Vec::new();
    for (labels, sum) in &plugin_sums {
        let count = plugin_counts
            .iter()
            .find(|(l, _)| l == labels)
            .map_or(0.0, |(_, c)| *c);
        let name = labels
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(_, v)| v.trim_matches('"'))
            .collect::<Vec<_>>()
            .join(" ");
        plugin_lines.push((name, *sum, count));
    }
    plugin_lines.sort_by(|a, b| b.1.total_cmp(&a.1));
    let warnings: Vec<String> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("panicked"))
        .map(plain)
        .collect();
    if !warnings.is_empty() {
        anomalies.push(format!(
            "the server logged {} warnings or errors, e.g. {}",
            warnings.len(),
            warnings
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join(" | ")
        ));
    }
    match shutdown {
        None => failures.push("the server did not stop within 60 s of SIGTERM".into()),
        Some(t) if t > Duration::from_secs(5) => anomalies.push(format!(
            "the server took {:.1} s to stop after SIGTERM",
            t.as_secs_f64()
        )),
        Some(_) => {}
    }

    // The report.
    let cpu_met = measured.cpu_percent < CPU_TARGET_PERCENT;
    let rss_met = mib(measured.rss_max_kib) < RSS_TARGET_MIB;
    let verdict = |met: bool| if met { "met" } else { "**missed**" };
    println!();
    println!("### Fleet scale: {} hosts", thousands(fleet as u64));
    println!();
    println!(
        "`cargo bench -p slipway-server --bench fleet` against a `slipway serve` process on {cores} \
         CPU threads, shared with the load generator; SQLite on disk; heartbeats every {} s over \
         {how}; the default pipeline ({}); a placement asks for \
         `{}`.",
        INTERVAL.as_secs(),
        dry.summary
            .as_ref()
            .map_or("?".into(), |(_, pipeline)| pipeline.join(", ")),
        TYPICAL.replace(' ', "")
    );
    println!();
    println!("| What | Result | Target |");
    println!("|---|---|---|");
    println!(
        "| Join, {JOINS_IN_FLIGHT} in flight | {} hosts in {:.1} s: **{:.0}/s**; p50 {}, p99 {}; server CPU {:.2} ms a join | |",
        thousands(joined.tally.ok() as u64),
        joined.elapsed.as_secs_f64(),
        join_rate,
        ms(join_dist.p50),
        ms(join_dist.p99),
        join_cpu * 1000.0 / joined.tally.ok().max(1) as f64
    );
    println!(
        "| Heartbeats ({:.0} s measured after {warmup} s) | {measured_rate:.0}/s, ~{body_bytes}-byte bodies; p50 {}, p99 {}, max {}; {} of {} not 200 | none refused |",
        measured.seconds,
        ms(beat_measured.p50),
        ms(beat_measured.p99),
        ms(beat_measured.max),
        tallies.iter().map(|t| t.unexpected).sum::<u64>(),
        thousands(sent)
    );
    println!(
        "| Server CPU while heartbeating | **{:.1}%** of one core (busiest second {:.0}%; {:.1}% over the {} seconds nothing else ran); {:.1} context switches a heartbeat | < {CPU_TARGET_PERCENT:.0}%: {} |",
        measured.cpu_percent,
        measured.busiest_second,
        measured.quiet_cpu_percent,
        measured.quiet_seconds,
        measured.switches_per_second / measured_rate.max(1.0),
        verdict(cpu_met)
    );
    println!(
        "| Server CPU without heartbeats | {:.2}% with no hosts, {:.2}% with {} joined and silent (5 s each) | |",
        idle.cpu_percent,
        silent.cpu_percent,
        thousands(fleet as u64)
    );
    println!(
        "| Server RSS while heartbeating | **{:.0} MiB** (mean {:.0} MiB; {:.0} MiB idle, {:.0} MiB after the joins; {} open fds) | < {RSS_TARGET_MIB:.0} MiB: {} |",
        mib(measured.rss_max_kib),
        mib(measured.rss_mean_kib as u64),
        mib(idle_rss),
        mib(joined_rss),
        measured.fds,
        verdict(rss_met)
    );
    println!(
        "| Placement decision, dry run, one at a time | client p50 **{}**, p99 {}; server `elapsed_us` p50 **{}**, p99 {} ({} decisions; server CPU {:.0}%) | |",
        ms(dry_client.p50),
        ms(dry_client.p99),
        ms(dry_server.p50),
        ms(dry_server.p99),
        thousands(dry_client.n as u64),
        dry_cpu
    );
    println!(
        "| Placements with claims, {PLACEMENTS_IN_FLIGHT} in flight, {} s | **{:.0} decisions/s**; client p50 {}, p99 {}; server p50 {}, p99 {} (server CPU {:.0}%) | |",
        PLACE_FOR.as_secs(),
        claim_rate,
        ms(claim_client.p50),
        ms(claim_client.p99),
        ms(claim_server.p50),
        ms(claim_server.p99),
        claim_cpu
    );
    println!(
        "| Releasing those claims, {PLACEMENTS_IN_FLIGHT} in flight | {} in {:.1} s ({:.0}/s) | |",
        thousands(released.ok() as u64),
        release_time.as_secs_f64(),
        release_rate
    );
    println!(
        "| Heartbeats while placing | p50 {}, p99 {}, max {} | |",
        ms(beat_placing.p50),
        ms(beat_placing.p99),
        ms(beat_placing.max)
    );
    println!(
        "| `GET /v1/hosts?limit=500`, whole inventory | {pages} pages: p50 {}, p99 {} a page | |",
        ms(list_dist.p50),
        ms(list_dist.p99)
    );
    if place_count > 0.0 {
        println!(
            "| `slipway_placement_duration_seconds`, every decision of the run (with its wait for its turn) | sum {place_sum:.2} s, count {}: mean {} | |",
            thousands(place_count as u64),
            ms((place_sum / place_count * 1e6) as u64)
        );
    }
    for (name, sum, count) in &plugin_lines {
        println!(
            "| `slipway_plugin_call_duration_seconds`, {name} | sum {sum:.2} s, count {}: mean {} a call | |",
            thousands(*count as u64),
            ms((sum / count.max(1.0) * 1e6) as u64)
        );
    }
    println!(
        "| Server memory, peak since start | {:.0} MiB (VmHWM); {:.0} MiB at the end | |",
        mib(peak_rss),
        mib(final_rss)
    );
    println!(
        "| Load generator (this process) | {:.1}% of one core while measuring (other processes {:.1}%, steal {:.1}%) | |",
        measured.generator_cpu_percent, measured.others_cpu_percent, measured.steal_percent
    );
    println!();
    if let Some((summary, _)) = &dry.summary {
        println!("A dry run's explanation: \"{summary}\".");
    }
    println!("Hosts by state at the end: {}.", states.join(", "));
    match shutdown {
        Some(t) => println!("Graceful shutdown after SIGTERM: {:.2} s.", t.as_secs_f64()),
        None => println!("The server did not stop after SIGTERM."),
    }
    println!(
        "Targets: CPU {}, RSS {}.",
        verdict(cpu_met),
        verdict(rss_met)
    );
    for a in &anomalies {
        println!("Note: {a}");
    }
    if !failures.is_empty() {
        println!();
        for f in &failures {
            println!("FAILED: {f}");
        }
        std::process::exit(1);
    }
}
