//! QEMU's command line for a VM spec: pure, so that what a VM runs with can be read and tested
//! without starting it.

use std::path::{Path, PathBuf};

use slipway_core::Firmware;
use slipway_core::catalog::{DiskBus, MachineType, NicModel};
use slipway_core::vm::{NetworkMode, VmSpec};

/// Where a VM's files are.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn disk(&self, i: usize) -> PathBuf {
        self.dir.join(format!("disk{i}.qcow2"))
    }
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    /// For commands (status, power-down).
    pub fn qmp(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    /// For the watcher, which waits on events: QEMU serves one client per QMP socket.
    pub fn events(&self) -> PathBuf {
        self.dir.join("events.sock")
    }
    pub fn pidfile(&self) -> PathBuf {
        self.dir.join("qemu.pid")
    }
    pub fn uefi_vars(&self) -> PathBuf {
        self.dir.join("uefi-vars.fd")
    }
    pub fn record(&self) -> PathBuf {
        self.dir.join("vm.json")
    }
}

/// Firmware files for UEFI: the read-only code and the template of the variable store.
#[derive(Debug, Clone)]
pub struct Ovmf {
    pub code: PathBuf,
    pub vars: PathBuf,
}

/// OVMF as Debian's `ovmf` package installs it (4M first), and as others do.
pub fn find_ovmf() -> Option<Ovmf> {
    [
        (
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        ),
        (
            "/usr/share/OVMF/OVMF_CODE.fd",
            "/usr/share/OVMF/OVMF_VARS.fd",
        ),
        (
            "/usr/share/edk2/ovmf/OVMF_CODE.fd",
            "/usr/share/edk2/ovmf/OVMF_VARS.fd",
        ),
    ]
    .into_iter()
    .map(|(c, v)| Ovmf {
        code: c.into(),
        vars: v.into(),
    })
    .find(|o| o.code.is_file() && o.vars.is_file())
}

/// QEMU splits option values at commas; a literal comma is doubled.
fn escape(value: &str) -> String {
    value.replace(',', ",,")
}

fn path(p: &Path) -> String {
    escape(&p.display().to_string())
}

fn nic_device(model: NicModel) -> &'static str {
    match model {
        NicModel::Virtio => "virtio-net-pci",
        NicModel::E1000 => "e1000",
        NicModel::E1000e => "e1000e",
        NicModel::Rtl8139 => "rtl8139",
        NicModel::Vmxnet3 => "vmxnet3",
    }
}

