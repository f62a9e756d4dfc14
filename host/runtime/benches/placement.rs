//! One placement decision — capacity filter, label filter, bin-packing score — over 100, 1,000
//! and 10,000 hosts, through the WebAssembly plugins and through the same heuristics compiled
//! natively, on the same data in the same run. Prints medians and the wasm/native ratio.
//!
//! Also measured: the fixed cost of one plugin call (fresh store + instantiate + call) and of
//! loading a plugin compiled vs from the on-disk cache, and building the columnar fleet.
//!
//! Run: `cargo bench -p slipway-runtime --bench placement` (add `-- --quick` for fewer samples).

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use slipway_core::{Arch, PlacementRequest, sample};
use slipway_runtime::placement::FleetBuilder;
use slipway_runtime::{PluginPackage, Runtime, RuntimeConfig};
use slipway_test_artifacts as artifacts;
use support::native;

/// Median wall time of `f`, over `samples` samples each long enough to time reliably.
fn median(samples: usize, mut f: impl FnMut()) -> Duration {
    f(); // warm up
    let once = {
        let t = Instant::now();
        f();
        t.elapsed()
    };
    let per_sample =
        (Duration::from_millis(20).as_nanos() / once.as_nanos().max(1)).clamp(1, 10_000) as u32;
    let mut times: Vec<Duration> = (0..samples)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_sample {
                f();
            }
            t.elapsed() / per_sample
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn fmt(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 1000.0 {
        format!("{:.3} ms", us / 1000.0)
    } else {
        format!("{us:.1} µs")
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let samples = if quick { 11 } else { 41 };
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let (wasm, native_steps) = native::first_party(&runtime, &[("binpack-score", 1.0)]);
    // A typical request: most hosts pass the filters, so the scorer sees most of the fleet.
    let request = PlacementRequest {
        vcpus: 2,
        memory_mib: 4096,
        disk_mib: 20_480,
        arch: Arch::X86_64,
        features: Vec::new(),
        required_labels: Default::default(),
        anti_affinity_group: Some("web".into()),
        affinity_group: None,
    };

    println!(
        "placement decision: capacity-filter → label-filter → binpack-score (median of {samples})"
    );
    println!(
        "{:>7}  {:>10}  {:>10}  {:>6}  {:>11}  survivors",
        "hosts", "wasm", "native", "ratio", "build fleet"
    );
    for n in [100, 1_000, 10_000] {
        let hosts = sample::fleet(n, 42);
        let mut b = FleetBuilder::from_hosts(&hosts);
        let r = b.request(&request);
        let fleet = b.finish();
        let (nr, nf) = (native::request(&r), native::fleet(&fleet));

        let decision = wasm.decide(&r, &fleet).unwrap();
        let expected = native::decide(&native_steps, &nr, &nf);
        assert_eq!(decision.chosen, expected.chosen, "wasm and native agree");

        let t_wasm = median(samples, || {
            std::hint::black_box(wasm.decide(&r, &fleet).unwrap());
        });
        let t_native = median(samples, || {
            std::hint::black_box(native::decide(&native_steps, &nr, &nf));
        });
        let t_build = median(samples, || {
            let mut b = FleetBuilder::from_hosts(&hosts);
            std::hint::black_box(b.request(&request));
            std::hint::black_box(b.finish());
        });
        println!(
            "{n:>7}  {:>10}  {:>10}  {:>5.2}x  {:>10}  {}",
            fmt(t_wasm),
            fmt(t_native),
            t_wasm.as_secs_f64() / t_native.as_secs_f64(),
            fmt(t_build),
            decision.survivors.len()
        );
    }

    {
        println!(
            "\neach plugin alone over all 10,000 hosts (only the columns it reads are copied in):"
        );
        let hosts = sample::fleet(10_000, 42);
        let mut b = FleetBuilder::from_hosts(&hosts);
        let r = b.request(&request);
        let fleet = b.finish();
        let all: Vec<u32> = (0..10_000).collect();
        let (nr, nf) = (native::request(&r), native::fleet(&fleet));
        for (step, native_step) in wasm.steps().iter().zip(&native_steps) {
            let p = &step.plugin;
            let t_native = match native_step {
                native::NativeStep::Filter(f) => median(samples, || {
                    std::hint::black_box(f(&nr, &nf, &all));
                }),
                native::NativeStep::Score(s, _) => median(samples, || {
                    std::hint::black_box(s(&nr, &nf, &all));
                }),
            };
            let t = if p.info().filters {
                median(samples, || {
                    std::hint::black_box(p.filter(&r, &fleet, &all).unwrap());
                })
            } else {
                median(samples, || {
                    std::hint::black_box(p.score(&r, &fleet, &all).unwrap());
                })
            };
            println!(
                "  {:<16} wasm {:>10}  native {:>10}  {:>5.2}x",
                p.name(),
                fmt(t),
                fmt(t_native),
                t.as_secs_f64() / t_native.as_secs_f64()
            );
        }
    }

    // Fixed costs.
    let hosts = sample::fleet(1, 1);
    let mut b = FleetBuilder::from_hosts(&hosts);
    let r = b.request(&request);
    let one = b.finish();
    let scorer = &wasm.steps()[2].plugin;
    let t_call = median(samples, || {
        std::hint::black_box(scorer.score(&r, &one, &[0]).unwrap());
    });
    println!(
        "\none plugin call on a 1-host fleet (fresh store, instantiate, call): {}",
        fmt(t_call)
    );

    let p = PluginPackage::read(Path::new(artifacts::CAPACITY_FILTER.dir)).unwrap();
    let t_compile = median(if quick { 3 } else { 7 }, || {
        std::hint::black_box(runtime.load(p.manifest.clone(), &p.component).unwrap());
    });
    let cache = tempfile::tempdir().unwrap();
    let cached = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache.path().to_owned()),
        ..RuntimeConfig::default()
    })
    .unwrap();
    cached.load(p.manifest.clone(), &p.component).unwrap();
    let t_cached = median(samples, || {
        std::hint::black_box(cached.load(p.manifest.clone(), &p.component).unwrap());
    });
    println!(
        "load capacity-filter ({} KiB): compiled {} · from cache {} ({:.0}x faster); both include the eager describe call",
        p.component.len() / 1024,
        fmt(t_compile),
        fmt(t_cached),
        t_compile.as_secs_f64() / t_cached.as_secs_f64()
    );
}
