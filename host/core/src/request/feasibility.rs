//! Feasibility: whether any host could ever take the request (its capacity), and whether one can
//! now (its free room), dimension by dimension, so that the answer can say which one is short
//! and suggest the largest request that fits now ("memory 512 GiB exceeds every host; the
//! largest free is 96 GiB on 3 hosts").

use std::collections::BTreeMap;

use serde_json::Value;

use super::size::{format_mib, say_mib};
use super::{Finding, nearest};
use crate::Arch;
use crate::agent::Resources;

const SOURCE: &str = "feasibility";

/// A host as feasibility sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostRoom {
    pub id: String,
    pub name: String,
    /// Ready and active: placements may go there now.
    pub ready: bool,
    pub arch: Arch,
    pub labels: BTreeMap<String, String>,
    /// What placement may claim in all.
    pub capacity: Resources,
    /// What is left of it now.
    pub free: Resources,
    /// Anti-affinity groups with a VM on the host.
    pub groups: Vec<String>,
}

/// What the VM asks of a host, and where it may go.
#[derive(Debug, Clone, PartialEq)]
pub struct Need<'a> {
    pub resources: Resources,
    pub count: u32,
    pub arch: Arch,
    pub labels: &'a BTreeMap<String, String>,
    pub anti_affinity_group: Option<&'a str>,
    /// A host pinned by name or id.
    pub host: Option<&'a str>,
    /// The request's field for the boot disk's size, when the disk need is that disk alone.
    pub disk_field: Option<&'a str>,
}

