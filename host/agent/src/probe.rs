//! What the host can run VMs with: QEMU and its version, whether KVM is usable, and the
//! features placement filters on (UEFI firmware, huge pages, an IOMMU, nested virtualisation).
//!
//! KVM is judged by what it does, not by `/dev/kvm` existing: the probe runs a tiny guest
//! ([`kvm`]) and times it. Running is not enough. A KVM backend without hardware
//! virtualisation — PVM (`kvm_pvm`), which serves `/dev/kvm` on machines that are themselves
//! VMs without nested VMX — answers every ioctl (API 12, the capabilities QEMU asks for) and runs
//! a real-mode, protected-mode or long-mode guest correctly to its `hlt`. But it executes an
//! ordinary guest's code by emulation: a 100 000-iteration loop takes ~40 ms there against
//! ~0.05 ms under VMX or SVM, a thousand times slower, and slower than QEMU's own TCG by far
//! (a Debian kernel under `-accel kvm` there is still decompressing itself after 20 s; with TCG
//! it is at its root file system in under 2 s). Only kernels built for PVM run fast on it. (Its
//! supported CPUID also lacks SSE3 through AVX, which QEMU warns of; a sign, but one that
//! depends on the CPU model, so not the test.)
//!
//! So the probe guest runs its loop in 64-bit long mode — what Linux guests run in, and never
//! emulated by a hardware KVM (real mode may be, on CPUs without "unrestricted guest") — and
//! KVM counts as usable when its fastest chunk is within [`HARDWARE_CHUNK`]: a hundredfold
//! margin over VMX/SVM, eightfold under PVM, and the fastest of ten chunks, so a chunk the
//! scheduler interrupted does not decide. It costs ~1 ms with hardware virtualisation, and at
//! most [`GUEST_BUDGET`] where guest code is emulated.

use std::path::Path;
use std::time::Duration;

use slipway_core::HostFeature;
use slipway_core::agent::{Accelerator, Hypervisor, KvmProbe, Qemu};

#[cfg(target_arch = "x86_64")]
mod kvm;

/// What the probe found; run once at start.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    pub qemu: Option<Qemu>,
    pub kvm: Option<KvmProbe>,
    pub features: Vec<HostFeature>,
}

impl Probe {
    /// Probes QEMU (`qemu` or `qemu-system-<arch>` on the PATH), KVM and the features.
    pub fn run(qemu: Option<&Path>) -> Self {
        let kvm = probe_kvm();
        let qemu = find_qemu(qemu);
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mut features = Vec::new();
        if kvm.usable {
            features.push(HostFeature::Kvm);
        }
        if OVMF.iter().any(|p| Path::new(p).is_file()) {
            features.push(HostFeature::Uefi);
        }
        if kvm.usable && nested() {
            features.push(HostFeature::NestedVirt);
        }
        if crate::metrics::hugepages(&meminfo) > 0 {
            features.push(HostFeature::Hugepages);
        }
        if std::fs::read_dir("/sys/class/iommu").is_ok_and(|mut d| d.next().is_some()) {
            features.push(HostFeature::Iommu);
        }
        Self {
            qemu,
            kvm: Some(kvm),
            features,
        }
    }

    pub fn hypervisor(&self) -> Hypervisor {
        let kvm = self.kvm.clone().unwrap_or(KvmProbe {
            usable: false,
            detail: "not probed".into(),
        });
        let accelerator = match (&self.qemu, kvm.usable) {
            (None, _) => Accelerator::None,
            (Some(_), true) => Accelerator::Kvm,
            (Some(_), false) => Accelerator::Tcg,
        };
        Hypervisor {
            qemu: self.qemu.clone(),
            kvm,
            accelerator,
        }
    }
}

/// OVMF code images as Debian and others install them.
const OVMF: [&str; 4] = [
    "/usr/share/OVMF/OVMF_CODE_4M.fd",
    "/usr/share/OVMF/OVMF_CODE.fd",
    "/usr/share/qemu/OVMF.fd",
    "/usr/share/edk2/ovmf/OVMF_CODE.fd",
];

