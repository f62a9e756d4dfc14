//! What the agent reads from its machine for every heartbeat: CPUs, load, memory, the space of
//! its data directory, uptime, and the VMs it runs. Parsers take text, so they are tested on
//! fixtures; [`read`] reads the real files.

use std::path::Path;

use slipway_core::Arch;
use slipway_core::agent::{Hypervisor, VmReport};
use slipway_core::{HostFeature, agent::HostReport};

/// Why the machine could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} has no {what}")]
    Missing { path: String, what: &'static str },
    #[error("statvfs of {path}: {source}")]
    Statvfs {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn read_text(path: &str) -> Result<String, MetricsError> {
    std::fs::read_to_string(path).map_err(|source| MetricsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// CPUs in a list like `/sys/devices/system/cpu/online`: `0-3,8,10-11` is 7.
pub fn parse_cpu_list(text: &str) -> Option<u32> {
    let mut n = 0u32;
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let count = match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                b.checked_sub(a)? + 1
            }
            None => {
                part.parse::<u32>().ok()?;
                1
            }
        };
        n = n.checked_add(count)?;
    }
    (n > 0).then_some(n)
}

/// `/proc/loadavg` as thousandths: `0.52 0.30 0.12 1/123 456` is `[520, 300, 120]`.
pub fn parse_loadavg(text: &str) -> Option<[u32; 3]> {
    let mut fields = text.split_whitespace().map(|f| {
        f.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .map(|v| (v * 1000.0).round().min(f64::from(u32::MAX)) as u32)
    });
    Some([fields.next()??, fields.next()??, fields.next()??])
}

/// `MemTotal` and `MemAvailable` of `/proc/meminfo`, in MiB.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let kib = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
    };
    Some((kib("MemTotal:")? / 1024, kib("MemAvailable:")? / 1024))
}

/// `HugePages_Total` of `/proc/meminfo`.
pub fn hugepages(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("HugePages_Total:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The first field of `/proc/uptime`, whole seconds.
pub fn parse_uptime(text: &str) -> Option<u64> {
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then_some(secs as u64)
}

/// Total and available MiB of the file system holding `path`.
pub fn disk_mib(path: &Path) -> Result<(u64, u64), MetricsError> {
    let stat = rustix::fs::statvfs(path).map_err(|e| MetricsError::Statvfs {
        path: path.display().to_string(),
        source: e.into(),
    })?;
    // Blocks count in fragments (f_frsize); f_bavail is what an unprivileged user may fill.
    let mib = |blocks: u64| blocks.saturating_mul(stat.f_frsize.max(1)) >> 20;
    Ok((mib(stat.f_blocks), mib(stat.f_bavail)))
}

/// The architecture this agent was built for, which is the host's.
pub fn arch() -> Arch {
    match std::env::consts::ARCH {
        "aarch64" => Arch::Aarch64,
        "riscv64" => Arch::Riscv64,
        "powerpc64" => Arch::Ppc64le,
        "s390x" => Arch::S390x,
        _ => Arch::X86_64,
    }
}

/// The VMs the agent runs: one `<data-dir>/vms/<id>.json` each (written by the VM driver the
/// deploy work adds). Unreadable files are skipped, never fatal: a heartbeat must go out.
pub fn vms(data_dir: &Path) -> Vec<VmReport> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("vms")) else {
        return Vec::new();
    };
    let mut vms: Vec<VmReport> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
        .take(4096)
        .collect();
    vms.sort_by(|a: &VmReport, b| a.id.cmp(&b.id));
    vms
}

/// What the report needs beside the machine's files: set at start.
#[derive(Debug, Clone)]
pub struct Static {
    pub data_dir: std::path::PathBuf,
    pub labels: std::collections::BTreeMap<String, String>,
    pub memory_reserved_mib: u64,
    pub hypervisor: Hypervisor,
    pub features: Vec<HostFeature>,
}

