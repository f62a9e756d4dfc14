//! Staging against `virt-sysprep`, on the same image, in the same run.
//!
//! The image is the debootstrapped Debian bookworm model VM that `scripts/fixtures/debian-image`
//! builds (GPT: an EFI system partition, a BIOS boot partition, a 1.5 GiB ext4 root with ~230 MiB
//! of data). Slipway stages it the way the `staged_vm.create` job does — copy out, inspect and
//! strip with the compiled identity-linux plugin, first-boot wiring, a new disk, qcow2, sha256 —
//! and each step is timed. `virt-sysprep` (libguestfs, direct backend, TCG, a cached appliance;
//! set up by `scripts/fixtures/virt-sysprep`) strips a copy of the same qcow2. Three runs of
//! each, alternating; medians reported, with the ratio. Slipway runs twice per round: with its
//! work directory on the disk that holds the image (the default, `<data-dir>/work`) and on tmpfs
//! (`--work-dir /dev/shm/...`).
//!
//! `cargo bench -p slipway-server --bench stage` (needs root; `SLIPWAY_BENCH_RUNS` changes the
//! number of runs; `SLIPWAY_BENCH_NO_SYSPREP=1` skips virt-sysprep).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use sha2::Digest;
use slipway_image::layout::{self, Sizing};
use slipway_runtime::{PluginPackage, Runtime, RuntimeConfig};
use slipway_server::staging::{self, Work};
use slipway_test_artifacts as artifacts;

