//! Deployment's two costs on a host, each against what it is compared with in the same run:
//!
//! 1. **Cached deploy**: a VM from a base already in the cache — the agent's `create` (a
//!    copy-on-write overlay with `qemu-img create -b`, then QEMU started, detached) — for a 1 GiB
//!    and an 8 GiB base. Target: ≤ 100 ms, and flat in the image's size.
//! 2. **Cold transfer**: a 1 GiB image sent to a real agent process over loopback
//!    (`send_image`: data extents in frames, hashed and written by the agent) against `cp` of the
//!    same file to the same file system. Target: ≥ 0.8× cp. And a half-sparse image: only its
//!    data travels.
//!
//! `cargo bench -p slipway-agent --bench deploy` (needs qemu-system-x86_64 and qemu-img).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use slipway_agent::vm::Vms;
use slipway_core::catalog::{DiskBus, DiskSpec, HardwareConfig, MachineType, NicModel, NicSpec};
use slipway_core::vm::{CloneMode, NetworkMode, VmSpec};

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn spec(id: &str, base: &str, size_mib: u64) -> VmSpec {
    VmSpec {
        id: id.into(),
        uuid: uuid::Uuid::new_v4().to_string(),
        name: id.into(),
        base_image: base.into(),
        clone: CloneMode::Linked,
        hardware: HardwareConfig {
            vcpus: 1,
            memory_mib: 128,
            disks: vec![DiskSpec {
                size_mib,
                bus: DiskBus::Nvme,
                image: None,
            }],
            nics: vec![NicSpec {
                model: NicModel::Virtio,
            }],
            firmware: slipway_core::Firmware::Bios,
            arch: slipway_core::Arch::X86_64,
            machine_type: MachineType::Q35,
        },
        macs: vec!["52:54:00:aa:bb:cc".into()],
        network: NetworkMode::User,
        smbios_serial: "ds=nocloud-net;s=http://10.0.2.2:9/v1/seed/x/".into(),
    }
}

async fn cached_deploy(dir: &Path) {
    let qemu = which("qemu-system-x86_64").expect("qemu-system-x86_64");
    let data = dir.join("agent");
    std::fs::create_dir_all(data.join("images")).unwrap();
    let vms = Vms::open(&data, Some(qemu), "tcg").unwrap();
    println!("cached deploy: create (overlay + QEMU started), 15 rounds each");
    println!(
        "{:>8} {:>10} {:>10} {:>10}",
        "base", "p50 ms", "p95 ms", "overlay ms"
    );
    let mut medians = Vec::new();
    for gib in [1u64, 8] {
        // A qcow2 base of the virtual size: what matters is that nothing scales with it.
        let digest = format!("{:064x}", gib);
        let base = data.join("images").join(&digest);
        let ok = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&base)
            .arg(format!("{gib}G"))
            .status()
            .unwrap();
        assert!(ok.success());
        let (mut total, mut overlay) = (Vec::new(), Vec::new());
        for round in 0..15 {
            let id = format!("bench-{gib}-{round}");
            let t = Instant::now();
            vms.create(spec(&id, &digest, gib << 10)).await.unwrap();
            total.push(t.elapsed().as_secs_f64() * 1e3);
            vms.delete(&id).await.unwrap();
            // The overlay alone, for the breakdown.
            let o = dir.join("o.qcow2");
            let t = Instant::now();
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
                .arg(&base)
                .arg(&o)
                .status()
                .unwrap();
            overlay.push(t.elapsed().as_secs_f64() * 1e3);
            let _ = std::fs::remove_file(&o);
        }
        let p50 = percentile(&mut total, 0.5);
        println!(
            "{:>6}GiB {:>10.1} {:>10.1} {:>10.1}",
            gib,
            p50,
            percentile(&mut total, 0.95),
            percentile(&mut overlay, 0.5)
        );
        medians.push(p50);
    }
    println!(
        "8 GiB / 1 GiB median: {:.2}x (flat is 1.0); target p50 <= 100 ms\n",
        medians[1] / medians[0]
    );
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn file_with(path: &Path, mib: u64, holes: bool) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let mut state = 0x9E3779B97F4A7C15u64;
    let mut chunk = vec![0u8; 1 << 20];
    let mut allocated = 0;
    for i in 0..mib {
        if holes && i % 2 == 1 {
            continue;
        }
        for b in chunk.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            b.copy_from_slice(&state.to_le_bytes()[..b.len()]);
        }
        use std::os::unix::fs::FileExt;
        f.write_all_at(&chunk, i << 20).unwrap();
        allocated += 1 << 20;
    }
    f.set_len(mib << 20).unwrap();
    f.flush().unwrap();
    f.sync_all().unwrap();
    allocated
}

