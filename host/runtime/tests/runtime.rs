//! The plugin runtime against real compiled plugins: first-party ones, hostile ones, and the
//! same heuristics compiled natively. All integration tests of the crate live in this binary.

mod support;

use std::path::Path;
use std::sync::OnceLock;

use slipway_core::sample;
use slipway_runtime::placement::{FleetBuilder, Pipeline, PlacementPlugin};
use slipway_runtime::{Manifest, Plugin, PluginError, PluginPackage, Runtime, RuntimeConfig};
use slipway_test_artifacts as artifacts;
use support::native;

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("info")
            .try_init();
        Runtime::new(RuntimeConfig::default()).expect("runtime")
    })
}

fn package(guest: artifacts::Guest) -> PluginPackage {
    PluginPackage::read(Path::new(guest.dir)).expect("plugin package")
}

fn load(guest: artifacts::Guest) -> Plugin {
    let p = package(guest);
    runtime()
        .load(p.manifest, &p.component)
        .expect("plugin loads")
}

fn placement(guest: artifacts::Guest) -> PlacementPlugin {
    load(guest).into_placement().expect("a placement plugin")
}

/// The hostile plugin in one of its modes.
fn hostile(mode: &str) -> PlacementPlugin {
    let mut p = package(artifacts::TEST_PLUGIN_HOSTILE);
    p.manifest.config.insert("mode".into(), mode.into());
    runtime()
        .load(p.manifest, &p.component)
        .expect("hostile plugin loads")
        .into_placement()
        .unwrap()
}

/// A small fleet and request for calls whose answer does not matter.
fn small_decision() -> (
    slipway_runtime::placement::PlacementRequest,
    slipway_runtime::placement::Fleet,
) {
    let hosts = sample::fleet(3, 1);
    let mut b = FleetBuilder::from_hosts(&hosts);
    let r = b.request(&sample::request(1));
    (r, b.finish())
}

fn all_hosts(fleet: &slipway_runtime::placement::Fleet) -> Vec<u32> {
    (0..fleet.len() as u32).collect()
}

mod loading {
    use super::*;

    #[test]
    fn first_party_plugins_load_and_describe_themselves() {
        let capacity = placement(artifacts::CAPACITY_FILTER);
        assert!(capacity.info().filters && !capacity.info().scores);
        assert_eq!(capacity.info().reasons[&4].message, "insufficient memory");
        let labels = placement(artifacts::LABEL_FILTER);
        assert!(labels.info().filters);
        for scorer in [artifacts::BINPACK_SCORE, artifacts::SPREAD_SCORE] {
            let p = placement(scorer);
            assert!(p.info().scores && !p.info().filters, "{}", p.name());
        }
    }

