//! The first-boot path end to end: wiring into trees shaped like real distributions, refusing
//! hostile trees, and the agent binary against a real HTTP seed server on loopback.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use slipway_guest::{
    Action, AgentBinary, Change, FirstBoot, InitSystem, WireError, has_cloud_init, wire_first_boot,
};
use tempfile::TempDir;

const AGENT_BYTES: &[u8] = b"\x7fELF\x02\x01\x01 stand-in for the static agent";

fn plan(init_system: InitSystem) -> FirstBoot {
    FirstBoot {
        init_system,
        agent: AgentBinary::Bytes(AGENT_BYTES.to_vec()),
    }
}

/// Writes files (and their parent directories) into a tree.
fn put(root: &Path, files: &[(&str, &str)]) {
    for (path, contents) in files {
        let p = root.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, contents).unwrap();
    }
}

fn dirs(root: &Path, list: &[&str]) {
    for d in list {
        fs::create_dir_all(root.join(d)).unwrap();
    }
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

fn link(path: &Path) -> String {
    fs::read_link(path).unwrap().to_string_lossy().into_owned()
}

fn text(path: &Path) -> String {
    fs::read_to_string(path).unwrap()
}

/// Everything about a tree that wiring could change: kind, mode, owner, size, mtime, content or
/// link target of every entry, not following links.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let m = fs::symlink_metadata(&path).unwrap();
            let what = if m.file_type().is_symlink() {
                format!("link {}", link(&path))
            } else if m.is_dir() {
                walk(root, &path, out);
                "dir".into()
            } else {
                format!("file {:?}", fs::read(&path).unwrap())
            };
            let rel = path.strip_prefix(root).unwrap().to_owned();
            let stamp = if m.file_type().is_symlink() {
                0
            } else {
                m.mtime_nsec() + m.mtime() * 1_000_000_000
            };
            out.insert(
                rel,
                format!(
                    "{what} mode={:o} uid={} gid={} mtime={stamp}",
                    m.mode(),
                    m.uid(),
                    m.gid()
                ),
            );
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Wires, then wires again and checks that the second time changed nothing at all.
fn wire_twice(root: &Path, plan: &FirstBoot) -> Vec<Change> {
    let first = wire_first_boot(root, plan).unwrap();
    let before = snapshot(root);
    let second = wire_first_boot(root, plan).unwrap();
    assert_eq!(snapshot(root), before, "a second wiring changed the tree");
    assert!(
        second.iter().all(|c| c.action == Action::Unchanged),
        "second wiring: {second:#?}"
    );
    first
}

fn changed(changes: &[Change], path: &str) -> Action {
    changes
        .iter()
        .find(|c| c.path == path)
        .unwrap_or_else(|| panic!("{path} not in {changes:#?}"))
        .action
}

fn assert_root_owned(path: &Path) {
    let m = fs::symlink_metadata(path).unwrap();
    assert_eq!(
        (m.uid(), m.gid()),
        (0, 0),
        "{} is not root:root",
        path.display()
    );
}

/// Checks the agent itself and its state directory.
fn assert_agent_installed(root: &Path, changes: &[Change]) {
    let agent = root.join("usr/local/sbin/slipway-firstboot");
    assert_eq!(fs::read(&agent).unwrap(), AGENT_BYTES);
    assert_eq!(mode(&agent), 0o755);
    assert_root_owned(&agent);
    let state = root.join("var/lib/slipway");
    assert!(fs::symlink_metadata(&state).unwrap().is_dir());
    assert_eq!(mode(&state), 0o755);
    assert_eq!(
        changed(changes, "usr/local/sbin/slipway-firstboot"),
        Action::Created
    );
    assert!(
        !root.join("etc/cloud").exists(),
        "no cloud-init setting without cloud-init"
    );
}

fn debian_systemd(root: &Path) {
    put(
        root,
        &[
            ("etc/os-release", "ID=debian\nVERSION_ID=\"12\"\n"),
            ("etc/machine-id", ""),
            ("usr/lib/systemd/systemd", "elf"),
            (
                "etc/systemd/system/multi-user.target.wants/ssh.service",
                "stand-in",
            ),
        ],
    );
    dirs(root, &["usr/bin", "usr/local/sbin"]);
    // Merged /usr, as Debian bookworm has it.
    symlink("usr/bin", root.join("bin")).unwrap();
    symlink("usr/sbin", root.join("sbin")).unwrap();
}

#[test]
fn wires_systemd_in_a_debian_tree() {
    let t = TempDir::new().unwrap();
    let root = t.path();
    debian_systemd(root);
    let changes = wire_twice(root, &plan(InitSystem::Systemd));
    assert_agent_installed(root, &changes);

    let unit = root.join("etc/systemd/system/slipway-firstboot.service");
    let body = text(&unit);
    assert_eq!(mode(&unit), 0o644);
    assert_root_owned(&unit);
    for line in [
        "Type=oneshot",
        "ExecStart=/usr/local/sbin/slipway-firstboot",
        "RemainAfterExit=yes",
        "After=network-online.target",
        "Wants=network-online.target",
        "WantedBy=multi-user.target",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "unit lacks {line:?}:\n{body}"
        );
    }
    let wants = root.join("etc/systemd/system/multi-user.target.wants/slipway-firstboot.service");
    assert_eq!(
        link(&wants),
        "/etc/systemd/system/slipway-firstboot.service"
    );
    assert_root_owned(&wants);
    assert_eq!(
        changed(&changes, "etc/systemd/system/slipway-firstboot.service"),
        Action::Created
    );
    // The tree's own files are left alone.
    assert_eq!(
        text(&root.join("etc/systemd/system/multi-user.target.wants/ssh.service")),
        "stand-in"
    );
}