/// The arguments after the program name. `accelerator` is `kvm` or `tcg`.
pub fn argv(spec: &VmSpec, layout: &Layout, accelerator: &str, ovmf: Option<&Ovmf>) -> Vec<String> {
    let hw = &spec.hardware;
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&[
        "-name",
        &format!("{},process=slipway-vm-{}", escape(&spec.name), spec.id),
    ]);
    push(&["-uuid", &spec.uuid]);
    push(&[
        "-machine",
        &format!("{},accel={accelerator}", hw.machine_type.as_str()),
    ]);
    // TCG emulates the most capable CPU it can; KVM passes the host's through.
    push(&["-cpu", if accelerator == "kvm" { "host" } else { "max" }]);
    push(&[
        "-smp",
        &hw.vcpus.to_string(),
        "-m",
        &format!("{}M", hw.memory_mib),
    ]);
    push(&[
        "-smbios",
        &format!("type=1,serial={}", escape(&spec.smbios_serial)),
    ]);
    push(&["-nodefaults", "-display", "none", "-no-user-config"]);
    // The console keeps its log across restarts of the VM.
    push(&[
        "-chardev",
        &format!("file,id=console,path={},append=on", path(&layout.console())),
        "-serial",
        "chardev:console",
    ]);
    push(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", path(&layout.qmp())),
    ]);
    push(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", path(&layout.events())),
    ]);
    push(&["-daemonize", "-pidfile", &path(&layout.pidfile())]);
    if hw.firmware == Firmware::Uefi
        && let Some(ovmf) = ovmf
    {
        push(&[
            "-drive",
            &format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                path(&ovmf.code)
            ),
            "-drive",
            &format!(
                "if=pflash,format=raw,unit=1,file={}",
                path(&layout.uefi_vars())
            ),
        ]);
    }
    let mut scsi = false;
    let mut ahci = false;
    for (i, disk) in hw.disks.iter().enumerate() {
        push(&[
            "-drive",
            &format!(
                "file={},if=none,id=d{i},format=qcow2,cache=writeback,discard=unmap",
                path(&layout.disk(i))
            ),
        ]);
        let boot = if i == 0 { ",bootindex=0" } else { "" };
        let device = match disk.bus {
            DiskBus::Virtio => format!("virtio-blk-pci,drive=d{i}{boot}"),
            DiskBus::Nvme => format!("nvme,drive=d{i},serial=slipway{i}{boot}"),
            DiskBus::Scsi => {
                if !scsi {
                    push(&["-device", "virtio-scsi-pci,id=scsi0"]);
                    scsi = true;
                }
                format!("scsi-hd,drive=d{i},bus=scsi0.0{boot}")
            }
            DiskBus::Sata if hw.machine_type == MachineType::Q35 => {
                format!("ide-hd,drive=d{i},bus=ide.{i}{boot}")
            }
            DiskBus::Sata => {
                if !ahci {
                    push(&["-device", "ahci,id=ahci0"]);
                    ahci = true;
                }
                format!("ide-hd,drive=d{i},bus=ahci0.{i}{boot}")
            }
            DiskBus::Ide => format!("ide-hd,drive=d{i},bus=ide.{},unit={}{boot}", i / 2, i % 2),
        };
        push(&["-device", &device]);
    }
    for (i, nic) in hw.nics.iter().enumerate() {
        let netdev = match &spec.network {
            NetworkMode::User => format!("user,id=n{i}"),
            NetworkMode::Tap { device } => {
                format!(
                    "tap,id=n{i},ifname={},script=no,downscript=no",
                    escape(device)
                )
            }
            NetworkMode::Bridge { bridge } => format!("bridge,id=n{i},br={}", escape(bridge)),
        };
        push(&["-netdev", &netdev]);
        let mac = spec.macs.get(i).map(String::as_str).unwrap_or_default();
        push(&[
            "-device",
            &format!("{},netdev=n{i},mac={mac}", nic_device(nic.model)),
        ]);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_core::catalog::{DiskSpec, HardwareConfig, NicSpec};

    fn spec() -> VmSpec {
        VmSpec {
            id: "vm1".into(),
            uuid: "6f1b2c3d-0000-4000-8000-000000000001".into(),
            name: "web,1".into(),
            base_image: "ab".repeat(32),
            clone: Default::default(),
            hardware: HardwareConfig {
                vcpus: 2,
                memory_mib: 1536,
                disks: vec![
                    DiskSpec {
                        size_mib: 128,
                        bus: DiskBus::Nvme,
                        image: None,
                    },
                    DiskSpec {
                        size_mib: 64,
                        bus: DiskBus::Scsi,
                        image: None,
                    },
                ],
                nics: vec![NicSpec {
                    model: NicModel::Virtio,
                }],
                firmware: Firmware::Bios,
                arch: slipway_core::Arch::X86_64,
                machine_type: MachineType::Q35,
            },
            macs: vec!["52:54:00:12:34:56".into()],
            network: NetworkMode::User,
            smbios_serial: "ds=nocloud-net;s=http://10.0.2.2:7780/v1/seed/t/".into(),
        }
    }

    #[test]
    fn the_command_line_names_every_device() {
        let layout = Layout {
            dir: "/data/vms/vm1".into(),
        };
        let a = argv(&spec(), &layout, "tcg", None).join(" ");
        for part in [
            "-name web,,1,process=slipway-vm-vm1",
            "-machine q35,accel=tcg -cpu max -smp 2 -m 1536M",
            "-smbios type=1,serial=ds=nocloud-net;s=http://10.0.2.2:7780/v1/seed/t/",
            "-device nvme,drive=d0,serial=slipway0,bootindex=0",
            "-device virtio-scsi-pci,id=scsi0 -device scsi-hd,drive=d1,bus=scsi0.0",
            "-netdev user,id=n0 -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56",
            "-daemonize -pidfile /data/vms/vm1/qemu.pid",
        ] {
            assert!(a.contains(part), "{part} not in {a}");
        }
    }
}
