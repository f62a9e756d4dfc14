//! The KVM probe guest. All of the agent's `unsafe` code is here: raw ioctls on `/dev/kvm`,
//! two memory mappings, and reads of the `kvm_run` page the kernel writes.
//!
//! The guest is set up in 64-bit long mode (identity-mapped with one 2 MiB page, the CPUID KVM
//! supports) and runs `CHUNKS` chunks of a `dec`/`jnz` loop, reporting each with an `out` to
//! port 0x10, then `hlt`s. Each `KVM_RUN` runs one chunk, and is timed.
//!
//! The structs mirror `<linux/kvm.h>` for x86-64; their sizes are checked at compile time, and
//! the ioctl numbers are computed from them, as the header's `_IOW`/`_IOR` macros do.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::GuestTiming;

/// Loop iterations per chunk: ~0.05 ms under VMX/SVM, ~40 ms where guest code is emulated.
pub const CHUNK_ITERATIONS: u32 = 100_000;
const CHUNKS: u32 = 10;

/// `mov ebx, CHUNKS; 1: mov ecx, CHUNK_ITERATIONS; 2: dec ecx; jnz 2b; mov al, 42;
/// out 0x10, al; dec ebx; jnz 1b; hlt` — 64-bit code; the immediates are patched in.
fn guest_code() -> [u8; 23] {
    let mut code = [
        0xBB, 0, 0, 0, 0, // mov ebx, imm32
        0xB9, 0, 0, 0, 0, // mov ecx, imm32
        0xFF, 0xC9, // dec ecx
        0x75, 0xFC, // jnz -4
        0xB0, 0x2A, // mov al, 42
        0xE6, 0x10, // out 0x10, al
        0xFF, 0xCB, // dec ebx
        0x75, 0xEF, // jnz -17 (to the mov ecx)
        0xF4, // hlt
    ];
    code[1..5].copy_from_slice(&CHUNKS.to_le_bytes());
    code[6..10].copy_from_slice(&CHUNK_ITERATIONS.to_le_bytes());
    code
}

const KVMIO: u64 = 0xAE;
const fn io(nr: u64) -> u64 {
    (KVMIO << 8) | nr
}
const fn iow<T>(nr: u64) -> u64 {
    (1 << 30) | ((size_of::<T>() as u64) << 16) | io(nr)
}
const fn ior<T>(nr: u64) -> u64 {
    (2 << 30) | ((size_of::<T>() as u64) << 16) | io(nr)
}
const fn iowr<T>(nr: u64) -> u64 {
    (3 << 30) | ((size_of::<T>() as u64) << 16) | io(nr)
}

const KVM_GET_API_VERSION: u64 = io(0x00);
const KVM_CREATE_VM: u64 = io(0x01);
const KVM_GET_VCPU_MMAP_SIZE: u64 = io(0x04);
const KVM_GET_SUPPORTED_CPUID: u64 = iowr::<CpuidHeader>(0x05);
const KVM_CREATE_VCPU: u64 = io(0x41);
const KVM_SET_USER_MEMORY_REGION: u64 = iow::<MemoryRegion>(0x46);
const KVM_SET_TSS_ADDR: u64 = io(0x47);
const KVM_RUN: u64 = io(0x80);
const KVM_SET_REGS: u64 = iow::<Regs>(0x82);
const KVM_GET_SREGS: u64 = ior::<Sregs>(0x83);
const KVM_SET_SREGS: u64 = iow::<Sregs>(0x84);
const KVM_SET_CPUID2: u64 = iow::<CpuidHeader>(0x90);

const KVM_EXIT_IO: u32 = 2;
const KVM_EXIT_HLT: u32 = 5;

#[repr(C)]
struct MemoryRegion {
    slot: u32,
    flags: u32,
    guest_phys_addr: u64,
    memory_size: u64,
    userspace_addr: u64,
}

