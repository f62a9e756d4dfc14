//! Generated fleets and requests: for demonstrations, benchmarks, load generators and
//! property tests. Deterministic for a seed, with the variety a real site has — mixed sizes and
//! architectures, racks, partly filled hosts, groups, a few hosts in maintenance.

use std::collections::BTreeMap;

use crate::{Arch, HostFeature, HostSnapshot, PlacementRequest};

/// A small, fast, seedable generator (SplitMix64); good enough for test data, not for secrets.
#[derive(Debug, Clone)]
pub struct SampleRng(u64);

impl SampleRng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const GROUPS: [&str; 6] = ["web", "db", "cache", "batch", "ci", "mail"];

/// `n` hosts: host `i` is named `host-<i>`, in one of `n / 40 + 1` racks.
pub fn fleet(n: usize, seed: u64) -> Vec<HostSnapshot> {
    let mut rng = SampleRng::new(seed);
    let racks = n / 40 + 1;
    (0..n)
        .map(|i| {
            let (vcpus, memory_gib) = *rng.pick(&[(16, 64), (32, 128), (64, 256), (96, 768)]);
            let memory_total_mib = memory_gib * 1024;
            let arch = if rng.chance(10) {
                Arch::Aarch64
            } else {
                Arch::X86_64
            };
            let fill = rng.below(101);
            let vcpus_allocated = (u64::from(vcpus) * 4 * fill / 100) as u32;
            let memory_allocated_mib = memory_total_mib * rng.below(fill + 1) / 100;
            let disk_total_mib = *rng.pick(&[500_000, 1_000_000, 4_000_000]);
            let mut features = vec![HostFeature::Kvm];
            if rng.chance(70) {
                features.push(HostFeature::Uefi);
            }
            if rng.chance(20) {
                features.push(HostFeature::NestedVirt);
            }
            if rng.chance(10) {
                features.push(HostFeature::Hugepages);
            }
            let rack = rng.below(racks as u64);
            let mut labels = BTreeMap::from([
                ("rack".to_owned(), format!("r{rack}")),
                ("power-domain".to_owned(), format!("p{}", rack / 4)),
                ("zone".to_owned(), format!("z{}", rack % 3)),
                (
                    "tier".to_owned(),
                    rng.pick(&["gold", "silver", "bronze"]).to_string(),
                ),
            ]);
            if rng.chance(3) {
                labels.insert("maintenance".to_owned(), "true".to_owned());
            }
            let groups = GROUPS
                .iter()
                .filter(|_| rng.chance(8))
                .map(|g| g.to_string())
                .collect::<Vec<_>>();
            HostSnapshot {
                id: format!("host-{i}"),
                arch,
                vcpus_total: vcpus,
                vcpus_allocated,
                memory_total_mib,
                memory_allocated_mib,
                memory_available_mib: Some(
                    memory_total_mib.saturating_sub(memory_allocated_mib) * rng.below(101) / 100,
                ),
                disk_total_mib,
                disk_allocated_mib: disk_total_mib * rng.below(fill + 1) / 100,
                load_milli: (rng.below(u64::from(vcpus) * 1000)) as u32,
                vms: (fill / 5) as u32,
                features,
                labels,
                groups,
            }
        })
        .collect()
}

/// A request of ordinary size: a few vCPUs, some GiB, maybe a tier, maybe an anti-affinity group.
pub fn request(seed: u64) -> PlacementRequest {
    let mut rng = SampleRng::new(seed ^ 0x5EED);
    let mut required_labels = BTreeMap::new();
    if rng.chance(50) {
        required_labels.insert(
            "tier".to_owned(),
            rng.pick(&["gold", "silver", "bronze"]).to_string(),
        );
    }
    if rng.chance(10) {
        required_labels.insert("zone".to_owned(), format!("z{}", rng.below(3)));
    }
    let mut features = Vec::new();
    if rng.chance(30) {
        features.push(HostFeature::Uefi);
    }
    if rng.chance(5) {
        features.push(HostFeature::NestedVirt);
    }
    PlacementRequest {
        vcpus: *rng.pick(&[1, 2, 4, 8, 16]),
        memory_mib: *rng.pick(&[512, 2048, 4096, 8192, 32768]),
        disk_mib: *rng.pick(&[10_240, 40_960, 102_400]),
        arch: if rng.chance(10) {
            Arch::Aarch64
        } else {
            Arch::X86_64
        },
        features,
        required_labels,
        anti_affinity_group: rng.chance(40).then(|| rng.pick(&GROUPS).to_string()),
        affinity_group: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_always_gives_the_same_fleet_and_another_seed_another() {
        assert_eq!(fleet(200, 7), fleet(200, 7));
        assert_ne!(fleet(200, 7), fleet(200, 8));
        assert_eq!(request(3), request(3));
    }

    #[test]
    fn sample_hosts_are_consistent() {
        for h in fleet(500, 1) {
            assert!(h.memory_allocated_mib <= h.memory_total_mib, "{h:?}");
            assert!(h.memory_available_mib() <= h.memory_total_mib, "{h:?}");
            assert!(h.disk_allocated_mib <= h.disk_total_mib, "{h:?}");
            assert!(h.vcpus_allocated <= h.vcpus_total * 4, "{h:?}");
        }
    }
}