    #[test]
    fn a_component_built_for_a_future_contract_is_refused_naming_both_versions() {
        let p = package(artifacts::TEST_PLUGIN_FUTURE_CONTRACT);
        let err = runtime().load(p.manifest, &p.component).err().unwrap();
        assert!(matches!(err, PluginError::ContractMismatch { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("future-contract"), "{text}");
        assert!(text.contains("slipway:plugin@0.2.0"), "{text}");
        assert!(text.contains("this server supports 0.1"), "{text}");
    }

    #[test]
    fn a_manifest_declaring_an_unsupported_contract_is_refused() {
        let mut p = package(artifacts::CAPACITY_FILTER);
        p.manifest.contract = "1.0.0".into();
        let err = runtime().load(p.manifest, &p.component).err().unwrap();
        assert!(
            err.to_string().contains("built for slipway:plugin@1.0.0"),
            "{err}"
        );
    }

    #[test]
    fn a_manifest_of_the_wrong_kind_is_refused() {
        let mut p = package(artifacts::CAPACITY_FILTER);
        p.manifest.kind = slipway_runtime::PluginKind::Validation;
        let err = runtime().load(p.manifest, &p.component).err().unwrap();
        let text = err.to_string();
        assert!(
            matches!(err, PluginError::ContractMismatch { .. }),
            "{text}"
        );
        assert!(
            text.contains("does not export `slipway:plugin/validation`"),
            "{text}"
        );
    }

    #[test]
    fn bytes_that_are_not_a_component_are_refused() {
        let p = package(artifacts::CAPACITY_FILTER);
        let err = runtime()
            .load(p.manifest.clone(), b"\0asm garbage")
            .err()
            .unwrap();
        assert!(matches!(err, PluginError::InvalidComponent { .. }), "{err}");
        let truncated = &p.component[..p.component.len() / 2];
        let err = runtime().load(p.manifest, truncated).err().unwrap();
        assert!(matches!(err, PluginError::InvalidComponent { .. }), "{err}");
    }

    #[test]
    fn a_bad_configuration_refuses_the_plugin_at_load_naming_the_field() {
        let mut p = package(artifacts::CAPACITY_FILTER);
        p.manifest
            .config
            .insert("cpu-allocation-ratio".into(), "lots".into());
        let err = runtime()
            .load(p.manifest.clone(), &p.component)
            .err()
            .unwrap();
        assert!(matches!(err, PluginError::Failed { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("invalid plugin configuration"), "{text}");
        assert!(text.contains("cpu-allocation-ratio"), "{text}");

        // A value of the right type that the plugin itself refuses is caught at load too.
        p.manifest
            .config
            .insert("cpu-allocation-ratio".into(), (-1.0).into());
        let err = runtime().load(p.manifest, &p.component).err().unwrap();
        assert!(
            err.to_string().contains("must be a positive number"),
            "{err}"
        );
    }

    #[test]
    fn compiled_components_are_cached_and_a_corrupt_entry_is_recompiled() {
        let dir = tempfile::tempdir().unwrap();
        let config = RuntimeConfig {
            cache_dir: Some(dir.path().to_owned()),
            ..RuntimeConfig::default()
        };
        let p = package(artifacts::BINPACK_SCORE);
        Runtime::new(config.clone())
            .unwrap()
            .load(p.manifest.clone(), &p.component)
            .unwrap();
        let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(entries.len(), 1, "one cache entry, no temporary files left");
        let entry = entries[0].path();
        assert!(entry.to_string_lossy().ends_with(".cwasm"));

        // A second runtime (a restart) loads from the cache and works.
        let plugin = Runtime::new(config.clone())
            .unwrap()
            .load(p.manifest.clone(), &p.component)
            .unwrap()
            .into_placement()
            .unwrap();
        let (r, f) = small_decision();
        assert_eq!(plugin.score(&r, &f, &all_hosts(&f)).unwrap().len(), 3);

        // A corrupted entry is discarded, not trusted.
        std::fs::write(&entry, b"not a compiled component").unwrap();
        Runtime::new(config)
            .unwrap()
            .load(p.manifest, &p.component)
            .unwrap();
        assert!(
            std::fs::read(&entry).unwrap().len() > 1000,
            "entry rewritten"
        );
    }

    #[test]
    fn a_cache_directory_others_may_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = Runtime::new(RuntimeConfig {
            cache_dir: Some(dir.path().to_owned()),
            ..RuntimeConfig::default()
        })
        .err()
        .unwrap();
        assert!(
            err.to_string().contains("group or others may write it"),
            "{err:#}"
        );

        // A new cache directory is created private.
        let fresh = dir.path().join("new/cache");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        Runtime::new(RuntimeConfig {
            cache_dir: Some(fresh.clone()),
            ..RuntimeConfig::default()
        })
        .unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn the_committed_manifest_schema_matches_the_code() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugin-manifest.schema.json");
        let generated = Manifest::json_schema();
        if std::env::var_os("SLIPWAY_BLESS").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{} is out of date; run the tests with SLIPWAY_BLESS=1 to regenerate it",
            path.display()
        );
    }

    #[test]
    fn every_first_party_manifest_is_valid() {
        for guest in artifacts::ALL {
            Manifest::from_path(&Path::new(guest.dir).join("plugin.toml"))
                .unwrap_or_else(|e| panic!("{}: {e}", guest.package));
        }
    }
}

mod containment {
    use super::*;

    /// After every failure the runtime, and the same plugin, serve the next call normally.
    fn next_call_works(plugin: &PlacementPlugin) {
        let (r, f) = small_decision();
        let scores = plugin
            .score(&r, &f, &all_hosts(&f))
            .expect("the next call works");
        assert_eq!(scores.len(), 3);
        let capacity = placement(artifacts::CAPACITY_FILTER);
        capacity
            .filter(&r, &f, &all_hosts(&f))
            .expect("other plugins work");
    }

    fn failing_filter(mode: &str) -> (PlacementPlugin, PluginError) {
        let plugin = hostile(mode);
        let (r, f) = small_decision();
        let err = plugin.filter(&r, &f, &all_hosts(&f)).unwrap_err();
        assert_eq!(err.plugin(), "hostile", "{err}");
        assert!(err.to_string().contains("plugin hostile"), "{err}");
        (plugin, err)
    }

    #[test]
    fn an_infinite_loop_hits_the_deadline() {
        let started = std::time::Instant::now();
        let (plugin, err) = failing_filter("loop");
        assert!(matches!(err, PluginError::Deadline { .. }), "{err}");
        assert!(err.to_string().contains("deadline of 100 ms"), "{err}");
        assert!(started.elapsed().as_secs() < 10, "interrupted promptly");
        next_call_works(&plugin);
    }

    #[test]
    fn a_one_gib_allocation_hits_the_memory_limit() {
        let (plugin, err) = failing_filter("alloc");
        assert!(matches!(err, PluginError::MemoryLimit { .. }), "{err}");
        assert!(err.to_string().contains("memory limit of 64 MiB"), "{err}");
        next_call_works(&plugin);
    }

    #[test]
    fn a_panic_is_a_trap_carrying_the_panic_message() {
        let (plugin, err) = failing_filter("panic");
        assert!(matches!(err, PluginError::Trap { .. }), "{err}");
        assert!(
            err.to_string().contains("hostile plugin panics on purpose"),
            "{err}"
        );
        next_call_works(&plugin);
    }

    #[test]
    fn the_wrong_number_of_scores_is_an_invalid_result() {
        let plugin = hostile("miscount");
        let (r, f) = small_decision();
        let err = plugin.score(&r, &f, &all_hosts(&f)).unwrap_err();
        assert!(matches!(err, PluginError::InvalidResult { .. }), "{err}");
        assert!(
            err.to_string().contains("4 scores for 3 candidates"),
            "{err}"
        );
        next_call_works(&hostile("ok"));
    }

    #[test]
    fn a_nan_score_is_an_invalid_result() {
        let plugin = hostile("nan");
        let (r, f) = small_decision();
        let err = plugin.score(&r, &f, &all_hosts(&f)).unwrap_err();
        assert!(err.to_string().contains("not a finite number"), "{err}");
    }

    #[test]
    fn rejecting_a_host_that_is_no_candidate_is_an_invalid_result() {
        let (_, err) = failing_filter("stranger");
        assert!(
            err.to_string().contains("which is not a candidate"),
            "{err}"
        );
    }

    #[test]
    fn a_result_too_large_to_take_back_is_refused_before_the_host_allocates_it() {
        let (plugin, err) = failing_filter("flood-result");
        assert!(matches!(err, PluginError::InvalidResult { .. }), "{err}");
        assert!(err.to_string().contains("fuel"), "{err}");
        next_call_works(&plugin);
    }

    #[test]
    fn rejecting_a_host_twice_is_an_invalid_result() {
        let (_, err) = failing_filter("twice");
        assert!(err.to_string().contains("rejected twice"), "{err}");
    }

    #[test]
    fn an_undeclared_reason_is_an_invalid_result() {
        let (_, err) = failing_filter("undeclared");
        assert!(err.to_string().contains("reason code 77"), "{err}");
    }

    #[test]
    fn a_plugin_reported_failure_carries_its_message() {
        let (_, err) = failing_filter("fail");
        assert!(matches!(err, PluginError::Failed { .. }), "{err}");
        assert!(
            err.to_string().contains("the hostile plugin refuses"),
            "{err}"
        );
    }

    /// A writer that keeps what the log printed, for one test.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn plugin_output_and_log_lines_reach_the_log_labelled_with_the_plugin() {
        let plugin = hostile("chatty");
        let (r, f) = small_decision();
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            plugin.filter(&r, &f, &all_hosts(&f)).unwrap();
        });
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        for line in [
            "hello on stdout plugin=hostile stream=\"stdout\"",
            "hello on stderr plugin=hostile stream=\"stderr\"",
            "hello through the log import plugin=hostile",
            // "hello on stdout\n" and 2,000 lines of 100 bytes, less the 64 KiB kept.
            "plugin wrote 134480 more bytes than the 65536 kept per call; dropped plugin=hostile stream=\"stdout\"",
        ] {
            assert!(log.contains(line), "{line:?} not in:\n{log}");
        }
        assert!(!log.contains("a debug line"), "{log}");
    }

    #[test]
    fn a_log_flood_is_bounded_and_the_call_completes() {
        let mut p = package(artifacts::TEST_PLUGIN_HOSTILE);
        p.manifest.config.insert("mode".into(), "log-flood".into());
        p.manifest.limits.deadline_ms = Some(20_000);
        let plugin = runtime()
            .load(p.manifest, &p.component)
            .unwrap()
            .into_placement()
            .unwrap();
        let (r, f) = small_decision();
        assert_eq!(plugin.filter(&r, &f, &all_hosts(&f)).unwrap(), vec![]);
    }

    #[test]
    fn a_placement_plugin_sees_no_files_environment_or_clock() {
        let (_, err) = failing_filter("snoop");
        let text = err.to_string();
        assert!(text.contains("env=0 files=none time=0"), "{text}");
    }

    #[test]
    fn concurrent_calls_do_not_interfere() {
        let plugin = placement(artifacts::CAPACITY_FILTER);
        let hosts = sample::fleet(200, 7);
        let mut b = FleetBuilder::from_hosts(&hosts);
        let r = b.request(&sample::request(7));
        let f = b.finish();
        let expected = plugin.filter(&r, &f, &all_hosts(&f)).unwrap();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..20 {
                        assert_eq!(plugin.filter(&r, &f, &all_hosts(&f)).unwrap(), expected);
                    }
                });
            }
        });
    }
}

