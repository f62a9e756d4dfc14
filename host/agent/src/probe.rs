//! What the host can run VMs with: QEMU and its version, whether KVM is usable, and the
//! features placement filters on (UEFI firmware, huge pages, an IOMMU, nested virtualisation).
//!
//! KVM is judged by what it does, not by `/dev/kvm` existing. The probe opens the device,
//! checks the API version, creates a VM and runs a tiny real-mode guest to its `hlt`. That alone
//! is not enough: a software KVM backend such as PVM (`kvm_pvm`) answers every ioctl and runs
//! that guest, yet boots only guest kernels built for it, so ordinary Linux guests fail on it.
//! So the backend must also be hardware virtualisation: the CPU reports `vmx` or `svm`, and
//! `kvm_intel` or `kvm_amd` is the module serving `/dev/kvm`.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use slipway_core::HostFeature;
use slipway_core::agent::{Accelerator, Hypervisor, KvmProbe, Qemu};

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

/// Whether KVM can run ordinary guests here, and what was found.
pub fn probe_kvm() -> KvmProbe {
    let not = |detail: String| KvmProbe {
        usable: false,
        detail,
    };
    // The guest runs on a thread of its own: a KVM that never returns from KVM_RUN must not
    // hold the agent's start.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(run_probe_guest());
    });
    let api = match rx.recv_timeout(Duration::from_secs(2)) {
        Ok(Ok(api)) => api,
        Ok(Err(e)) => return not(e),
        Err(_) => return not("the probe guest did not finish within 2 s".into()),
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let modules = |names: &[&str]| -> Vec<String> {
        names
            .iter()
            .filter(|m| Path::new("/sys/module").join(m).exists())
            .map(|m| m.to_string())
            .collect()
    };
    let hardware = modules(&["kvm_intel", "kvm_amd"]);
    let software = modules(&["kvm_pvm"]);
    judge(api, has_virt_flag(&cpuinfo), &hardware, &software)
}

/// The verdict once a guest ran: hardware virtualisation, or not.
pub fn judge(api: i32, virt_flag: bool, hardware: &[String], software: &[String]) -> KvmProbe {
    if !hardware.is_empty() && virt_flag {
        return KvmProbe {
            usable: true,
            detail: format!(
                "usable: the probe guest ran (KVM API {api}, {})",
                hardware.join(", ")
            ),
        };
    }
    let why = if let Some(backend) = software.first() {
        format!(
            "/dev/kvm is served by {backend}, a software backend that boots only guest kernels \
             built for it; ordinary guests fail"
        )
    } else if !virt_flag {
        "the CPU offers no hardware virtualisation (no vmx or svm flag)".to_owned()
    } else {
        "no kvm_intel or kvm_amd module serves /dev/kvm".to_owned()
    };
    KvmProbe {
        usable: false,
        detail: format!("not usable: {why} (the probe guest ran, KVM API {api}); VMs run with TCG"),
    }
}

pub fn has_virt_flag(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace())
        .any(|f| f == "vmx" || f == "svm")
}

// The KVM ioctls, from <linux/kvm.h> (type 0xAE).
const KVM_GET_API_VERSION: u64 = 0xAE00;
const KVM_CREATE_VM: u64 = 0xAE01;
const KVM_GET_VCPU_MMAP_SIZE: u64 = 0xAE04;
const KVM_CREATE_VCPU: u64 = 0xAE41;
const KVM_RUN: u64 = 0xAE80;
const KVM_SET_USER_MEMORY_REGION: u64 = 0x4020_AE46;
const KVM_SET_REGS: u64 = 0x4090_AE82;
const KVM_GET_SREGS: u64 = 0x8138_AE83;
const KVM_SET_SREGS: u64 = 0x4138_AE84;
const KVM_EXIT_IO: u32 = 2;
const KVM_EXIT_HLT: u32 = 5;

/// `struct kvm_userspace_memory_region`.
#[repr(C)]
struct MemoryRegion {
    slot: u32,
    flags: u32,
    guest_phys_addr: u64,
    memory_size: u64,
    userspace_addr: u64,
}

/// An anonymous or device mapping, unmapped when dropped.
struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(len: usize, fd: Option<&OwnedFd>) -> Result<Self, String> {
        let (flags, raw) = match fd {
            Some(fd) => (libc::MAP_SHARED, fd.as_raw_fd()),
            None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1),
        };
        // SAFETY: a fresh mapping the kernel places; checked for MAP_FAILED below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                raw,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        Ok(Self { addr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped, once.
        unsafe {
            libc::munmap(self.addr, self.len);
        }
    }
}

/// An ioctl whose result is checked; `what` names it in the error.
fn ioctl(fd: &OwnedFd, request: u64, arg: usize, what: &str) -> Result<i32, String> {
    // SAFETY: every request below is given the argument type <linux/kvm.h> defines for it, and
    // pointers passed as `arg` stay valid for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg) };
    if rc < 0 {
        Err(format!("{what}: {}", std::io::Error::last_os_error()))
    } else {
        Ok(rc)
    }
}

fn owned(fd: i32) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful ioctl that creates a descriptor, and
    // nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Creates a VM and runs `mov al, 42; out 0x10, al; hlt` in real mode; returns the API version.