#[repr(C)]
#[derive(Default)]
struct Regs {
    gpr: [u64; 16],
    rip: u64,
    rflags: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Segment {
    base: u64,
    limit: u32,
    selector: u16,
    kind: u8,
    present: u8,
    dpl: u8,
    db: u8,
    s: u8,
    l: u8,
    g: u8,
    avl: u8,
    unusable: u8,
    padding: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Dtable {
    base: u64,
    limit: u16,
    padding: [u16; 3],
}

#[repr(C)]
#[derive(Default)]
struct Sregs {
    cs: Segment,
    ds: Segment,
    es: Segment,
    fs: Segment,
    gs: Segment,
    ss: Segment,
    tr: Segment,
    ldt: Segment,
    gdt: Dtable,
    idt: Dtable,
    cr0: u64,
    cr2: u64,
    cr3: u64,
    cr4: u64,
    cr8: u64,
    efer: u64,
    apic_base: u64,
    interrupt_bitmap: [u64; 4],
}

#[repr(C)]
struct CpuidHeader {
    nent: u32,
    padding: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CpuidEntry {
    function: u32,
    index: u32,
    flags: u32,
    eax: u32,
    ebx: u32,
    ecx: u32,
    edx: u32,
    padding: [u32; 3],
}

/// `struct kvm_cpuid2` with room for KVM_MAX_CPUID_ENTRIES.
#[repr(C)]
struct Cpuid {
    header: CpuidHeader,
    entries: [CpuidEntry; 256],
}

/// The start of `struct kvm_run`, through the `io` member of its exit union.
#[repr(C)]
#[derive(Clone, Copy)]
struct RunHead {
    request_interrupt_window: u8,
    immediate_exit: u8,
    padding: [u8; 6],
    exit_reason: u32,
    ready_for_interrupt_injection: u8,
    if_flag: u8,
    flags: u16,
    cr8: u64,
    apic_base: u64,
    io_direction: u8,
    io_size: u8,
    io_port: u16,
    io_count: u32,
    io_data_offset: u64,
}

const _: () = {
    assert!(size_of::<MemoryRegion>() == 32);
    assert!(size_of::<Regs>() == 144);
    assert!(size_of::<Segment>() == 24);
    assert!(size_of::<Sregs>() == 312);
    assert!(size_of::<CpuidEntry>() == 40);
    assert!(size_of::<RunHead>() == 48);
};

/// A memory mapping, unmapped when dropped.
struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    /// Anonymous memory, zeroed (`None`), or the `kvm_run` page of a vCPU (`Some(vcpu)`).
    fn new(len: usize, fd: Option<&OwnedFd>) -> Result<Self, String> {
        let (flags, raw) = match fd {
            Some(fd) => (libc::MAP_SHARED, fd.as_raw_fd()),
            None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1),
        };
        // SAFETY: asks for a new mapping wherever the kernel puts it; nothing is overlaid.
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

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` readable and writable bytes, alive as long as `self`,
        // and this borrow of `self` is the only way to it from Rust.
        unsafe { std::slice::from_raw_parts_mut(self.addr.cast::<u8>(), self.len) }
    }

    /// The head of `struct kvm_run`, on the vCPU's mapping.
    fn run_head(&self) -> Option<RunHead> {
        // SAFETY: `RunHead` fits in the mapping (checked), which mmap aligned to a page, and
        // any bytes are a valid `RunHead`; volatile, since the kernel writes it.
        (self.len >= size_of::<RunHead>())
            .then(|| unsafe { std::ptr::read_volatile(self.addr.cast::<RunHead>()) })
    }

    /// The byte at `offset`, if the mapping has one there.
    fn byte(&self, offset: u64) -> Option<u8> {
        let offset = usize::try_from(offset).ok().filter(|&o| o < self.len)?;
        // SAFETY: within the mapping (checked); volatile, since the kernel writes it.
        Some(unsafe { std::ptr::read_volatile(self.addr.cast::<u8>().add(offset)) })
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
    // SAFETY: each request is passed what <linux/kvm.h> defines for it: nothing, an integer,
    // or a pointer to a live struct of the size the request number encodes.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg) };
    if rc < 0 {
        Err(format!("{what}: {}", std::io::Error::last_os_error()))
    } else {
        Ok(rc)
    }
}

fn ioctl_ptr<T>(fd: &OwnedFd, request: u64, arg: &mut T, what: &str) -> Result<i32, String> {
    ioctl(fd, request, std::ptr::from_mut(arg) as usize, what)
}

/// A descriptor an ioctl just created (a VM, a vCPU).
fn new_fd(fd: &OwnedFd, request: u64, what: &str) -> Result<OwnedFd, String> {
    let raw = ioctl(fd, request, 0, what)?;
    // SAFETY: a successful KVM_CREATE_* returns a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn open_kvm() -> Result<OwnedFd, String> {
    let file = std::fs::OpenOptions::new()
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
    Ok(OwnedFd::from(file))
}

/// Guest-physical layout: code, then the page tables.
const MEM: usize = 0x10000;
const CODE: usize = 0x1000;
const PML4: usize = 0x2000;
const PDPT: usize = 0x3000;
const PD: usize = 0x4000;

/// Runs the probe guest until it halts or `budget` has passed; an error says which step failed.
pub fn run_probe_guest(budget: Duration) -> Result<GuestTiming, String> {
    let kvm = open_kvm()?;
    let api = ioctl(&kvm, KVM_GET_API_VERSION, 0, "KVM_GET_API_VERSION")?;
    if api != 12 {
        return Err(format!("KVM API version {api}, not 12"));
    }
    // Declared before the VM, so that it is unmapped after the VM is gone.
    let mut memory = Mapping::new(MEM, None)?;
    let vm = new_fd(&kvm, KVM_CREATE_VM, "KVM_CREATE_VM")?;
    // Where QEMU puts it: Intel needs the pages for a real-mode TSS, before any vCPU runs.
    ioctl(&vm, KVM_SET_TSS_ADDR, 0xfffb_d000, "KVM_SET_TSS_ADDR")?;

    let code = guest_code();
    let bytes = memory.bytes();
    bytes[CODE..CODE + code.len()].copy_from_slice(&code);
    // PML4[0] → PDPT, PDPT[0] → PD, PD[0]: a 2 MiB page at 0 (present, writable, large).
    for (at, entry) in [(PML4, PDPT as u64 | 3), (PDPT, PD as u64 | 3), (PD, 0x83)] {
        bytes[at..at + 8].copy_from_slice(&entry.to_le_bytes());
    }
    let mut region = MemoryRegion {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: MEM as u64,
        userspace_addr: memory.addr as u64,
    };
    ioctl_ptr(
        &vm,
        KVM_SET_USER_MEMORY_REGION,
        &mut region,
        "KVM_SET_USER_MEMORY_REGION",
    )?;

    let vcpu = new_fd(&vm, KVM_CREATE_VCPU, "KVM_CREATE_VCPU")?;
    // A real KVM refuses long mode to a vCPU whose CPUID lacks it: give it what KVM supports,
    // as every VMM does.
    let mut cpuid = Cpuid {
        header: CpuidHeader {
            nent: 256,
            padding: 0,
        },
        entries: [CpuidEntry::default(); 256],
    };
    ioctl_ptr(
        &kvm,
        KVM_GET_SUPPORTED_CPUID,
        &mut cpuid,
        "KVM_GET_SUPPORTED_CPUID",
    )?;
    ioctl_ptr(&vcpu, KVM_SET_CPUID2, &mut cpuid, "KVM_SET_CPUID2")?;

    let run_size = ioctl(&kvm, KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE")?;
    let run_size = usize::try_from(run_size)
        .ok()
        .filter(|&n| n >= 4096)
        .ok_or_else(|| format!("KVM_GET_VCPU_MMAP_SIZE is {run_size}, less than a page"))?;
    let run = Mapping::new(run_size, Some(&vcpu))?;

    let mut sregs = Sregs::default();
    ioctl_ptr(&vcpu, KVM_GET_SREGS, &mut sregs, "KVM_GET_SREGS")?;
    let code_segment = Segment {
        limit: 0xffff_ffff,
        selector: 0x08,
        kind: 11, // execute/read, accessed
        present: 1,
        s: 1,
        l: 1,
        g: 1,
        ..Segment::default()
    };
    let data_segment = Segment {
        selector: 0x10,
        kind: 3, // read/write, accessed
        l: 0,
        db: 1,
        ..code_segment
    };
    sregs.cs = code_segment;
    for segment in [
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.fs,
        &mut sregs.gs,
        &mut sregs.ss,
    ] {
        *segment = data_segment;
    }
    // As the kernel's KVM selftests set up a 64-bit vCPU: no LDT, and in TR the 64-bit busy TSS
    // that VM entry in long mode requires (the reset state has a 16-bit one).
    sregs.ldt = Segment {
        unusable: 1,
        ..Segment::default()
    };
    sregs.tr = Segment {
        limit: 0x67,
        selector: 0x18,
        kind: 11,
        present: 1,
        ..Segment::default()
    };
    sregs.cr3 = PML4 as u64;
    sregs.cr4 = 1 << 5; // PAE
    sregs.cr0 = 0x8005_0033; // PG, AM, WP, NE, ET, MP, PE
    sregs.efer = 0x500; // LMA, LME
    ioctl_ptr(&vcpu, KVM_SET_SREGS, &mut sregs, "KVM_SET_SREGS")?;
    let mut regs = Regs {
        rip: CODE as u64,
        rflags: 2,
        ..Regs::default()
    };
    ioctl_ptr(&vcpu, KVM_SET_REGS, &mut regs, "KVM_SET_REGS")?;

    let started = Instant::now();
    let mut timing = GuestTiming {
        api,
        chunks: 0,
        best_chunk: Duration::MAX,
    };
    loop {
        let chunk_started = Instant::now();
        ioctl(&vcpu, KVM_RUN, 0, "KVM_RUN of the probe guest")?;
        let took = chunk_started.elapsed();
        let head = run.run_head().ok_or("the kvm_run mapping is too small")?;
        match head.exit_reason {
            KVM_EXIT_IO => {
                let value = run.byte(head.io_data_offset);
                if head.io_port != 0x10 || value != Some(42) {
                    return Err(format!(
                        "the probe guest wrote {value:?} to port {:#x}, not 42 to 0x10",
                        head.io_port
                    ));
                }
                timing.chunks += 1;
                timing.best_chunk = timing.best_chunk.min(took);
                if timing.chunks > CHUNKS {
                    return Err("the probe guest did not stop at its hlt".into());
                }
                if started.elapsed() > budget {
                    return Ok(timing);
                }
            }
            KVM_EXIT_HLT if timing.chunks == CHUNKS => return Ok(timing),
            other => {
                return Err(format!(
                    "the probe guest stopped with {} after {} of {CHUNKS} chunks",
                    exit_name(other),
                    timing.chunks
                ));
            }
        }
    }
}

fn exit_name(reason: u32) -> String {
    let name = match reason {
        0 => "an unknown exit",
        5 => "a premature hlt",
        6 => "an MMIO exit (a page the guest should not touch)",
        8 => "a shutdown (the guest triple-faulted)",
        9 => "a failed VM entry",
        17 => "a KVM internal error",
        _ => return format!("exit reason {reason}"),
    };
    format!("{name} (exit reason {reason})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ioctl_numbers_are_the_headers() {
        // As <linux/kvm.h> expands them on x86-64.
        assert_eq!(KVM_SET_USER_MEMORY_REGION, 0x4020_AE46);
        assert_eq!(KVM_SET_REGS, 0x4090_AE82);
        assert_eq!(KVM_GET_SREGS, 0x8138_AE83);
        assert_eq!(KVM_SET_SREGS, 0x4138_AE84);
        assert_eq!(KVM_GET_SUPPORTED_CPUID, 0xC008_AE05);
        assert_eq!(KVM_SET_CPUID2, 0x4008_AE90);
        assert_eq!(KVM_RUN, 0xAE80);
    }
}