mod sandbox {
    use super::*;

    #[test]
    fn an_identity_plugin_cannot_leave_its_tree() {
        let root = tempfile::tempdir().unwrap();
        let tree = root.path().join("tree");
        let outside = root.path().join("outside");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::create_dir_all(tree.join("tmp")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(tree.join("etc/os-release"), "ID=testos").unwrap();
        std::fs::write(outside.join("secret.txt"), "the secret").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("escape-abs")).unwrap();
        std::os::unix::fs::symlink("../outside", tree.join("escape-rel")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret.txt"), tree.join("secret-link")).unwrap();

        let mut p = package(artifacts::TEST_PLUGIN_ESCAPER);
        p.manifest.config.insert(
            "outside".into(),
            outside.to_string_lossy().into_owned().into(),
        );
        let plugin = runtime()
            .load(p.manifest, &p.component)
            .unwrap()
            .into_identity()
            .unwrap();

        let os = plugin
            .inspect(&tree)
            .unwrap()
            .expect("the tree is readable");
        assert_eq!(os.distro, "ID=testos");
        let attempts = plugin.strip(&tree, &os).unwrap();
        assert_eq!(attempts.len(), 10);
        for a in &attempts {
            if a.name == "inside-write" {
                assert_eq!(a.detail, "ESCAPED: wrote inside", "writing inside works");
            } else {
                assert!(a.detail.starts_with("blocked"), "{}: {}", a.name, a.detail);
            }
        }
        assert_eq!(
            std::fs::read_to_string(tree.join("tmp/inside.txt")).unwrap(),
            "ok"
        );
        let outside_now: Vec<_> = std::fs::read_dir(&outside).unwrap().flatten().collect();
        assert_eq!(outside_now.len(), 1, "nothing was written outside the tree");
    }

    fn escaper(config: serde_json::Value) -> Result<Plugin, PluginError> {
        let mut p = package(artifacts::TEST_PLUGIN_ESCAPER);
        p.manifest.config = config.as_object().unwrap().clone();
        runtime().load(p.manifest, &p.component)
    }

    #[test]
    fn an_identity_plugin_given_a_missing_tree_fails_setup() {
        let plugin = escaper(serde_json::json!({ "outside": "/nowhere" }))
            .unwrap()
            .into_identity()
            .unwrap();
        let err = plugin.inspect(Path::new("/nonexistent/tree")).unwrap_err();
        assert!(matches!(err, PluginError::Setup { .. }), "{err}");
    }

    #[test]
    fn an_identity_plugin_refusing_its_configuration_fails_at_load() {
        let err = escaper(serde_json::json!({})).err().unwrap();
        assert!(matches!(err, PluginError::Failed { .. }), "{err}");
        assert!(err.to_string().contains("missing field `outside`"), "{err}");
        let err = escaper(serde_json::json!({ "outside": "/x", "extra": 1 }))
            .err()
            .unwrap();
        assert!(err.to_string().contains("`extra`"), "{err}");
    }
}

mod equivalence {
    use super::*;