fn script(args: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(root.join(args[0]))
        .args(&args[1..])
        .output()
        .expect("running a fixture script");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Run {
    steps: Vec<(&'static str, f64)>,
    operations: Vec<String>,
}

fn slipway(
    image: &Path,
    plugin: &slipway_runtime::identity::IdentityPlugin,
    scratch: &Path,
) -> Run {
    let dir = tempfile::tempdir_in(scratch).unwrap();
    let work = Work {
        dir: dir.path().to_path_buf(),
    };
    let os = slipway_core::catalog::OsSpec {
        family: slipway_core::catalog::OsFamily::Linux,
        distro: "debian".into(),
        version: "12".into(),
        arch: slipway_core::hardware::Arch::X86_64,
    };
    let mut steps = Vec::new();
    let mut t = Instant::now();
    let mut lap = |name: &'static str, steps: &mut Vec<(&'static str, f64)>| {
        steps.push((name, t.elapsed().as_secs_f64()));
        t = Instant::now();
    };
    let layout = staging::copy_out(&work, image).unwrap();
    lap("copy-out", &mut steps);
    let found = staging::inspect(&work, &layout, std::slice::from_ref(plugin), &os).unwrap();
    lap("inspect", &mut steps);
    let ops = staging::strip(&work, &layout, &found).unwrap();
    lap("strip", &mut steps);
    let (_, wired) = staging::first_boot(
        &work,
        &layout,
        &found,
        Some(Path::new(artifacts::GUEST_AGENT)),
    )
    .unwrap();
    lap("first-boot", &mut steps);
    staging::write_image(&work, &layout, Sizing::Same).unwrap();
    lap("write-image", &mut steps);
    // The job's `store` step: qcow2, then the digest that names it.
    let qcow2 = dir.path().join("staged.qcow2");
    layout::to_qcow2(&work.staged(), &qcow2).unwrap();
    let mut f = std::fs::File::open(&qcow2).unwrap();
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let _ = h.finalize();
    lap("store", &mut steps);
    let operations = ops
        .iter()
        .chain(&wired)
        .filter(|o| !o.changed.is_empty())
        .map(|o| format!("{} ({})", o.name, o.changed.len()))
        .collect();
    Run { steps, operations }
}

fn virt_sysprep(image: &Path) -> (f64, Vec<String>) {
    let out = script(&["scripts/fixtures/virt-sysprep", image.to_str().unwrap()]);
    let seconds = out
        .lines()
        .find_map(|l| l.strip_prefix("virt-sysprep-seconds: "))
        .and_then(|s| s.trim().parse().ok())
        .expect("virt-sysprep-seconds in the script's output");
    let ops = out
        .lines()
        .filter_map(|l| l.strip_prefix("operation: "))
        .map(str::to_owned)
        .collect();
    (seconds, ops)
}

fn main() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("the staging benchmark needs root (file owners and device nodes in the trees)");
        std::process::exit(1);
    }
    let runs: usize = std::env::var("SLIPWAY_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let sysprep = std::env::var_os("SLIPWAY_BENCH_NO_SYSPREP").is_none();
    eprintln!("building (or reusing) the Debian fixture image...");
    let image = PathBuf::from(script(&["scripts/fixtures/debian-image"]).trim());
    if sysprep {
        eprintln!("setting up virt-sysprep (installs libguestfs on first use)...");
        script(&["scripts/fixtures/virt-sysprep", "--setup"]);
    }
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let package = PluginPackage::read(Path::new(artifacts::IDENTITY_LINUX.dir)).unwrap();
    let plugin = runtime
        .load(package.manifest, &package.component)
        .unwrap()
        .into_identity()
        .unwrap();

    // The work directory (`--work-dir`) on the disk that holds the image store, and on tmpfs.
    let disk = std::env::temp_dir();
    let tmpfs = PathBuf::from("/dev/shm");
    let places = [("work dir on disk", disk), ("work dir on tmpfs", tmpfs)];

    // One warm-up of each: page cache, the compiled plugin, libguestfs's appliance.
    let warm = slipway(&image, &plugin, &places[0].1);
    if sysprep {
        virt_sysprep(&image);
    }
    let mut totals: Vec<Vec<f64>> = vec![Vec::new(); places.len()];
    let mut per_step: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); warm.steps.len()]; places.len()];
    let mut theirs = Vec::new();
    let mut their_ops = Vec::new();
    for i in 0..runs {
        for (p, (label, dir)) in places.iter().enumerate() {
            let run = slipway(&image, &plugin, dir);
            let total: f64 = run.steps.iter().map(|s| s.1).sum();
            for (j, s) in run.steps.iter().enumerate() {
                per_step[p][j].push(s.1);
            }
            eprintln!("run {}: slipway, {label}: {total:.2} s", i + 1);
            totals[p].push(total);
        }
        if sysprep {
            let (s, ops) = virt_sysprep(&image);
            eprintln!("run {}: virt-sysprep {s:.2} s", i + 1);
            theirs.push(s);
            their_ops = ops;
        }
    }
    let image_mib = std::fs::metadata(&image).unwrap().len() >> 20;
    println!(
        "staging the debootstrapped Debian 12 image ({image_mib} MiB qcow2), median of {runs}, seconds:"
    );
    println!();
    println!("| step | {} | {} |", places[0].0, places[1].0);
    println!("|---|---:|---:|");
    for (j, (name, _)) in warm.steps.iter().enumerate() {
        println!(
            "| {name} | {:.2} | {:.2} |",
            median(&mut per_step[0][j]),
            median(&mut per_step[1][j])
        );
    }
    let ours: Vec<f64> = totals.iter_mut().map(|t| median(t)).collect();
    println!(
        "| **slipway, total** | **{:.2}** | **{:.2}** |",
        ours[0], ours[1]
    );
    if sysprep {
        let theirs = median(&mut theirs);
        println!("| **virt-sysprep** | **{theirs:.2}** | |");
        println!();
        for (p, (label, _)) in places.iter().enumerate() {
            println!(
                "slipway ({label}) is {:.1}x faster than virt-sysprep",
                theirs / ours[p]
            );
        }
        println!();
        println!(
            "virt-sysprep ran {} operations: {}",
            their_ops.len(),
            their_ops.join(", ")
        );
    }
    println!();
    println!("slipway changed: {}", warm.operations.join(", "));
}
