//! One placement decision through the full first-party pipeline — capacity filter, label filter,
//! bin-packing score (weight 1), spreading score (weight 0.5) — over 100, 1,000 and 10,000 hosts,
//! through the WebAssembly plugins and through the same plugin code compiled natively, on the same
//! data in the same run. Prints medians and the wasm/native ratio.
//!
//! Also measured: where a 10,000-host decision's time goes (each plugin call, host side
//! included), each plugin alone over the whole fleet, the fixed cost of one plugin call (fresh
//! store + instantiate + call), loading a plugin compiled vs from the on-disk cache, and building
//! the columnar fleet.
//!
//! Run: `cargo bench -p slipway-runtime --bench placement` (add `-- --quick` for fewer samples).
//! `-- --profile SECONDS [HOSTS]` only runs wasm decisions (over 10,000 hosts unless given) for
//! that long, for `perf record`.

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
fn median(samples: usize, f: impl FnMut()) -> Duration {
    let [t] = medians(samples, [Box::new(f) as Box<dyn FnMut()>]);
    t
}

/// The median wall time of each of `fs`, sampled in turns (one sample of each, then the next
/// round) so that a busy neighbour slows all of them alike and their ratio stays meaningful.
fn medians<const N: usize>(samples: usize, mut fs: [Box<dyn FnMut() + '_>; N]) -> [Duration; N] {
    // Warm up, then size each sample to about 20 ms.
    let per_sample = fs.each_mut().map(|f| {
        f();
        let t = Instant::now();
        f();
        (Duration::from_millis(20).as_nanos() / t.elapsed().as_nanos().max(1)).clamp(1, 10_000)
            as u32
    });
    let mut times: [Vec<Duration>; N] = std::array::from_fn(|_| Vec::with_capacity(samples));
    for _ in 0..samples {
        for ((f, n), times) in fs.iter_mut().zip(per_sample).zip(&mut times) {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            times.push(t.elapsed() / n);
        }
    }
    times.map(|mut t| {
        t.sort();
        t[t.len() / 2]
    })
}

fn fmt(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 1000.0 {
        format!("{:.3} ms", us / 1000.0)
    } else {
        format!("{us:.1} µs")
    }
}

/// The first-party pipeline the headline measures: both filters, then both scorers.
const SCORERS: &[(&str, f64)] = &[("binpack-score", 1.0), ("spread-score", 0.5)];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let samples = if quick { 11 } else { 41 };
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let (wasm, native_steps) = native::first_party(&runtime, SCORERS);
    // A typical request: most hosts pass the filters, so the scorers see most of the fleet.
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

    if let Some(i) = args.iter().position(|a| a == "--profile") {
        let seconds: f64 = args.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or(10.0);
        let n: usize = args
            .get(i + 2)
            .and_then(|s| s.parse().ok())
            .unwrap_or(10_000);
        let hosts = sample::fleet(n, 42);
        let mut b = FleetBuilder::from_hosts(&hosts);
        let r = b.request(&request);
        let fleet = b.finish();
        let until = Instant::now() + Duration::from_secs_f64(seconds);
        let mut decisions = 0u64;
        while Instant::now() < until {
            std::hint::black_box(wasm.decide(&r, &fleet).unwrap());
            decisions += 1;
        }
        println!(
            "{decisions} decisions over {n} hosts in {seconds} s: {}",
            fmt(Duration::from_secs_f64(seconds) / decisions as u32)
        );
        return;
    }

    let names: Vec<&str> = wasm.steps().iter().map(|s| s.plugin.name()).collect();
    println!(
        "placement decision: {} (weights {}; median of {samples})",
        names.join(" → "),
        SCORERS
            .iter()
            .map(|(n, w)| format!("{n} {w}"))
            .collect::<Vec<_>>()
            .join(", ")
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
        assert_eq!(decision.totals, expected.totals, "wasm and native agree");

        let [t_wasm, t_native] = medians(
            samples,
            [
                Box::new(|| {
                    std::hint::black_box(wasm.decide(&r, &fleet).unwrap());
                }),
                Box::new(|| {
                    std::hint::black_box(native::decide(&native_steps, &nr, &nf));
                }),
            ],
        );
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

    let hosts = sample::fleet(10_000, 42);
    let mut b = FleetBuilder::from_hosts(&hosts);
    let r = b.request(&request);
    let fleet = b.finish();
    let (nr, nf) = (native::request(&r), native::fleet(&fleet));
    {
        // Each call of a 10,000-host decision as the pipeline times it (host side included),
        // medians over as many decisions as samples.
        let mut per_step: Vec<Vec<Duration>> = vec![Vec::new(); wasm.steps().len()];
        for _ in 0..samples * 10 {
            let d = wasm.decide(&r, &fleet).unwrap();
            for t in &d.timings {
                per_step[t.step].push(t.elapsed);
            }
        }
        println!("\nthe calls of one 10,000-host decision (wasm, host side included):");
        for (step, times) in wasm.steps().iter().zip(&mut per_step) {
            times.sort();
            if let Some(t) = times.get(times.len() / 2) {
                println!("  {:<16} {:>10}", step.plugin.name(), fmt(*t));
            }
        }
    }

    {
        println!(
            "\neach plugin alone over all 10,000 hosts (only the columns it reads are copied in):"
        );
        let all: Vec<u32> = (0..10_000).collect();
        for (step, native_step) in wasm.steps().iter().zip(&native_steps) {
            let p = &step.plugin;
            let [t, t_native] = medians(
                samples,
                [
                    Box::new(|| {
                        if p.info().filters {
                            std::hint::black_box(p.filter(&r, &fleet, &all).unwrap());
                        } else {
                            std::hint::black_box(p.score(&r, &fleet, &all).unwrap());
                        }
                    }),
                    Box::new(|| match native_step {
                        native::NativeStep::Filter(f) => {
                            std::hint::black_box(f(&nr, &nf, &all));
                        }
                        native::NativeStep::Score(s, _) => {
                            std::hint::black_box(s(&nr, &nf, &all));
                        }
                    }),
                ],
            );
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