    fn pipelines() -> (Pipeline, Vec<native::NativeStep>) {
        native::first_party(runtime(), &[("binpack-score", 2.0), ("spread-score", 0.5)])
    }

    #[test]
    fn plugins_decide_exactly_as_the_same_heuristics_in_native_rust() {
        let (wasm, native_steps) = pipelines();
        let mut placed = 0;
        for seed in 0..40 {
            let hosts = sample::fleet(50 + (seed as usize * 37) % 700, seed);
            let mut b = FleetBuilder::from_hosts(&hosts);
            let request = b.request(&sample::request(seed));
            let fleet = b.finish();
            let decision = wasm.decide(&request, &fleet).unwrap();
            let expected = native::decide(
                &native_steps,
                &native::request(&request),
                &native::fleet(&fleet),
            );
            let rejections: Vec<_> = decision
                .rejections
                .iter()
                .map(|r| (r.host, r.reason, r.detail))
                .collect();
            assert_eq!(rejections, expected.rejections, "seed {seed}");
            assert_eq!(decision.survivors, expected.survivors, "seed {seed}");
            assert_eq!(
                decision.totals, expected.totals,
                "seed {seed}: bit-identical scores"
            );
            assert_eq!(decision.chosen, expected.chosen, "seed {seed}");
            placed += usize::from(decision.chosen.is_some());
        }
        // The generated cases must exercise both outcomes, or the comparison proves little.
        assert!((5..40).contains(&placed), "{placed} of 40 requests placed");
    }