#[test]
fn wires_openrc_in_an_alpine_tree() {
    let t = TempDir::new().unwrap();
    let root = t.path();
    put(
        root,
        &[
            ("etc/alpine-release", "3.20.3\n"),
            ("sbin/openrc-run", "elf"),
            ("etc/init.d/sshd", "#!/sbin/openrc-run\n"),
            ("etc/inittab", "::sysinit:/sbin/openrc sysinit\n"),
        ],
    );
    dirs(root, &["etc/runlevels/default"]);
    symlink("/etc/init.d/sshd", root.join("etc/runlevels/default/sshd")).unwrap();

    let changes = wire_twice(root, &plan(InitSystem::Openrc));
    assert_agent_installed(root, &changes);
    let script = root.join("etc/init.d/slipway-firstboot");
    let body = text(&script);
    assert!(body.starts_with("#!/sbin/openrc-run\n"), "{body}");
    assert!(body.contains("depend() {\n\tneed net\n"), "{body}");
    assert!(
        body.contains("\t/usr/local/sbin/slipway-firstboot\n"),
        "{body}"
    );
    assert_eq!(mode(&script), 0o755);
    assert_root_owned(&script);
    let runlevel = root.join("etc/runlevels/default/slipway-firstboot");
    assert_eq!(link(&runlevel), "/etc/init.d/slipway-firstboot");
    // OpenRC's own inittab is not busybox's: untouched.
    assert_eq!(
        text(&root.join("etc/inittab")),
        "::sysinit:/sbin/openrc sysinit\n"
    );
}

#[test]
fn wires_sysvinit() {
    let t = TempDir::new().unwrap();
    let root = t.path();
    put(
        root,
        &[
            ("sbin/init", "elf"),
            ("etc/init.d/ssh", "#!/bin/sh\n"),
            ("etc/inittab", "id:2:initdefault:\n"),
        ],
    );
    for n in 2..=5 {
        dirs(root, &[&format!("etc/rc{n}.d")]);
        symlink("../init.d/ssh", root.join(format!("etc/rc{n}.d/S02ssh"))).unwrap();
    }
    let changes = wire_twice(root, &plan(InitSystem::Sysvinit));
    assert_agent_installed(root, &changes);
    let script = root.join("etc/init.d/slipway-firstboot");
    let body = text(&script);
    assert!(body.starts_with("#!/bin/sh\n"));
    assert!(
        body.contains("### BEGIN INIT INFO\n# Provides:          slipway-firstboot\n"),
        "{body}"
    );
    assert!(body.contains("# Default-Start:     2 3 4 5\n"));
    assert!(
        body.contains("  start)\n    /usr/local/sbin/slipway-firstboot\n"),
        "{body}"
    );
    assert_eq!(mode(&script), 0o755);
    for n in 2..=5 {
        let l = root.join(format!("etc/rc{n}.d/S01slipway-firstboot"));
        // S01: before the SSH server (S02ssh here), which needs the host keys the agent makes.
        assert_eq!(link(&l), "../init.d/slipway-firstboot");
    }
    assert!(!root.join("etc/rc1.d").exists());
    assert_eq!(text(&root.join("etc/inittab")), "id:2:initdefault:\n");
}

