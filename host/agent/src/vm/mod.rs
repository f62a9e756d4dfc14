//! The VMs this host runs, with QEMU: their disks made from the cached base (a copy-on-write
//! overlay, or a whole copy), QEMU started detached (`-daemonize`: its own session, so that it
//! outlives the agent), controlled over QMP, its serial console logged to a file.
//!
//! Each VM lives in `<data-dir>/vms/<id>/`: `vm.json` (its spec, QEMU's pid, whether it should
//! run, its state), its disks, `console.log`, two QMP sockets (commands; events, for the watcher)
//! and QEMU's pidfile. Beside it, `<data-dir>/vms/<id>.json` is the small report heartbeats carry.
//! At start the agent re-adopts every VM whose QEMU still runs (the pid alive, its command line
//! naming the VM) and records the others as stopped, or crashed if they should have run.
//!
//! A watcher per running VM waits on QMP events: QEMU exiting after the guest shut itself down
//! (`SHUTDOWN` with `guest: true`) or after the agent asked is `stopped`; exiting otherwise is
//! `crashed`.

pub mod qemu;
pub mod qmp;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use slipway_core::agent::{VmReport, VmState};
use slipway_core::vm::{CloneMode, VmRunState, VmSpec, VmStatus};

use qemu::{Layout, Ovmf};
use qmp::Qmp;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("no VM {0} on this host")]
    NotFound(String),
    #[error("VM {0} exists with another spec")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("base image {0} is not cached on this host")]
    NoBase(String),
    #[error("{0}")]
    Qemu(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
    let context = context.into();
    move |source| VmError::Io { context, source }
}

/// What is kept of a VM in `vm.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    spec: VmSpec,
    #[serde(default)]
    pid: Option<u32>,
    /// Whether it should be running: set by start, cleared by stop.
    want_running: bool,
    state: VmRunState,
    #[serde(default)]
    error: Option<String>,
    /// The guest shut itself down (QMP `SHUTDOWN` with `guest: true`).
    #[serde(default)]
    guest_shutdown: bool,
    /// Being deleted: nothing writes its files any more.
    #[serde(skip)]
    deleted: bool,
}

struct Vm {
    layout: Layout,
    record: Mutex<Record>,
}

pub struct Vms {
    dir: PathBuf,
    images: PathBuf,
    qemu: Option<PathBuf>,
    accelerator: String,
    ovmf: Option<Ovmf>,
    vms: Mutex<HashMap<String, Arc<Vm>>>,
}

/// Whether `pid` is this VM's QEMU: alive, and its command line names the VM.
fn is_our_qemu(pid: u32, id: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let marker = format!("process=slipway-vm-{id}");
    cmdline
        .split(|b| *b == 0)
        .any(|arg| String::from_utf8_lossy(arg).contains(&marker))
}