    #[test]
    fn a_decision_that_places_nothing_counts_the_reasons() {
        let (wasm, _) = pipelines();
        let hosts = sample::fleet(12, 3);
        let mut b = FleetBuilder::from_hosts(&hosts);
        let mut request = sample::request(3);
        request.memory_mib = 10 << 20;
        let request = b.request(&request);
        let decision = wasm.decide(&request, &b.finish()).unwrap();
        assert_eq!(decision.chosen, None);
        let summary = decision.summary();
        assert!(summary.starts_with("0/12 hosts fit: "), "{summary}");
        assert!(
            summary.contains("insufficient memory (capacity-filter)"),
            "{summary}"
        );
    }
}

/// Each first-party plugin's behaviour, through its WebAssembly build, on small hand-made fleets.
mod first_party {
    use std::collections::BTreeMap;

    use slipway_core::{Arch, HostFeature, HostSnapshot, PlacementRequest};

    use super::*;

    fn host(id: &str) -> HostSnapshot {
        HostSnapshot {
            id: id.into(),
            arch: Arch::X86_64,
            vcpus_total: 8,
            vcpus_allocated: 0,
            memory_total_mib: 16_384,
            memory_allocated_mib: 0,
            memory_available_mib: None,
            disk_total_mib: 100_000,
            disk_allocated_mib: 0,
            load_milli: 0,
            vms: 0,
            features: vec![HostFeature::Kvm],
            labels: BTreeMap::new(),
            groups: vec![],
        }
    }