#[test]
fn wires_busybox_with_an_inittab() {
    let t = TempDir::new().unwrap();
    let root = t.path();
    let inittab = "::sysinit:/etc/init.d/rcS\n::respawn:/sbin/getty -L 0 ttyS0 vt100\n::shutdown:/bin/umount -a -r";
    put(
        root,
        &[
            ("bin/busybox", "elf"),
            ("etc/inittab", inittab),
            ("etc/init.d/rcS", "#!/bin/sh\nexit 0\n"),
        ],
    );
    fs::set_permissions(root.join("etc/inittab"), fs::Permissions::from_mode(0o600)).unwrap();

    let changes = wire_twice(root, &plan(InitSystem::Busybox));
    assert_agent_installed(root, &changes);
    let after = text(&root.join("etc/inittab"));
    assert!(
        after.starts_with(inittab),
        "existing lines are kept in order:\n{after}"
    );
    assert_eq!(
        after
            .matches("::once:/usr/local/sbin/slipway-firstboot\n")
            .count(),
        1,
        "{after}"
    );
    assert!(after.ends_with("::once:/usr/local/sbin/slipway-firstboot\n"));
    // Its mode is kept; the rcS that inittab names is not touched.
    assert_eq!(mode(&root.join("etc/inittab")), 0o600);
    assert_eq!(text(&root.join("etc/init.d/rcS")), "#!/bin/sh\nexit 0\n");
    assert_eq!(changed(&changes, "etc/inittab"), Action::Updated);
}