fn kill(pid: u32, signal: i32) {
    // SAFETY: kill(2) with a pid we checked is our QEMU; no memory is involved.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn id_ok(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl Vms {
    /// Opens the VMs of `data_dir`, adopting those whose QEMU still runs.
    pub fn open(
        data_dir: &Path,
        qemu: Option<PathBuf>,
        accelerator: &str,
    ) -> Result<Arc<Self>, VmError> {
        let dir = data_dir.join("vms");
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let vms = Arc::new(Self {
            dir: dir.clone(),
            images: data_dir.join("images"),
            qemu,
            accelerator: accelerator.to_owned(),
            ovmf: qemu::find_ovmf(),
            vms: Mutex::new(HashMap::new()),
        });
        for entry in std::fs::read_dir(&dir).map_err(io(format!("listing {}", dir.display())))? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with(".creating-") {
                // A creation a crash interrupted: nothing ran from it.
                let _ = std::fs::remove_dir_all(&path);
                continue;
            }
            if !path.is_dir() || !id_ok(&name) {
                continue;
            }
            let layout = Layout { dir: path.clone() };
            let Ok(bytes) = std::fs::read(layout.record()) else {
                continue;
            };
            let Ok(mut record) = serde_json::from_slice::<Record>(&bytes) else {
                tracing::warn!(vm = %name, "unreadable vm.json; leaving the VM alone");
                continue;
            };
            let running = record.pid.is_some_and(|pid| is_our_qemu(pid, &name));
            if running {
                record.state = VmRunState::Running;
                tracing::info!(vm = %name, pid = ?record.pid, "re-adopted a running VM");
            } else if record.state == VmRunState::Running {
                record.state = if record.want_running && !record.guest_shutdown {
                    VmRunState::Crashed
                } else {
                    VmRunState::Stopped
                };
                record.pid = None;
            }
            let vm = Arc::new(Vm {
                layout,
                record: Mutex::new(record),
            });
            vms.save(&name, &vm);
            vms.vms
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.clone(), vm.clone());
            if running {
                vms.watch(name, vm);
            }
        }
        Ok(vms)
    }

    fn get(&self, id: &str) -> Result<Arc<Vm>, VmError> {
        self.vms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| VmError::NotFound(id.to_owned()))
    }

    /// Writes `vm.json` and the heartbeat's report.
    fn save(&self, id: &str, vm: &Vm) {
        let record = vm.record.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if record.deleted {
            return;
        }
        if let Err(e) = write_atomic(
            &vm.layout.record(),
            &serde_json::to_vec_pretty(&record).unwrap_or_default(),
        ) {
            tracing::error!(vm = %id, error = %e, "writing vm.json");
        }
        let report = VmReport {
            id: id.to_owned(),
            state: match record.state {
                VmRunState::Creating => VmState::Creating,
                VmRunState::Running => VmState::Running,
                VmRunState::Stopped => VmState::Stopped,
                VmRunState::Crashed => VmState::Failed,
            },
        };
        let _ = write_atomic(
            &self.dir.join(format!("{id}.json")),
            &serde_json::to_vec(&report).unwrap_or_default(),
        );
    }

    fn status_of(&self, id: &str, vm: &Vm) -> VmStatus {
        let record = vm.record.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let disk_bytes = std::fs::read_dir(&vm.layout.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".qcow2"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                m.blocks() * 512
            })
            .sum();
        VmStatus {
            id: id.to_owned(),
            state: record.state,
            pid: record.pid.filter(|_| record.state == VmRunState::Running),
            qmp_status: None,
            accelerator: self.accelerator.clone(),
            disk_bytes,
            error: record.error,
        }
    }

    /// Every VM's status.
    pub fn list(&self) -> Vec<VmStatus> {
        let all: Vec<(String, Arc<Vm>)> = self
            .vms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut out: Vec<VmStatus> = all.iter().map(|(id, vm)| self.status_of(id, vm)).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// One VM's status, with QEMU's own word on it while it runs.
    pub async fn status(&self, id: &str) -> Result<VmStatus, VmError> {
        let vm = self.get(id)?;
        let mut status = self.status_of(id, &vm);
        if status.state == VmRunState::Running
            && let Ok(Ok(mut qmp)) =
                tokio::time::timeout(Duration::from_secs(2), Qmp::connect(&vm.layout.qmp())).await
            && let Ok(answer) = qmp.execute("query-status", None).await
        {
            status.qmp_status = answer["status"].as_str().map(str::to_owned);
        }
        Ok(status)
    }

    /// Creates the VM's disks and starts it. The same spec again is the VM it made: answered as
    /// it is (`false`); another spec under the same id is a conflict.
    pub async fn create(self: &Arc<Self>, spec: VmSpec) -> Result<(VmStatus, bool), VmError> {
        if !id_ok(&spec.id) {
            return Err(VmError::Invalid(format!("{:?} is not a VM id", spec.id)));
        }
        if let Ok(vm) = self.get(&spec.id) {
            let same = vm.record.lock().unwrap_or_else(|e| e.into_inner()).spec == spec;
            return if same {
                Ok((self.status(&spec.id).await?, false))
            } else {
                Err(VmError::Conflict(spec.id))
            };
        }
        let hw = &spec.hardware;
        if hw.disks.is_empty() {
            return Err(VmError::Invalid("a VM needs its boot disk".into()));
        }
        if spec.macs.len() != hw.nics.len() {
            return Err(VmError::Invalid(format!(
                "{} NICs but {} MACs",
                hw.nics.len(),
                spec.macs.len()
            )));
        }
        if hw.arch != slipway_core::Arch::X86_64 {
            return Err(VmError::Invalid(format!(
                "this host runs x86_64 VMs, not {}",
                hw.arch
            )));
        }
        if hw.firmware == slipway_core::Firmware::Uefi && self.ovmf.is_none() {
            return Err(VmError::Invalid(
                "UEFI firmware (OVMF) is not installed on this host".into(),
            ));
        }
        let base = self.images.join(&spec.base_image);
        if !slipway_core::catalog::is_digest(&spec.base_image) || !base.is_file() {
            return Err(VmError::NoBase(spec.base_image.clone()));
        }
        let Some(qemu) = self.qemu.clone() else {
            return Err(VmError::Qemu("QEMU is not installed on this host".into()));
        };
        // Made aside and renamed into place, so that a failure leaves no half-made VM.
        let building = self.dir.join(format!(".creating-{}", spec.id));
        let _ = std::fs::remove_dir_all(&building);
        std::fs::create_dir(&building).map_err(io(format!("creating {}", building.display())))?;
        let made = self.make_disks(&spec, &base, &building).await;
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&building);
            return Err(e);
        }
        let layout = Layout {
            dir: self.dir.join(&spec.id),
        };
        let record = Record {
            spec: spec.clone(),
            pid: None,
            want_running: true,
            state: VmRunState::Creating,
            error: None,
            guest_shutdown: false,
            deleted: false,
        };
        write_atomic(
            &building.join("vm.json"),
            &serde_json::to_vec_pretty(&record).unwrap_or_default(),
        )
        .map_err(io("writing vm.json"))?;
        std::fs::rename(&building, &layout.dir).map_err(io("moving the VM into place"))?;
        let vm = Arc::new(Vm {
            layout,
            record: Mutex::new(record),
        });
        self.vms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(spec.id.clone(), vm.clone());
        if let Err(e) = self.launch(&spec.id, &vm, &qemu).await {
            // Nothing of it runs: it goes, whole.
            self.vms
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&spec.id);
            let _ = std::fs::remove_dir_all(&vm.layout.dir);
            let _ = std::fs::remove_file(self.dir.join(format!("{}.json", spec.id)));
            return Err(e);
        }
        Ok((self.status(&spec.id).await?, true))
    }

    async fn make_disks(&self, spec: &VmSpec, base: &Path, dir: &Path) -> Result<(), VmError> {
        let layout = Layout { dir: dir.into() };
        for (i, disk) in spec.hardware.disks.iter().enumerate() {
            let target = layout.disk(i);
            let size = format!("{}M", disk.size_mib);
            let mut command = tokio::process::Command::new("qemu-img");
            match (i, spec.clone) {
                (0, CloneMode::Linked) => {
                    command
                        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
                        .arg(base)
                        .arg(&target)
                        .arg(&size);
                }
                (0, CloneMode::Full) => {
                    command
                        .args(["convert", "-q", "-O", "qcow2", "-f", "qcow2"])
                        .arg(base)
                        .arg(&target);
                }
                _ => {
                    command
                        .args(["create", "-q", "-f", "qcow2"])
                        .arg(&target)
                        .arg(&size);
                }
            }
            run(command, "qemu-img").await?;
            if i == 0 && spec.clone == CloneMode::Full {
                let mut resize = tokio::process::Command::new("qemu-img");
                resize
                    .args(["resize", "-q", "-f", "qcow2"])
                    .arg(&target)
                    .arg(&size);
                // A size below the image's is refused by qemu-img; the image's size stands.
                let _ = run(resize, "qemu-img resize").await;
            }
        }
        if spec.hardware.firmware == slipway_core::Firmware::Uefi
            && let Some(ovmf) = &self.ovmf
        {
            std::fs::copy(&ovmf.vars, layout.uefi_vars())
                .map_err(io("copying the UEFI variables"))?;
        }
        Ok(())
    }

    /// Starts QEMU for a VM whose disks exist.
    async fn launch(self: &Arc<Self>, id: &str, vm: &Arc<Vm>, qemu: &Path) -> Result<(), VmError> {
        let spec = vm
            .record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .spec
            .clone();
        let _ = std::fs::remove_file(vm.layout.pidfile());
        let args = qemu::argv(&spec, &vm.layout, &self.accelerator, self.ovmf.as_ref());
        let mut command = tokio::process::Command::new(qemu);
        command.args(&args).stdin(std::process::Stdio::null());
        // With -daemonize the first process exits once QEMU is set up; its errors come before.
        let out = tokio::time::timeout(Duration::from_secs(60), command.output())
            .await
            .map_err(|_| VmError::Qemu("QEMU did not start within 60 s".into()))?
            .map_err(io("running QEMU"))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(VmError::Qemu(format!(
                "QEMU refused to start: {}",
                err.trim().chars().take(2000).collect::<String>()
            )));
        }
        let pid: u32 = std::fs::read_to_string(vm.layout.pidfile())
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| VmError::Qemu("QEMU started but wrote no pidfile".into()))?;
        {
            let mut r = vm.record.lock().unwrap_or_else(|e| e.into_inner());
            r.pid = Some(pid);
            r.want_running = true;
            r.guest_shutdown = false;
            r.state = VmRunState::Running;
            r.error = None;
        }
        self.save(id, vm);
        tracing::info!(vm = %id, pid, "QEMU started");
        self.watch(id.to_owned(), vm.clone());
        Ok(())
    }

    /// Follows a running VM's QMP events until QEMU exits, then records how it ended.
    fn watch(self: &Arc<Self>, id: String, vm: Arc<Vm>) {
        let vms = self.clone();
        tokio::spawn(async move {
            let mut qmp = None;
            for _ in 0..50 {
                match Qmp::connect(&vm.layout.events()).await {
                    Ok(q) => {
                        qmp = Some(q);
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            if let Some(mut qmp) = qmp {
                while let Ok(event) = qmp.next_event().await {
                    if event["event"] == "SHUTDOWN" && event["data"]["guest"] == true {
                        vm.record
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .guest_shutdown = true;
                    }
                }
            }
            // The socket closed: QEMU is exiting. Wait for the process to go.
            let pid = vm.record.lock().unwrap_or_else(|e| e.into_inner()).pid;
            if let Some(pid) = pid {
                let deadline = Instant::now() + Duration::from_secs(30);
                while is_our_qemu(pid, &id) && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            let ended = {
                let mut r = vm.record.lock().unwrap_or_else(|e| e.into_inner());
                if r.pid != pid || r.state != VmRunState::Running {
                    return; // started again meanwhile, or already recorded
                }
                r.pid = None;
                if r.want_running && !r.guest_shutdown {
                    r.state = VmRunState::Crashed;
                    r.error = Some("QEMU exited without being asked to".into());
                } else {
                    r.state = VmRunState::Stopped;
                }
                r.state
            };
            tracing::info!(vm = %id, state = ?ended, "QEMU exited");
            vms.save(&id, &vm);
        });
    }

    /// Waits for QEMU to exit; whether it did within `limit`.
    async fn exited(&self, id: &str, pid: u32, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if !is_our_qemu(pid, id) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Powers the guest down (ACPI), then stops QEMU hard after `timeout`.
    pub async fn stop(&self, id: &str, timeout: Duration) -> Result<VmStatus, VmError> {
        let vm = self.get(id)?;
        let pid = {
            let mut r = vm.record.lock().unwrap_or_else(|e| e.into_inner());
            r.want_running = false;
            r.pid
        };
        if let Some(pid) = pid.filter(|p| is_our_qemu(*p, id)) {
            if let Ok(mut qmp) = Qmp::connect(&vm.layout.qmp()).await {
                let _ = qmp.execute("system_powerdown", None).await;
            }
            if !self.exited(id, pid, timeout).await {
                tracing::info!(vm = %id, "the guest did not power down in time; stopping it hard");
                kill(pid, libc::SIGKILL);
                self.exited(id, pid, Duration::from_secs(5)).await;
            }
        }
        {
            let mut r = vm.record.lock().unwrap_or_else(|e| e.into_inner());
            r.pid = None;
            r.state = VmRunState::Stopped;
        }
        self.save(id, &vm);
        Ok(self.status_of(id, &vm))
    }

    /// Starts a stopped VM again, with the same disks.
    pub async fn start(self: &Arc<Self>, id: &str) -> Result<VmStatus, VmError> {
        let vm = self.get(id)?;
        let running =
            vm.record.lock().unwrap_or_else(|e| e.into_inner()).state == VmRunState::Running;
        if !running {
            let Some(qemu) = self.qemu.clone() else {
                return Err(VmError::Qemu("QEMU is not installed on this host".into()));
            };
            self.launch(id, &vm, &qemu).await?;
        }
        self.status(id).await
    }

    /// Stops QEMU hard if it runs, and removes the VM's files.
    pub async fn delete(&self, id: &str) -> Result<VmStatus, VmError> {
        let vm = self.get(id)?;
        let pid = {
            let mut r = vm.record.lock().unwrap_or_else(|e| e.into_inner());
            r.want_running = false;
            r.deleted = true;
            r.pid
        };
        if let Some(pid) = pid.filter(|p| is_our_qemu(*p, id)) {
            if let Ok(mut qmp) = Qmp::connect(&vm.layout.qmp()).await {
                let _ = qmp.execute("quit", None).await;
            }
            if !self.exited(id, pid, Duration::from_secs(5)).await {
                kill(pid, libc::SIGKILL);
                self.exited(id, pid, Duration::from_secs(5)).await;
            }
        }
        let mut status = self.status_of(id, &vm);
        status.state = VmRunState::Stopped;
        status.pid = None;
        self.vms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        // QEMU may still be closing its files as it goes: once more after a moment.
        if std::fs::remove_dir_all(&vm.layout.dir).is_err() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            std::fs::remove_dir_all(&vm.layout.dir)
                .map_err(io(format!("removing {}", vm.layout.dir.display())))?;
        }
        let _ = std::fs::remove_file(self.dir.join(format!("{id}.json")));
        tracing::info!(vm = %id, "VM deleted");
        Ok(status)
    }

    /// The last `bytes` of the VM's console log.
    pub fn console(&self, id: &str, bytes: u64) -> Result<Vec<u8>, VmError> {
        use std::io::{Read, Seek, SeekFrom};
        let vm = self.get(id)?;
        let path = vm.layout.console();
        let Ok(mut file) = std::fs::File::open(&path) else {
            return Ok(Vec::new());
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let start = len.saturating_sub(bytes);
        file.seek(SeekFrom::Start(start))
            .map_err(io("reading the console"))?;
        let mut out = Vec::new();
        file.take(bytes)
            .read_to_end(&mut out)
            .map_err(io("reading the console"))?;
        Ok(out)
    }

    /// Whether any VM uses `digest` as its base (the image cache keeps those).
    pub fn uses(&self, digest: &str) -> bool {
        self.vms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .any(|vm| {
                let r = vm.record.lock().unwrap_or_else(|e| e.into_inner());
                r.spec.base_image == digest && r.spec.clone == CloneMode::Linked
            })
    }
}

async fn run(mut command: tokio::process::Command, what: &str) -> Result<(), VmError> {
    let out = command
        .output()
        .await
        .map_err(io(format!("running {what}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(VmError::Qemu(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