fn nested() -> bool {
    ["kvm_intel", "kvm_amd"].iter().any(|m| {
        std::fs::read_to_string(format!("/sys/module/{m}/parameters/nested"))
            .is_ok_and(|v| matches!(v.trim(), "Y" | "1"))
    })
}

/// `qemu-system-x86_64` for an x86-64 host.
fn qemu_binary() -> String {
    let arch = match std::env::consts::ARCH {
        "powerpc64" => "ppc64",
        other => other,
    };
    format!("qemu-system-{arch}")
}

fn find_qemu(configured: Option<&Path>) -> Option<Qemu> {
    let path = match configured {
        Some(p) => p.to_owned(),
        None => {
            let name = qemu_binary();
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(&name))
                    .find(|p| p.is_file())
            })?
        }
    };
    let version = run_with_timeout(&path, &["--version"], Duration::from_secs(5))
        .and_then(|out| parse_qemu_version(&out))?;
    Some(Qemu {
        path: path.display().to_string(),
        version,
    })
}

/// "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-1~bpo12+1)" → "10.0.2".
pub fn parse_qemu_version(text: &str) -> Option<String> {
    let rest = text.lines().next()?.split("version ").nth(1)?;
    let version: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    (!version.is_empty()).then_some(version)
}

fn run_with_timeout(path: &Path, args: &[&str], limit: Duration) -> Option<String> {
    let mut child = std::process::Command::new(path)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let deadline = std::time::Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take()?, &mut out).ok()?;
    Some(out)
}

/// The slowest chunk of the probe guest's loop that still counts as hardware speed.
pub const HARDWARE_CHUNK: Duration = Duration::from_millis(5);
/// How long the probe guest may run before its speed is judged on the chunks it ran.
pub const GUEST_BUDGET: Duration = Duration::from_millis(300);

/// What running the probe guest measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestTiming {
    pub api: i32,
    /// Chunks of the loop run before the guest halted or the budget ran out.
    pub chunks: u32,
    /// The fastest chunk: the guest's speed when nothing else held the CPU.
    pub best_chunk: Duration,
}

/// Loop iterations in one chunk of the probe guest.
#[cfg(target_arch = "x86_64")]
pub const CHUNK_ITERATIONS: u32 = kvm::CHUNK_ITERATIONS;
#[cfg(not(target_arch = "x86_64"))]
pub const CHUNK_ITERATIONS: u32 = 0;

#[cfg(target_arch = "x86_64")]
fn run_probe_guest() -> Result<GuestTiming, String> {
    kvm::run_probe_guest(GUEST_BUDGET)
}

#[cfg(not(target_arch = "x86_64"))]
fn run_probe_guest() -> Result<GuestTiming, String> {
    Err(format!(
        "not probed: the probe guest is x86-64 code, and this host is {}",
        std::env::consts::ARCH
    ))
}

/// Whether KVM can run ordinary guests here at hardware speed, and what was found.
pub fn probe_kvm() -> KvmProbe {
    // On a thread of its own: a KVM that never returns from KVM_RUN must not hold the agent.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(run_probe_guest());
    });
    match rx.recv_timeout(Duration::from_secs(2)) {
        Ok(Ok(timing)) => judge(&timing, &kvm_modules()),
        Ok(Err(detail)) => KvmProbe {
            usable: false,
            detail,
        },
        Err(_) => KvmProbe {
            usable: false,
            detail: "not usable: the probe guest did not finish within 2 s (ten loop chunks that \
                     take a millisecond under hardware virtualisation)"
                .into(),
        },
    }
}

/// The kernel modules that may serve `/dev/kvm`, as loaded: named in the probe's detail.
fn kvm_modules() -> Vec<String> {
    ["kvm_intel", "kvm_amd", "kvm_pvm"]
        .iter()
        .filter(|m| Path::new("/sys/module").join(m).exists())
        .map(|m| m.to_string())
        .collect()
}