#[test]
fn wires_busybox_rcs_without_an_inittab() {
    // An existing rcS that ends in `exit 0`: the agent goes before it.
    let t = TempDir::new().unwrap();
    let root = t.path();
    put(
        root,
        &[
            ("bin/busybox", "elf"),
            (
                "etc/init.d/rcS",
                "#!/bin/sh\nmount -a\nudhcpc -i eth0\nexit 0\n",
            ),
        ],
    );
    fs::set_permissions(
        root.join("etc/init.d/rcS"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let changes = wire_twice(root, &plan(InitSystem::Busybox));
    assert_agent_installed(root, &changes);
    let rcs = text(&root.join("etc/init.d/rcS"));
    assert!(
        rcs.starts_with("#!/bin/sh\nmount -a\nudhcpc -i eth0\n"),
        "{rcs}"
    );
    assert!(
        rcs.ends_with("/usr/local/sbin/slipway-firstboot &\nexit 0\n"),
        "{rcs}"
    );
    assert_eq!(mode(&root.join("etc/init.d/rcS")), 0o755);
    assert!(!root.join("etc/inittab").exists());

    // No rcS at all: one is made, executable, that starts the agent.
    let t = TempDir::new().unwrap();
    let root = t.path();
    put(root, &[("bin/busybox", "elf")]);
    let changes = wire_twice(root, &plan(InitSystem::Busybox));
    let rcs_path = root.join("etc/init.d/rcS");
    let rcs = text(&rcs_path);
    assert!(rcs.starts_with("#!/bin/sh\n"), "{rcs}");
    assert!(
        rcs.ends_with("\n/usr/local/sbin/slipway-firstboot &\n"),
        "{rcs}"
    );
    assert_eq!(mode(&rcs_path), 0o755);
    assert_root_owned(&rcs_path);
    assert_eq!(changed(&changes, "etc/init.d/rcS"), Action::Created);
    assert_eq!(changed(&changes, "etc/init.d"), Action::Created);
    assert_eq!(mode(&root.join("etc/init.d")), 0o755);
}

#[test]
fn unknown_init_system_is_an_error() {
    let t = TempDir::new().unwrap();
    put(t.path(), &[("etc/os-release", "ID=mystery\n")]);
    let before = snapshot(t.path());
    let err = wire_first_boot(t.path(), &plan(InitSystem::Unknown)).unwrap_err();
    assert!(matches!(err, WireError::UnknownInitSystem));
    assert!(err.to_string().contains("init system is unknown"), "{err}");
    assert_eq!(snapshot(t.path()), before, "nothing written");
}

#[test]
fn agent_that_is_not_an_elf_is_refused() {
    let t = TempDir::new().unwrap();
    debian_systemd(t.path());
    let before = snapshot(t.path());
    let bad = FirstBoot {
        init_system: InitSystem::Systemd,
        agent: AgentBinary::Bytes(b"#!/bin/sh\n".to_vec()),
    };
    let err = wire_first_boot(t.path(), &bad).unwrap_err();
    assert!(err.to_string().contains("not an ELF executable"), "{err}");
    let missing = FirstBoot {
        init_system: InitSystem::Systemd,
        agent: AgentBinary::Path(t.path().join("nope")),
    };
    let err = wire_first_boot(t.path(), &missing).unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot read the first-boot agent binary"),
        "{err}"
    );
    assert_eq!(snapshot(t.path()), before);
}

#[test]
fn cloud_init_tree_gets_only_the_datasource_setting() {
    let t = TempDir::new().unwrap();
    let root = t.path();
    debian_systemd(root);
    put(
        root,
        &[
            ("usr/bin/cloud-init", "#!/usr/bin/python3\n"),
            ("etc/cloud/cloud.cfg", "datasource_list: [ Ec2 ]\n"),
            (
                "etc/cloud/cloud.cfg.d/90_dpkg.cfg",
                "datasource_list: [ NoCloud, ConfigDrive, None ]\n",
            ),
        ],
    );
    assert!(has_cloud_init(root).unwrap());
    let before = snapshot(root);
    let changes = wire_twice(root, &plan(InitSystem::Systemd));

    assert_eq!(changes.len(), 1, "{changes:#?}");
    assert_eq!(changes[0].path, "etc/cloud/cloud.cfg.d/99_slipway.cfg");
    let cfg_path = root.join("etc/cloud/cloud.cfg.d/99_slipway.cfg");
    let cfg = text(&cfg_path);
    let settings: Vec<&str> = cfg
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    assert_eq!(settings, ["datasource_list: [ NoCloud, None ]"]);
    assert!(
        cfg.contains("nocloud-net") && cfg.contains("22.4"),
        "says why:\n{cfg}"
    );
    assert_eq!(mode(&cfg_path), 0o644);
    assert_root_owned(&cfg_path);
    // Its name sorts after the distribution's 90_dpkg.cfg, which also sets datasource_list.

    // Nothing else: no agent, no unit, no state directory.
    // (The directory's mtime changes with the new entry in it.)
    let mut before = before;
    let mut after = snapshot(root);
    after.remove(Path::new("etc/cloud/cloud.cfg.d/99_slipway.cfg"));
    after.remove(Path::new("etc/cloud/cloud.cfg.d"));
    before.remove(Path::new("etc/cloud/cloud.cfg.d"));
    assert_eq!(after, before);

    // Detection by /etc/cloud/cloud.cfg alone works too.
    let t = TempDir::new().unwrap();
    put(t.path(), &[("etc/cloud/cloud.cfg", "")]);
    assert!(has_cloud_init(t.path()).unwrap());
    let t = TempDir::new().unwrap();
    debian_systemd(t.path());
    assert!(!has_cloud_init(t.path()).unwrap());
}

#[test]
fn hostile_trees_are_refused_without_writing_outside() {
    // /etc/systemd/system is a symlink to a directory outside the tree.
    let t = TempDir::new().unwrap();
    let root = t.path().join("tree");
    let outside = t.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    debian_systemd(&root);
    fs::remove_dir_all(root.join("etc/systemd/system")).unwrap();
    symlink(&outside, root.join("etc/systemd/system")).unwrap();
    let before = snapshot(&root);
    let err = wire_first_boot(&root, &plan(InitSystem::Systemd)).unwrap_err();
    assert!(
        matches!(&err, WireError::Symlink { path } if path == "etc/systemd/system"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("/etc/systemd/system") && err.to_string().contains("symlink"),
        "{err}"
    );
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "wrote outside the tree"
    );
    assert_eq!(
        snapshot(&root),
        before,
        "a refused tree is left as it was (no agent either)"
    );

    // The same through a relative link that climbs out, and through /usr/local.
    let t = TempDir::new().unwrap();
    let root = t.path().join("tree");
    let outside = t.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    debian_systemd(&root);
    fs::remove_dir_all(root.join("usr/local/sbin")).unwrap();
    symlink("../../../outside", root.join("usr/local/sbin")).unwrap();
    let err = wire_first_boot(&root, &plan(InitSystem::Systemd)).unwrap_err();
    assert!(
        matches!(&err, WireError::Symlink { path } if path == "usr/local/sbin"),
        "{err:?}"
    );
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);

    // A symlink where a file goes is replaced, never written through.
    let t = TempDir::new().unwrap();
    let root = t.path().join("tree");
    let victim = t.path().join("victim");
    fs::write(&victim, "precious").unwrap();
    debian_systemd(&root);
    symlink(
        &victim,
        root.join("etc/systemd/system/slipway-firstboot.service"),
    )
    .unwrap();
    let changes = wire_first_boot(&root, &plan(InitSystem::Systemd)).unwrap();
    assert_eq!(text(&victim), "precious");
    let unit = root.join("etc/systemd/system/slipway-firstboot.service");
    assert!(fs::symlink_metadata(&unit).unwrap().is_file());
    assert_eq!(
        changed(&changes, "etc/systemd/system/slipway-firstboot.service"),
        Action::Updated
    );

    // A busybox inittab that is a symlink is refused rather than edited through.
    let t = TempDir::new().unwrap();
    let root = t.path().join("tree");
    let victim = t.path().join("inittab");
    fs::write(&victim, "::sysinit:/etc/init.d/rcS\n").unwrap();
    put(&root, &[("bin/busybox", "elf")]);
    dirs(&root, &["etc"]);
    symlink(&victim, root.join("etc/inittab")).unwrap();
    let err = wire_first_boot(&root, &plan(InitSystem::Busybox)).unwrap_err();
    assert!(
        matches!(&err, WireError::Symlink { path } if path == "etc/inittab"),
        "{err:?}"
    );
    assert_eq!(text(&victim), "::sysinit:/etc/init.d/rcS\n");
    assert!(!root.join("usr").exists());

    // A directory where the unit file goes.
    let t = TempDir::new().unwrap();
    debian_systemd(t.path());
    dirs(t.path(), &["etc/systemd/system/slipway-firstboot.service"]);
    let err = wire_first_boot(t.path(), &plan(InitSystem::Systemd)).unwrap_err();
    assert!(matches!(err, WireError::IsADirectory { .. }), "{err:?}");
    assert!(!t.path().join("usr/local/sbin/slipway-firstboot").exists());
}