fn run_probe_guest() -> Result<i32, String> {
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "no /dev/kvm".to_owned(),
            std::io::ErrorKind::PermissionDenied => {
                "permission denied opening /dev/kvm (the agent's user needs the kvm group)"
                    .to_owned()
            }
            _ => format!("opening /dev/kvm: {e}"),
        })?;
    let kvm = OwnedFd::from(kvm);
    let api = ioctl(&kvm, KVM_GET_API_VERSION, 0, "KVM_GET_API_VERSION")?;
    if api != 12 {
        return Err(format!("KVM API version {api}, not 12"));
    }
    let vm = owned(ioctl(&kvm, KVM_CREATE_VM, 0, "KVM_CREATE_VM")?);
    const MEM: usize = 0x10000;
    const CODE_AT: usize = 0x1000;
    let memory = Mapping::new(MEM, None)?;
    let code = [0xB0, 0x2A, 0xE6, 0x10, 0xF4];
    // SAFETY: the mapping is MEM bytes long, and CODE_AT + 5 is within it.
    unsafe {
        std::ptr::copy_nonoverlapping(
            code.as_ptr(),
            (memory.addr as *mut u8).add(CODE_AT),
            code.len(),
        );
    }
    let region = MemoryRegion {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: MEM as u64,
        userspace_addr: memory.addr as u64,
    };
    ioctl(
        &vm,
        KVM_SET_USER_MEMORY_REGION,
        &region as *const MemoryRegion as usize,
        "KVM_SET_USER_MEMORY_REGION",
    )?;
    let vcpu = owned(ioctl(&vm, KVM_CREATE_VCPU, 0, "KVM_CREATE_VCPU")?);
    let run_size = ioctl(&kvm, KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE")?;
    let run_size = usize::try_from(run_size)
        .ok()
        .filter(|&n| n >= 64)
        .ok_or("KVM_GET_VCPU_MMAP_SIZE is too small")?;
    let run = Mapping::new(run_size, Some(&vcpu))?;
    // `struct kvm_sregs` is 312 bytes; cs (a 24-byte kvm_segment: base u64, limit u32,
    // selector u16, ...) comes first. Real mode with cs at 0.
    let mut sregs = [0u8; 312];
    ioctl(
        &vcpu,
        KVM_GET_SREGS,
        sregs.as_mut_ptr() as usize,
        "KVM_GET_SREGS",
    )?;
    sregs[0..8].copy_from_slice(&0u64.to_ne_bytes());
    sregs[12..14].copy_from_slice(&0u16.to_ne_bytes());
    ioctl(
        &vcpu,
        KVM_SET_SREGS,
        sregs.as_ptr() as usize,
        "KVM_SET_SREGS",
    )?;
    // `struct kvm_regs`: 18 u64, rip 17th and rflags 18th (bit 1 always set).
    let mut regs = [0u64; 18];
    regs[16] = CODE_AT as u64;
    regs[17] = 2;
    ioctl(&vcpu, KVM_SET_REGS, regs.as_ptr() as usize, "KVM_SET_REGS")?;
    let mut saw_out = false;
    for _ in 0..4 {
        ioctl(&vcpu, KVM_RUN, 0, "KVM_RUN of the probe guest")?;
        // SAFETY: the run mapping is at least 64 bytes; exit_reason is the u32 at offset 8,
        // and for KVM_EXIT_IO the io struct (direction u8, size u8, port u16, count u32,
        // data_offset u64) starts at 32.
        let (reason, port, offset) = unsafe {
            let base = run.addr as *const u8;
            (
                std::ptr::read_unaligned(base.add(8) as *const u32),
                std::ptr::read_unaligned(base.add(34) as *const u16),
                std::ptr::read_unaligned(base.add(40) as *const u64),
            )
        };
        match reason {
            KVM_EXIT_IO => {
                let value = usize::try_from(offset)
                    .ok()
                    .filter(|&o| o < run_size)
                    // SAFETY: the offset was checked against the mapping's size.
                    .map(|o| unsafe { *(run.addr as *const u8).add(o) });
                if port != 0x10 || value != Some(42) {
                    return Err(format!(
                        "the probe guest wrote {value:?} to port {port:#x}, not 42 to 0x10"
                    ));
                }
                saw_out = true;
            }
            KVM_EXIT_HLT if saw_out => return Ok(api),
            other => return Err(format!("the probe guest stopped with exit reason {other}")),
        }
    }
    Err("the probe guest did not reach its hlt".into())
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

    #[test]
    fn the_verdict_needs_hardware_virtualisation() {
        let intel = vec!["kvm_intel".to_owned()];
        let pvm = vec!["kvm_pvm".to_owned()];
        assert!(judge(12, true, &intel, &[]).usable);
        let v = judge(12, false, &[], &pvm);
        assert!(!v.usable);
        assert!(v.detail.contains("kvm_pvm"), "{}", v.detail);
        let v = judge(12, false, &[], &[]);
        assert!(v.detail.contains("no vmx or svm"), "{}", v.detail);
        assert!(has_virt_flag("flags\t\t: fpu vme vmx sse\n"));
        assert!(!has_virt_flag("flags\t\t: fpu vme hypervisor\n"));
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

    /// This machine's kind: `/dev/kvm` is there and runs the probe guest, but the CPU has no
    /// vmx or svm — a software backend on which Linux guests fail. The answer must be TCG.
    #[test]
    fn a_kvm_without_hardware_virtualisation_is_not_usable() {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        if !Path::new("/dev/kvm").exists() || has_virt_flag(&cpuinfo) {
            eprintln!("skipped: this machine is not of that kind");
            return;
        }
        let kvm = probe_kvm();
        assert!(!kvm.usable, "{}", kvm.detail);
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