/// The findings; none when some host can take `count` VMs now.
pub fn feasibility(need: &Need<'_>, hosts: &[HostRoom]) -> Vec<Finding> {
    let mut findings = Vec::new();
    if hosts.is_empty() {
        findings.push(Finding::error(
            SOURCE,
            "no-hosts",
            "",
            "no host has joined this server: run slipway-agent on a host with a join token".into(),
        ));
        return findings;
    }
    let mut pool: Vec<&HostRoom> = hosts.iter().collect();
    if let Some(pin) = need.host {
        match hosts.iter().find(|h| h.name == pin || h.id == pin) {
            Some(h) => pool = vec![h],
            None => {
                findings.push(
                    Finding::error(
                        SOURCE,
                        "unknown-host",
                        "placement.host",
                        format!("no host is named {pin}"),
                    )
                    .suggest(
                        nearest(pin, hosts.iter().map(|h| h.name.as_str()))
                            .map_or(Value::Null, Value::from),
                    ),
                );
                return findings;
            }
        }
    }
    // Arch, then labels: the hosts that could ever run the VM at all.
    let arch_ok: Vec<&HostRoom> = pool
        .iter()
        .copied()
        .filter(|h| h.arch == need.arch)
        .collect();
    if arch_ok.is_empty() {
        let mut arches: Vec<&str> = pool.iter().map(|h| h.arch.as_str()).collect();
        arches.sort_unstable();
        arches.dedup();
        findings.push(Finding::error(
            SOURCE,
            "no-host-for-arch",
            "hardware.arch",
            format!(
                "no host runs {} VMs; hosts are {}",
                need.arch,
                arches.join(", ")
            ),
        ));
        return findings;
    }
    let mut eligible = arch_ok.clone();
    for (key, value) in need.labels {
        let with: Vec<&HostRoom> = eligible
            .iter()
            .copied()
            .filter(|h| h.labels.get(key) == Some(value))
            .collect();
        if with.is_empty() {
            let mut values: BTreeMap<&str, usize> = BTreeMap::new();
            for h in &eligible {
                if let Some(v) = h.labels.get(key) {
                    *values.entry(v.as_str()).or_default() += 1;
                }
            }
            let most = values.iter().max_by_key(|(_, n)| **n).map(|(v, _)| *v);
            let seen = values
                .iter()
                .map(|(v, n)| format!("{key}={v} ({n})"))
                .collect::<Vec<_>>()
                .join(", ");
            findings.push(
                Finding::error(
                    SOURCE,
                    "no-host-with-label",
                    format!("placement.labels.{key}"),
                    if seen.is_empty() {
                        format!("no {} host has a label {key}", need.arch)
                    } else {
                        format!("no {} host has {key}={value}; hosts have {seen}", need.arch)
                    },
                )
                .suggest(most.map_or(Value::Null, Value::from)),
            );
        } else {
            eligible = with;
        }
    }
    if !findings.is_empty() {
        return findings;
    }

    let r = need.resources;
    // Ever: against capacity.
    let max_cap = max_of(eligible.iter().map(|h| h.capacity));
    let mut ever = false;
    if u64::from(r.vcpus) > u64::from(max_cap.vcpus) {
        ever = true;
        findings.push(
            Finding::error(
                SOURCE,
                "exceeds-every-host",
                "hardware.vcpus",
                format!(
                    "{} vCPUs exceed every host; the largest offers {}",
                    r.vcpus, max_cap.vcpus
                ),
            )
            .suggest(max_cap.vcpus.max(1)),
        );
    }
    if r.memory_mib > max_cap.memory_mib {
        ever = true;
        findings.push(
            Finding::error(
                SOURCE,
                "exceeds-every-host",
                "hardware.memory",
                format!(
                    "memory {} exceeds every host; the largest offers {}",
                    say_mib(r.memory_mib),
                    say_mib(max_cap.memory_mib)
                ),
            )
            .suggest(format_mib(max_cap.memory_mib.max(16))),
        );
    }
    if r.disk_mib > max_cap.disk_mib {
        ever = true;
        let mut f = Finding::error(
            SOURCE,
            "exceeds-every-host",
            need.disk_field.unwrap_or("hardware.disks"),
            format!(
                "disks of {} exceed every host; the largest offers {}",
                say_mib(r.disk_mib),
                say_mib(max_cap.disk_mib)
            ),
        );
        if need.disk_field.is_some() {
            f = f.suggest(format_mib(max_cap.disk_mib.max(1)));
        }
        findings.push(f);
    }
    if ever {
        return findings;
    }
    if !eligible
        .iter()
        .any(|h| r.fits(Resources::default(), h.capacity))
    {
        findings.push(Finding::error(
            SOURCE,
            "fits-no-host",
            "",
            format!(
                "no single host offers {} vCPUs, {} memory and {} disk together",
                r.vcpus,
                say_mib(r.memory_mib),
                say_mib(r.disk_mib)
            ),
        ));
        return findings;
    }

    // Now: against what is free on the hosts that take placements now.
    let ready: Vec<&HostRoom> = eligible
        .iter()
        .copied()
        .filter(|h| h.ready)
        .filter(|h| {
            need.anti_affinity_group
                .is_none_or(|g| !h.groups.iter().any(|x| x == g))
        })
        .collect();
    let not_ready = eligible.iter().filter(|h| !h.ready).count();
    let aside = if not_ready > 0 {
        format!(" ({not_ready} more are unreachable, draining or in maintenance)")
    } else {
        String::new()
    };
    if ready.is_empty() {
        findings.push(Finding::error(
            SOURCE,
            "no-host-now",
            "",
            format!("no host that could take this VM is ready now{aside}"),
        ));
        return findings;
    }
    let max_free = max_of(ready.iter().map(|h| h.free));
    let with = |f: &dyn Fn(&HostRoom) -> u64, v: u64| ready.iter().filter(|h| f(h) == v).count();
    let mut short = false;
    if r.vcpus > max_free.vcpus {
        short = true;
        let n = with(&|h| u64::from(h.free.vcpus), u64::from(max_free.vcpus));
        findings.push(
            Finding::error(
                SOURCE,
                "exceeds-free-now",
                "hardware.vcpus",
                format!(
                    "no host has {} vCPUs free now; the most free is {} on {n} host{}{aside}",
                    r.vcpus,
                    max_free.vcpus,
                    plural(n)
                ),
            )
            .suggest(if max_free.vcpus > 0 {
                Value::from(max_free.vcpus)
            } else {
                Value::Null
            }),
        );
    }
    if r.memory_mib > max_free.memory_mib {
        short = true;
        let n = with(&|h| h.free.memory_mib, max_free.memory_mib);
        findings.push(
            Finding::error(
                SOURCE,
                "exceeds-free-now",
                "hardware.memory",
                format!(
                    "no host has {} memory free now; the largest free is {} on {n} host{}{aside}",
                    say_mib(r.memory_mib),
                    say_mib(max_free.memory_mib),
                    plural(n)
                ),
            )
            .suggest(if max_free.memory_mib >= 16 {
                Value::from(format_mib(max_free.memory_mib))
            } else {
                Value::Null
            }),
        );
    }
    if r.disk_mib > max_free.disk_mib {
        short = true;
        let n = with(&|h| h.free.disk_mib, max_free.disk_mib);
        let mut f = Finding::error(
            SOURCE,
            "exceeds-free-now",
            need.disk_field.unwrap_or("hardware.disks"),
            format!(
                "no host has {} of disk free now; the largest free is {} on {n} host{}{aside}",
                say_mib(r.disk_mib),
                say_mib(max_free.disk_mib),
                plural(n)
            ),
        );
        if need.disk_field.is_some() && max_free.disk_mib > 0 {
            f = f.suggest(format_mib(max_free.disk_mib));
        }
        findings.push(f);
    }
    if short {
        return findings;
    }
    // Each dimension fits somewhere, but maybe not all on one host: suggest the roomiest host's
    // amounts where the request exceeds them.
    let fitting = |h: &&HostRoom| r.fits(Resources::default(), h.free);
    if !ready.iter().any(fitting) {
        let best = ready
            .iter()
            .max_by_key(|h| {
                let share = |have: u64, want: u64| (have.min(want) * 1000) / want.max(1);
                share(u64::from(h.free.vcpus), u64::from(r.vcpus))
                    + share(h.free.memory_mib, r.memory_mib)
                    + share(h.free.disk_mib, r.disk_mib)
            })
            .expect("ready is not empty");
        let summary = format!(
            "no ready host has {} vCPUs, {} memory and {} disk free at once; the roomiest, {}, has {}, {} and {}{aside}",
            r.vcpus,
            say_mib(r.memory_mib),
            say_mib(r.disk_mib),
            best.name,
            best.free.vcpus,
            say_mib(best.free.memory_mib),
            say_mib(best.free.disk_mib),
        );
        findings.push(Finding::error(SOURCE, "no-host-now", "", summary));
        if r.vcpus > best.free.vcpus && best.free.vcpus > 0 {
            findings.push(
                Finding::error(
                    SOURCE,
                    "exceeds-free-now",
                    "hardware.vcpus",
                    format!("{} has {} vCPUs free", best.name, best.free.vcpus),
                )
                .suggest(best.free.vcpus),
            );
        }
        if r.memory_mib > best.free.memory_mib && best.free.memory_mib >= 16 {
            findings.push(
                Finding::error(
                    SOURCE,
                    "exceeds-free-now",
                    "hardware.memory",
                    format!("{} has {} free", best.name, say_mib(best.free.memory_mib)),
                )
                .suggest(format_mib(best.free.memory_mib)),
            );
        }
        return findings;
    }
    // The count: how many fit now, host by host (one per host in an anti-affinity group).
    if need.count > 1 {
        let per_host = |h: &HostRoom| -> u64 {
            let div = |have: u64, want: u64| have.checked_div(want).unwrap_or(u64::MAX);
            let n = div(u64::from(h.free.vcpus), u64::from(r.vcpus))
                .min(div(h.free.memory_mib, r.memory_mib))
                .min(div(h.free.disk_mib, r.disk_mib))
                .min(u64::from(need.count));
            if need.anti_affinity_group.is_some() {
                n.min(1)
            } else {
                n
            }
        };
        let fit: u64 = ready.iter().map(|h| per_host(h)).sum::<u64>();
        if fit < u64::from(need.count) {
            findings.push(
                Finding::error(
                    SOURCE,
                    "count-exceeds-room",
                    "count",
                    format!(
                        "only {fit} of {} such VMs fit on the ready hosts now{}{aside}",
                        need.count,
                        if need.anti_affinity_group.is_some() {
                            " (one per host: anti-affinity)"
                        } else {
                            ""
                        }
                    ),
                )
                .suggest(fit.max(1)),
            );
        }
    }
    findings
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn max_of(it: impl Iterator<Item = Resources>) -> Resources {
    it.fold(Resources::default(), |a, b| Resources {
        vcpus: a.vcpus.max(b.vcpus),
        memory_mib: a.memory_mib.max(b.memory_mib),
        disk_mib: a.disk_mib.max(b.disk_mib),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, ready: bool, cap: (u32, u64, u64), free: (u32, u64, u64)) -> HostRoom {
        HostRoom {
            id: format!("id-{name}"),
            name: name.into(),
            ready,
            arch: Arch::X86_64,
            labels: [("rack".to_owned(), "a".to_owned())].into(),
            capacity: Resources {
                vcpus: cap.0,
                memory_mib: cap.1,
                disk_mib: cap.2,
            },
            free: Resources {
                vcpus: free.0,
                memory_mib: free.1,
                disk_mib: free.2,
            },
            groups: vec![],
        }
    }

    fn need(vcpus: u32, memory_mib: u64, labels: &BTreeMap<String, String>) -> Need<'_> {
        Need {
            resources: Resources {
                vcpus,
                memory_mib,
                disk_mib: 1024,
            },
            count: 1,
            arch: Arch::X86_64,
            labels,
            anti_affinity_group: None,
            host: None,
            disk_field: Some("hardware.disks[0].size"),
        }
    }

    #[test]
    fn ever_now_and_count_are_told_apart() {
        let none = BTreeMap::new();
        let hosts = [
            host("a", true, (32, 98304, 1 << 20), (8, 49152, 1 << 20)),
            host("b", true, (32, 98304, 1 << 20), (8, 49152, 1 << 20)),
            host("c", false, (32, 98304, 1 << 20), (32, 98304, 1 << 20)),
        ];
        let f = feasibility(&need(4, 512 << 10, &none), &hosts);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].code, "exceeds-every-host");
        assert!(
            f[0].message
                .contains("512 GiB exceeds every host; the largest offers 96 GiB")
        );
        assert_eq!(f[0].suggestion, Some(Value::from("96GiB")));

        let f = feasibility(&need(4, 64 << 10, &none), &hosts);
        assert_eq!(f[0].code, "exceeds-free-now");
        assert!(
            f[0].message
                .contains("the largest free is 48 GiB on 2 hosts (1 more are"),
            "{}",
            f[0].message
        );

        let mut n = need(4, 16 << 10, &none);
        n.count = 8;
        let f = feasibility(&n, &hosts);
        assert_eq!(f[0].code, "count-exceeds-room");
        assert_eq!(f[0].suggestion, Some(Value::from(4)));
        n.anti_affinity_group = Some("web");
        assert_eq!(feasibility(&n, &hosts)[0].suggestion, Some(Value::from(2)));
        n.count = 2;
        assert_eq!(feasibility(&n, &hosts), vec![]);
    }

    #[test]
    fn labels_and_pins_name_what_exists() {
        let rack_b = [("rack".to_owned(), "b".to_owned())].into();
        let hosts = [host("node-1", true, (8, 8192, 8192), (8, 8192, 8192))];
        let f = feasibility(&need(1, 512, &rack_b), &hosts);
        assert_eq!(f[0].field, "placement.labels.rack");
        assert!(f[0].message.contains("hosts have rack=a (1)"));
        assert_eq!(f[0].suggestion, Some(Value::from("a")));
        let none = BTreeMap::new();
        let mut n = need(1, 512, &none);
        n.host = Some("node-2");
        let f = feasibility(&n, &hosts);
        assert_eq!(f[0].suggestion, Some(Value::from("node-1")));
    }

    #[test]
    fn no_single_host_suggests_the_roomiest() {
        let none = BTreeMap::new();
        let hosts = [
            host("cpu", true, (64, 65536, 1 << 20), (64, 4096, 1 << 20)),
            host("mem", true, (64, 65536, 1 << 20), (4, 65536, 1 << 20)),
        ];
        let f = feasibility(&need(16, 32768, &none), &hosts);
        assert_eq!(f[0].code, "no-host-now", "{f:#?}");
        assert!(
            f.iter()
                .any(|x| x.field == "hardware.vcpus" && x.suggestion == Some(Value::from(4)))
        );
    }
}