fn sync_all() {
    // SAFETY: sync(2) takes nothing and cannot fail.
    unsafe { libc::sync() };
}

fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut f = std::fs::File::open(path).unwrap();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}

async fn cold_transfer(dir: &Path) {
    let data = dir.join("node");
    std::fs::create_dir_all(&data).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_slipway-agent"))
        .args([
            "run",
            "--server",
            "http://127.0.0.1:1",
            "--join-token",
            "slj_none",
        ])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--name", "bench"])
        .arg("--data-dir")
        .arg(&data)
        .env("SLIPWAY_AGENT_LOG", "slipway_agent=debug")
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(std::env::temp_dir().join("slipway-bench-agent.log")).unwrap(),
        )
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let secret = loop {
        let state = std::fs::read(data.join("agent.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        if let Some(s) = state.and_then(|s| s["agent_secret"].as_str().map(str::to_owned))
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let http = reqwest::Client::new();
    println!(
        "cold transfer over loopback to a real agent vs cp to the same file system, 5 rounds each (medians), sync before each"
    );
    println!(
        "{:>14} {:>10} {:>10} {:>8} {:>14} {:>14}",
        "image", "cp MB/s", "send MB/s", "ratio", "bytes sent", "allocated"
    );
    for (name, holes) in [("1 GiB random", false), ("1 GiB half holes", true)] {
        let src = dir.join("image");
        let allocated = file_with(&src, 1024, holes);
        let digest = sha256_file(&src);
        let (mut cp, mut send) = (Vec::new(), Vec::new());
        let mut sent_bytes = 0;
        for _ in 0..5 {
            // Each starts with nothing dirty waiting to be written: the other's writeback would
            // otherwise land in its time.
            sync_all();
            let dst = data.join("cp-copy");
            let t = Instant::now();
            let ok = Command::new("cp")
                .arg("--sparse=always")
                .arg(&src)
                .arg(&dst)
                .status()
                .unwrap();
            assert!(ok.success());
            // cp's data must be on disk too, as the agent's is before it answers.
            std::fs::File::open(&dst).unwrap().sync_all().unwrap();
            cp.push(t.elapsed().as_secs_f64());
            std::fs::remove_file(&dst).unwrap();

            sync_all();
            let t = Instant::now();
            let sent = slipway_server::transfer::send_image(
                &http,
                &url,
                &secret,
                &src,
                &digest,
                |_, _| {},
            )
            .await
            .unwrap();
            send.push(t.elapsed().as_secs_f64());
            sent_bytes = sent.bytes_sent;
            let _ = http
                .delete(format!("{url}/v1/images/{digest}"))
                .bearer_auth(&secret)
                .send()
                .await
                .unwrap();
        }
        let mb = 1024.0 * 1.048576;
        let cp_rate = mb / percentile(&mut cp, 0.5);
        let send_rate = mb / percentile(&mut send, 0.5);
        println!(
            "{:>14} {:>10.0} {:>10.0} {:>7.2}x {:>14} {:>14}",
            name,
            cp_rate,
            send_rate,
            send_rate / cp_rate,
            sent_bytes,
            allocated
        );
        std::fs::remove_file(&src).unwrap();
    }
    println!("target: send >= 0.8x cp; bytes sent == allocated");
    let _ = agent.kill();
    let _ = agent.wait();
}

fn main() {
    // `cargo bench` passes --bench; nothing else is taken.
    let dir = tempfile::Builder::new()
        .prefix("slipway-bench")
        .tempdir_in(std::env::var_os("SLIPWAY_BENCH_DIR").unwrap_or_else(|| "/var/tmp".into()))
        .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        cached_deploy(dir.path()).await;
        cold_transfer(dir.path()).await;
    });
    let _ = std::io::stdout().flush();
}