// ---- the agent binary against a real seed server ----

#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    body: String,
}

struct SeedServer {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
    ready_status: Arc<AtomicU16>,
}

impl SeedServer {
    /// Serves `/seed/meta-data` and (if given) `/seed/user-data`, and records every request.
    fn start(meta_data: &str, user_data: Option<&str>) -> SeedServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let ready_status = Arc::new(AtomicU16::new(200));
        let (log, status) = (requests.clone(), ready_status.clone());
        let (meta, user) = (meta_data.to_owned(), user_data.map(str::to_owned));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let mut words = line.split_whitespace();
                let (method, path) = (
                    words.next().unwrap_or("").to_owned(),
                    words.next().unwrap_or("").to_owned(),
                );
                let mut length = 0;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                    if let Some((n, v)) = h.split_once(':')
                        && n.eq_ignore_ascii_case("content-length")
                    {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).ok();
                let body = String::from_utf8_lossy(&body).into_owned();
                log.lock().unwrap().push(Request {
                    method: method.clone(),
                    path: path.clone(),
                    body,
                });
                let (code, reply) = match (method.as_str(), path.as_str()) {
                    ("GET", "/seed/meta-data") => (200, Some(meta.clone())),
                    ("GET", "/seed/user-data") => {
                        user.clone().map_or((404, None), |u| (200, Some(u)))
                    }
                    ("POST", "/seed/ready") => (status.load(Ordering::SeqCst), None),
                    _ => (404, None),
                };
                let reply = reply.unwrap_or_default();
                // Chunked for meta-data, Content-Length otherwise: the agent reads both.
                let response = if path.ends_with("meta-data") {
                    format!(
                        "HTTP/1.1 {code} X\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{reply}\r\n0\r\n\r\n",
                        reply.len()
                    )
                } else {
                    format!(
                        "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                        reply.len()
                    )
                };
                stream.write_all(response.as_bytes()).ok();
            }
        });
        SeedServer {
            port,
            requests,
            ready_status,
        }
    }

    fn serial(&self) -> String {
        format!("ds=nocloud-net;s=http://127.0.0.1:{}/seed/", self.port)
    }

    fn posts(&self) -> Vec<Request> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.method == "POST")
            .cloned()
            .collect()
    }
}