/// The machine as it is now.
pub fn read(s: &Static) -> Result<HostReport, MetricsError> {
    const ONLINE: &str = "/sys/devices/system/cpu/online";
    let cpus = read_text(ONLINE)
        .ok()
        .and_then(|t| parse_cpu_list(&t))
        .or_else(|| {
            std::thread::available_parallelism()
                .ok()
                .and_then(|n| u32::try_from(n.get()).ok())
        })
        .unwrap_or(1);
    let load = read_text("/proc/loadavg")?;
    let load_milli = parse_loadavg(&load).ok_or(MetricsError::Missing {
        path: "/proc/loadavg".into(),
        what: "three load averages",
    })?;
    let meminfo = read_text("/proc/meminfo")?;
    let (memory_total_mib, memory_available_mib) =
        parse_meminfo(&meminfo).ok_or(MetricsError::Missing {
            path: "/proc/meminfo".into(),
            what: "MemTotal and MemAvailable",
        })?;
    let (disk_total_mib, disk_free_mib) = disk_mib(&s.data_dir)?;
    let uptime_s = read_text("/proc/uptime")
        .ok()
        .and_then(|t| parse_uptime(&t))
        .unwrap_or(0);
    Ok(HostReport {
        arch: arch(),
        cpus,
        load_milli,
        memory_total_mib,
        memory_available_mib: memory_available_mib.min(memory_total_mib),
        memory_reserved_mib: s.memory_reserved_mib.min(memory_total_mib),
        disk_total_mib,
        disk_free_mib: disk_free_mib.min(disk_total_mib),
        hypervisor: s.hypervisor.clone(),
        features: s.features.clone(),
        labels: s.labels.clone(),
        vms: vms(&s.data_dir),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_count_ranges_and_singles() {
        assert_eq!(parse_cpu_list("0-3\n"), Some(4));
        assert_eq!(parse_cpu_list("0-3,8,10-11"), Some(7));
        assert_eq!(parse_cpu_list("5"), Some(1));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(
            parse_cpu_list("3-1"),
            None,
            "a backwards range is not a count"
        );
        assert_eq!(parse_cpu_list("0-x"), None);
    }

    #[test]
    fn load_meminfo_and_uptime_parse() {
        assert_eq!(
            parse_loadavg("0.52 0.30 0.12 1/123 456\n"),
            Some([520, 300, 120])
        );
        assert_eq!(parse_loadavg("0.52 nan"), None);
        let meminfo = "MemTotal:       24576000 kB\nMemFree:         1000 kB\nMemAvailable:   12288000 kB\nHugePages_Total:      16\n";
        assert_eq!(parse_meminfo(meminfo), Some((24_000, 12_000)));
        assert_eq!(hugepages(meminfo), 16);
        assert_eq!(parse_meminfo("MemTotal: 5 kB\n"), None);
        assert_eq!(parse_uptime("12345.67 400.00\n"), Some(12345));
    }

    #[test]
    fn this_machine_reads() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("vms")).unwrap();
        std::fs::write(
            dir.path().join("vms/b.json"),
            r#"{"id": "b", "state": "running"}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("vms/a.json"), "not json").unwrap();
        let report = read(&Static {
            data_dir: dir.path().to_owned(),
            labels: [("rack".to_owned(), "r1".to_owned())].into(),
            memory_reserved_mib: 512,
            hypervisor: crate::probe::Probe::default().hypervisor(),
            features: Vec::new(),
        })
        .unwrap();
        assert!(report.cpus >= 1);
        assert!(report.memory_total_mib > 0);
        assert!(report.memory_available_mib <= report.memory_total_mib);
        assert!(report.disk_total_mib > 0 && report.disk_free_mib <= report.disk_total_mib);
        assert_eq!(report.memory_reserved_mib, 512);
        assert_eq!(report.labels["rack"], "r1");
        assert_eq!(report.vms.len(), 1, "the unreadable file is skipped");
        assert_eq!(report.vms[0].id, "b");
    }
}