    fn request() -> PlacementRequest {
        PlacementRequest {
            vcpus: 2,
            memory_mib: 4096,
            disk_mib: 10_000,
            arch: Arch::X86_64,
            features: vec![],
            required_labels: BTreeMap::new(),
            anti_affinity_group: None,
            affinity_group: None,
        }
    }

    /// (host id, reason message, detail) of every rejection, sorted; a symbol detail is given
    /// as the symbol itself.
    fn rejections(
        guest: artifacts::Guest,
        hosts: &[HostSnapshot],
        r: &PlacementRequest,
    ) -> Vec<(String, String, String)> {
        let plugin = placement(guest);
        let mut b = FleetBuilder::from_hosts(hosts);
        let wire = b.request(r);
        let fleet = b.finish();
        let mut out: Vec<_> = plugin
            .filter(&wire, &fleet, &all_hosts(&fleet))
            .unwrap()
            .into_iter()
            .map(|x| {
                let message = plugin.info().reasons[&x.reason].message.clone();
                let detail = match plugin.info().reasons[&x.reason].detail {
                    slipway_runtime::placement::DetailKind::Symbol => {
                        fleet.symbol(x.detail as u32).to_owned()
                    }
                    _ => x.detail.to_string(),
                };
                (hosts[x.host as usize].id.clone(), message, detail)
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn capacity_filter_names_the_first_shortfall_and_its_size() {
        let arm = HostSnapshot {
            arch: Arch::Aarch64,
            ..host("arm")
        };
        let busy = HostSnapshot {
            vcpus_allocated: 31,
            ..host("busy")
        };
        let full = HostSnapshot {
            memory_allocated_mib: 15_000,
            ..host("full")
        };
        let tight = HostSnapshot {
            memory_available_mib: Some(1000),
            ..host("tight")
        };
        let small_disk = HostSnapshot {
            disk_total_mib: 4000,
            ..host("small-disk")
        };
        let fine = host("fine");
        let mut r = request();
        r.features = vec![HostFeature::Kvm];
        let got = rejections(
            artifacts::CAPACITY_FILTER,
            &[arm, busy, full, tight, small_disk, fine],
            &r,
        );
        assert_eq!(
            got,
            [
                ("arm".into(), "wrong architecture".into(), "0".into()),
                // 8 threads × cpu-allocation-ratio 4 = 32 vCPUs, 31 claimed: 1 free, 1 short.
                ("busy".into(), "insufficient vCPUs".into(), "1".into()),
                // 16,384 - 15,000 = 1,384 MiB free of the 4,096 asked.
                ("full".into(), "insufficient memory".into(), "2712".into()),
                (
                    "small-disk".into(),
                    "insufficient disk".into(),
                    "6000".into()
                ),
                (
                    "tight".into(),
                    "insufficient free memory".into(),
                    "3096".into()
                ),
            ]
        );
    }

    #[test]
    fn capacity_filter_reports_missing_features_as_bits() {
        let mut r = request();
        r.features = vec![HostFeature::Kvm, HostFeature::Uefi, HostFeature::NestedVirt];
        let got = rejections(artifacts::CAPACITY_FILTER, &[host("plain")], &r);
        // uefi is bit 1, nested-virt bit 2.
        let expected = [("plain".into(), "missing host features".into(), "6".into())];
        assert_eq!(got, expected);
    }

    #[test]
    fn label_filter_requires_forbids_and_keeps_groups_apart() {
        let gold = HostSnapshot {
            labels: BTreeMap::from([("tier".into(), "gold".into())]),
            ..host("gold")
        };
        let silver = HostSnapshot {
            labels: BTreeMap::from([("tier".into(), "silver".into())]),
            ..host("silver")
        };
        let drained = HostSnapshot {
            labels: BTreeMap::from([
                ("tier".into(), "gold".into()),
                ("maintenance".into(), "true".into()),
            ]),
            ..host("drained")
        };
        let crowded = HostSnapshot {
            id: "crowded".into(),
            groups: vec!["web".into()],
            ..gold.clone()
        };
        let mut r = request();
        r.required_labels.insert("tier".into(), "gold".into());
        r.anti_affinity_group = Some("web".into());
        let got = rejections(
            artifacts::LABEL_FILTER,
            &[gold, silver, drained, crowded],
            &r,
        );
        let expected = [
            ("crowded", "anti-affinity conflict", "web"),
            ("drained", "forbidden label", "maintenance=true"),
            ("silver", "missing label", "tier=gold"),
        ]
        .map(|(h, m, d)| (h.to_owned(), m.to_owned(), d.to_owned()));
        assert_eq!(got, expected);
    }

    #[test]
    fn label_filter_rejects_all_when_no_host_has_a_site_required_label() {
        let mut p = package(artifacts::LABEL_FILTER);
        p.manifest
            .config
            .insert("required".into(), serde_json::json!(["certified=yes"]));
        let plugin = runtime()
            .load(p.manifest, &p.component)
            .unwrap()
            .into_placement()
            .unwrap();
        let hosts = [host("a"), host("b")];
        let mut b = FleetBuilder::from_hosts(&hosts);
        let wire = b.request(&request());
        let fleet = b.finish();
        let got = plugin.filter(&wire, &fleet, &all_hosts(&fleet)).unwrap();
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|r| r.reason == 4), "{got:?}");
    }

    fn ranking(guest: artifacts::Guest, hosts: &[HostSnapshot]) -> Vec<String> {
        let plugin = placement(guest);
        let mut b = FleetBuilder::from_hosts(hosts);
        let wire = b.request(&request());
        let fleet = b.finish();
        let scores = plugin.score(&wire, &fleet, &all_hosts(&fleet)).unwrap();
        let mut order: Vec<_> = hosts.iter().zip(scores).collect();
        order.sort_by(|a, b| b.1.total_cmp(&a.1));
        order.into_iter().map(|(h, _)| h.id.clone()).collect()
    }

    fn fullness() -> Vec<HostSnapshot> {
        vec![
            HostSnapshot {
                memory_allocated_mib: 8192,
                vcpus_allocated: 4,
                ..host("half")
            },
            HostSnapshot {
                load_milli: 6000,
                ..host("empty-but-loaded")
            },
            HostSnapshot {
                memory_allocated_mib: 12_288,
                vcpus_allocated: 6,
                ..host("fuller")
            },
        ]
    }

    #[test]
    fn binpack_prefers_the_fullest_host() {
        assert_eq!(
            ranking(artifacts::BINPACK_SCORE, &fullness()),
            ["fuller", "half", "empty-but-loaded"]
        );
    }

    #[test]
    fn spread_prefers_the_emptiest_least_loaded_host() {
        let mut hosts = fullness();
        hosts.push(host("empty"));
        assert_eq!(
            ranking(artifacts::SPREAD_SCORE, &hosts),
            ["empty", "empty-but-loaded", "half", "fuller"]
        );
    }
}