fn firstboot(root: &Path, serial: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_slipway-firstboot"))
        .arg("--root")
        .arg(root)
        .args([
            "--dmi-serial",
            serial,
            "--cmdline",
            "BOOT_IMAGE=/vmlinuz root=/dev/vda1",
            "--retry-for",
            "2s",
        ])
        .args(extra)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A guest as staging leaves it: the model's host name still in place, machine-id emptied.
fn staged_guest(root: &Path) {
    put(
        root,
        &[
            ("etc/hostname", "model\n"),
            (
                "etc/hosts",
                "127.0.0.1\tlocalhost\n127.0.1.1\tmodel\n\n::1\tlocalhost ip6-localhost\n",
            ),
            ("etc/machine-id", ""),
        ],
    );
    dirs(root, &["etc/ssh"]);
}

fn have_ssh_keygen() -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("ssh-keygen").is_file()))
        .unwrap_or(false)
}

#[test]
fn firstboot_applies_the_seed_once_and_reports_ready() {
    let server = SeedServer::start(
        "instance-id: i-0c3a9e\nlocal-hostname: web-1.lab.example\n",
        Some("#cloud-config\nruncmd: [ [ touch, /x ] ]\n"),
    );
    let t = TempDir::new().unwrap();
    let root = t.path();
    staged_guest(root);

    let out = firstboot(root, &server.serial(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(text(&root.join("etc/hostname")), "web-1\n");
    assert_eq!(
        text(&root.join("etc/hosts")),
        "127.0.0.1\tlocalhost\n127.0.1.1\tweb-1.lab.example web-1\n\n::1\tlocalhost ip6-localhost\n"
    );
    let machine_id = text(&root.join("etc/machine-id"));
    assert_eq!(machine_id.len(), 33, "{machine_id:?}");
    assert!(machine_id.ends_with('\n'));
    assert!(
        machine_id
            .trim_end()
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    assert_eq!(
        text(&root.join("var/lib/slipway/instance-id")),
        "i-0c3a9e\n"
    );
    let user_data = root.join("var/lib/slipway/user-data");
    assert_eq!(
        text(&user_data),
        "#cloud-config\nruncmd: [ [ touch, /x ] ]\n"
    );
    assert_eq!(mode(&user_data), 0o600);
    if have_ssh_keygen() {
        assert!(
            root.join("etc/ssh/ssh_host_ed25519_key").is_file(),
            "{}",
            stderr(&out)
        );
    }

    let posts = server.posts();
    assert_eq!(posts.len(), 1, "{posts:#?}");
    assert_eq!(posts[0].path, "/seed/ready");
    let body = &posts[0].body;
    assert!(body.starts_with(r#"{"instance-id":"i-0c3a9e","hostname":"web-1.lab.example","applied":["hostname","hosts","machine-id""#), "{body}");
    assert!(body.contains("\"user-data\""), "{body}");
    assert_eq!(
        have_ssh_keygen(),
        body.contains("\"ssh-host-keys\""),
        "{body}"
    );

    // Second boot, same instance: nothing written, nothing reported.
    let before = snapshot(root);
    let out = firstboot(root, &server.serial(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("already applied; nothing to do"),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot(root), before);
    assert_eq!(server.posts().len(), 1);

    // A later boot with the seed server gone keeps the applied identity instead of failing.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = firstboot(
        root,
        &format!("ds=nocloud-net;s=http://127.0.0.1:{closed}/seed/"),
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("keeping the identity of instance i-0c3a9e"),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot(root), before);
}

#[test]
fn firstboot_reads_the_kernel_command_line_and_reports_again_after_a_failed_report() {
    let server = SeedServer::start("instance-id: i-2\nlocal-hostname: db\n", None);
    server.ready_status.store(503, Ordering::SeqCst);
    let t = TempDir::new().unwrap();
    let root = t.path();
    staged_guest(root);
    let cmdline = format!(
        "root=/dev/vda1 ro ds=nocloud;s=http://127.0.0.1:{}/seed quiet",
        server.port
    );
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_slipway-firstboot"))
            .arg("--root")
            .arg(root)
            .args([
                "--dmi-serial",
                "Not Specified",
                "--cmdline",
                &cmdline,
                "--retry-for",
                "1s",
            ])
            .output()
            .unwrap()
    };
    // The report fails (503, retried): the identity is applied anyway, and the run succeeds.
    let out = run();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("could not report ready"),
        "{}",
        stderr(&out)
    );
    assert!(server.posts().len() >= 2, "retried: {:?}", server.posts());
    assert_eq!(text(&root.join("etc/hostname")), "db\n");
    assert!(
        !root.join("var/lib/slipway/user-data").exists(),
        "no user-data is served"
    );

    // The next boot reports, and applies nothing again.
    server.ready_status.store(200, Ordering::SeqCst);
    let machine_id = text(&root.join("etc/machine-id"));
    let posts = server.posts().len();
    let out = run();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(server.posts().len(), posts + 1);
    assert_eq!(
        server.posts().last().unwrap().body,
        r#"{"instance-id":"i-2","hostname":"db","applied":[],"errors":[],"apps":[]}"#
    );
    assert_eq!(text(&root.join("etc/machine-id")), machine_id);
    let out = run();
    assert!(stderr(&out).contains("nothing to do"), "{}", stderr(&out));
    assert_eq!(server.posts().len(), posts + 1);
}

#[test]
fn firstboot_refuses_malicious_hostnames() {
    let long = "a".repeat(300);
    for (hostname, problem) in [
        ("../x", "'/'"),
        ("\"evil\\nhost\"", "U+000A"),
        (long.as_str(), "300 characters"),
        ("a;reboot", "';'"),
    ] {
        let server = SeedServer::start(
            &format!("instance-id: i-evil\nlocal-hostname: {hostname}\n"),
            Some("x"),
        );
        let t = TempDir::new().unwrap();
        staged_guest(t.path());
        let before = snapshot(t.path());
        let out = firstboot(t.path(), &server.serial(), &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(5), "{hostname}: {err}");
        assert!(
            err.contains("meta-data local-hostname") && err.contains(problem),
            "{hostname}: {err}"
        );
        assert_eq!(snapshot(t.path()), before, "{hostname}: nothing written");
        assert!(server.posts().is_empty());
    }
}

#[test]
fn firstboot_retries_an_unreachable_seed_then_fails_clearly() {
    // A port nothing listens on: connections are refused at once, so only the retries take time.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = TempDir::new().unwrap();
    staged_guest(t.path());
    let before = snapshot(t.path());
    let started = Instant::now();
    let out = firstboot(
        t.path(),
        &format!("ds=nocloud-net;s=http://127.0.0.1:{port}/seed/"),
        &[],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("retrying in"), "{err}");
    assert!(
        err.contains(&format!(
            "fetching http://127.0.0.1:{port}/seed/meta-data failed after"
        )) && err.contains("cannot connect to 127.0.0.1"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the retry budget bounds the wait"
    );
    assert_eq!(snapshot(t.path()), before);
}

#[test]
fn firstboot_without_a_seed_says_so() {
    let t = TempDir::new().unwrap();
    let out = firstboot(t.path(), "VMware-56 4d", &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("no NoCloud seed"), "{}", stderr(&out));

    let out = firstboot(t.path(), "ds=nocloud-net;s=https://10.0.2.2/seed/", &[]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("https is not supported"),
        "{}",
        stderr(&out)
    );

    let out = firstboot(t.path(), "x", &["--retry-for", "forever"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}