/// The verdict on a guest that ran: at hardware speed, or emulated.
pub fn judge(timing: &GuestTiming, modules: &[String]) -> KvmProbe {
    let mut about = format!("KVM API {}", timing.api);
    if !modules.is_empty() {
        about = format!("{about}, {}", modules.join(", "));
    }
    let ms = timing.best_chunk.as_secs_f64() * 1000.0;
    if timing.chunks > 0 && timing.best_chunk <= HARDWARE_CHUNK {
        KvmProbe {
            usable: true,
            detail: format!(
                "usable: the probe guest ran 64-bit code at hardware speed ({CHUNK_ITERATIONS} \
                 loop iterations in {ms:.2} ms; {about})"
            ),
        }
    } else {
        KvmProbe {
            usable: false,
            detail: format!(
                "not usable: the probe guest ran, but emulated: {CHUNK_ITERATIONS} loop \
                 iterations took {ms:.1} ms at best, where hardware virtualisation takes well \
                 under 1 ms ({about}); VMs run with TCG"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_versions_parse() {
        assert_eq!(
            parse_qemu_version(
                "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-1~bpo12+1)\nCopyright"
            )
            .as_deref(),
            Some("10.0.2")
        );
        assert_eq!(
            parse_qemu_version("QEMU emulator version 7.2.15").as_deref(),
            Some("7.2.15")
        );
        assert_eq!(parse_qemu_version("something else"), None);
    }

    fn timing(best_chunk: Duration) -> GuestTiming {
        GuestTiming {
            api: 12,
            chunks: 10,
            best_chunk,
        }
    }

    #[test]
    fn a_guest_at_hardware_speed_makes_kvm_usable() {
        let v = judge(
            &timing(Duration::from_micros(60)),
            &["kvm_intel".to_owned()],
        );
        assert!(v.usable, "{}", v.detail);
        assert!(v.detail.contains("kvm_intel"), "{}", v.detail);
    }

    #[test]
    fn an_emulated_guest_does_not() {
        let v = judge(&timing(Duration::from_millis(41)), &["kvm_pvm".to_owned()]);
        assert!(!v.usable);
        assert!(v.detail.contains("emulated"), "{}", v.detail);
        assert!(v.detail.contains("41.0 ms"), "{}", v.detail);
        assert!(v.detail.contains("kvm_pvm"), "{}", v.detail);
    }

    #[test]
    fn the_probe_answers_promptly_and_says_why() {
        let started = std::time::Instant::now();
        let kvm = probe_kvm();
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(!kvm.detail.is_empty());
        if !Path::new("/dev/kvm").exists() {
            assert!(!kvm.usable);
            assert_eq!(kvm.detail, "no /dev/kvm");
        }
    }

    fn has_virt_flag(cpuinfo: &str) -> bool {
        cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .flat_map(|l| l.split_whitespace())
            .any(|f| f == "vmx" || f == "svm")
    }

    /// This machine's kind: `/dev/kvm` is there, served without hardware virtualisation (the
    /// CPU shows no vmx or svm). The probe must find its guest emulated, and choose TCG.
    #[test]
    fn a_kvm_without_hardware_virtualisation_is_not_usable() {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        if !Path::new("/dev/kvm").exists() || has_virt_flag(&cpuinfo) {
            eprintln!("skipped: this machine is not of that kind");
            return;
        }
        let kvm = probe_kvm();
        assert!(!kvm.usable, "{}", kvm.detail);
        eprintln!("{}", kvm.detail);
        let probe = Probe {
            qemu: Some(Qemu {
                path: "/usr/bin/qemu-system-x86_64".into(),
                version: "10.0.2".into(),
            }),
            kvm: Some(kvm),
            features: Vec::new(),
        };
        assert_eq!(probe.hypervisor().accelerator, Accelerator::Tcg);
    }
}
