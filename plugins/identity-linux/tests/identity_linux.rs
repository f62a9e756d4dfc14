//! The Linux identity plugin, compiled to wasm32-wasip2 and run in Slipway's real runtime, against
//! trees laid out like the distributions it handles. All tests of the crate live in this binary.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use slipway_runtime::identity::IdentityPlugin;
use slipway_runtime::types::{Arch, InitSystem, Operation, OsInfo};
use slipway_runtime::{PluginError, PluginPackage, Runtime, RuntimeConfig};
use slipway_test_artifacts as artifacts;

// ---------------------------------------------------------------------------------------------
// The plugin

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| Runtime::new(RuntimeConfig::default()).expect("runtime"))
}

fn load(config: &[(&str, &str)]) -> Result<IdentityPlugin, PluginError> {
    let mut p = PluginPackage::read(Path::new(artifacts::IDENTITY_LINUX.dir)).expect("package");
    for (key, value) in config {
        p.manifest.config.insert((*key).into(), (*value).into());
    }
    Ok(runtime()
        .load(p.manifest, &p.component)?
        .into_identity()
        .expect("an identity plugin"))
}

fn plugin() -> &'static IdentityPlugin {
    static PLUGIN: OnceLock<IdentityPlugin> = OnceLock::new();
    PLUGIN.get_or_init(|| load(&[]).expect("the plugin loads"))
}

fn inspect(tree: &Tree) -> OsInfo {
    plugin()
        .inspect(tree.root())
        .expect("inspect succeeds")
        .expect("the tree is recognised")
}

/// Inspects, then strips, as staging does.
fn strip(tree: &Tree) -> Vec<Operation> {
    let os = inspect(tree);
    plugin().strip(tree.root(), &os).expect("strip succeeds")
}

fn op<'a>(ops: &'a [Operation], name: &str) -> &'a Operation {
    ops.iter()
        .find(|o| o.name == name)
        .unwrap_or_else(|| panic!("no operation {name}"))
}

fn changed<'a>(ops: &'a [Operation], name: &str) -> Vec<&'a str> {
    op(ops, name).changed.iter().map(String::as_str).collect()
}

// ---------------------------------------------------------------------------------------------
// Trees

struct Tree(tempfile::TempDir);

impl Tree {
    fn new() -> Self {
        Tree(tempfile::tempdir().expect("tempdir"))
    }

    fn root(&self) -> &Path {
        self.0.path()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    fn file(&self, rel: &str, content: impl AsRef<[u8]>) -> &Self {
        let path = self.path(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content).unwrap();
        self
    }

    fn mode(&self, rel: &str, mode: u32) -> &Self {
        fs::set_permissions(self.path(rel), fs::Permissions::from_mode(mode)).unwrap();
        self
    }

    fn dir(&self, rel: &str) -> &Self {
        fs::create_dir_all(self.path(rel)).unwrap();
        self
    }

    fn link(&self, rel: &str, target: &str) -> &Self {
        let path = self.path(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        symlink(target, path).unwrap();
        self
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    fn has(&self, rel: &str) -> bool {
        fs::symlink_metadata(self.path(rel)).is_ok()
    }

    fn is_link(&self, rel: &str) -> bool {
        fs::symlink_metadata(self.path(rel)).is_ok_and(|m| m.file_type().is_symlink())
    }

    fn meta(&self, rel: &str) -> fs::Metadata {
        fs::symlink_metadata(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    fn mode_of(&self, rel: &str) -> u32 {
        self.meta(rel).mode() & 0o7777
    }

    /// Names in a directory, sorted.
    fn list(&self, rel: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.path(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }
}

/// A 64-byte ELF64 header for `machine`, as at the start of every binary.
fn elf(machine: u16, big_endian: bool) -> Vec<u8> {
    let half = |v: u16| {
        if big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let mut h = vec![0u8; 64];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = 2; // ELFCLASS64
    h[5] = if big_endian { 2 } else { 1 };
    h[6] = 1; // EV_CURRENT
    h[16..18].copy_from_slice(&half(3)); // ET_DYN
    h[18..20].copy_from_slice(&half(machine));
    h[20] = if big_endian { 0 } else { 1 }; // e_version = 1, low byte first in LE
    h[23] = if big_endian { 1 } else { 0 };
    h[52..54].copy_from_slice(&half(64)); // e_ehsize
    h
}

const X86_64: u16 = 0x3e;
const AARCH64: u16 = 0xb7;

const MACHINE_ID: &str = "4f3c2b1a0d9e8f7a6b5c4d3e2f1a0b9c\n";

/// Debian 12 with systemd and merged /usr.
fn debian12() -> Tree {
    let t = Tree::new();
    t.file(
        "usr/lib/os-release",
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n\
         VERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nVERSION_CODENAME=bookworm\nID=debian\n\
         HOME_URL=\"https://www.debian.org/\"\n",
    )
    .link("etc/os-release", "../usr/lib/os-release")
    .file("etc/debian_version", "12.5\n")
    .link("bin", "usr/bin")
    .link("sbin", "usr/sbin")
    .link("lib", "usr/lib")
    .file("usr/bin/dash", elf(X86_64, false))
    .link("usr/bin/sh", "dash")
    .file("usr/lib/systemd/systemd", elf(X86_64, false))
    .link("usr/sbin/init", "/lib/systemd/systemd")
    .file("etc/passwd", "root:x:0:0:root:/root:/bin/bash\nu:x:1000:1000::/home/u:/bin/bash\n")
    .file("etc/passwd-", "root:x:0:0:root:/root:/bin/bash\n")
    .file("etc/shadow", "root:*:19000:0:99999:7:::\n")
    .file("etc/shadow-", "root:$y$oldhash:19000:0:99999:7:::\n")
    .mode("etc/shadow-", 0o640)
    // machine-id
    .file("etc/machine-id", MACHINE_ID)
    .mode("etc/machine-id", 0o644)
    .link("var/lib/dbus/machine-id", "/etc/machine-id")
    // ssh
    .file("etc/ssh/sshd_config", "PermitRootLogin no\n")
    .file("etc/ssh/moduli", "# moduli\n")
    .file("etc/ssh/ssh_host_ed25519_key", "PRIVATE ed25519\n")
    .mode("etc/ssh/ssh_host_ed25519_key", 0o600)
    .file("etc/ssh/ssh_host_ed25519_key.pub", "ssh-ed25519 AAAA root@model-deb\n")
    .file("etc/ssh/ssh_host_rsa_key", "PRIVATE rsa\n")
    .file("etc/ssh/ssh_host_rsa_key.pub", "ssh-rsa AAAA root@model-deb\n")
    .file("etc/ssh/ssh_host_ecdsa_key", "PRIVATE ecdsa\n")
    .file("etc/ssh/ssh_host_ecdsa_key.pub", "ecdsa-sha2-nistp256 AAAA root@model-deb\n")
    .file("etc/ssh/ssh_known_hosts", "gitlab.example.com ssh-ed25519 AAAA\n")
    .dir("etc/ssh/sshd_config.d")
    // udev
    .file(
        "etc/udev/rules.d/70-persistent-net.rules",
        "SUBSYSTEM==\"net\", ACTION==\"add\", ATTR{address}==\"52:54:00:12:34:56\", NAME=\"eth0\"\n",
    )
    .link("etc/udev/rules.d/75-persistent-net-generator.rules", "/dev/null")
    .file("etc/udev/rules.d/99-local.rules", "# site rules\n")
    // systemd-networkd
    .file(
        "etc/systemd/network/10-wan.link",
        "[Match]\nMACAddress=52:54:00:12:34:56\n\n[Link]\nName=wan0\n",
    )
    .file(
        "etc/systemd/network/20-wan.network",
        "[Match]\nName=wan0\n\n[Network]\nDHCP=yes\n",
    )
    .file(
        "etc/systemd/network/30-lan.network",
        "[Match]\nMACAddress=52:54:00:aa:bb:cc\nDriver=virtio_net\n\n[Link]\n\
         MACAddress=02:00:00:00:00:01\n\n[Network]\nAddress=10.0.0.2/24\n",
    )
    .mode("etc/systemd/network/30-lan.network", 0o640)
    .file("etc/network/interfaces", "auto lo\niface lo inet loopback\n")
    // hostname
    .file("etc/hostname", "model-deb\n")
    .file(
        "etc/hosts",
        "127.0.0.1\tlocalhost\n127.0.1.1\tmodel-deb.example.com\tmodel-deb\n\n\
         # The following lines are desirable for IPv6 capable hosts\n\
         ::1     localhost ip6-localhost ip6-loopback\nff02::1 ip6-allnodes\n\
         10.0.0.5 model-deb.example.com\n10.0.0.6 model-debian.example.com\n",
    )
    // dhcp
    .file("var/lib/dhcp/dhclient.enp1s0.leases", "lease { fixed-address 10.0.0.9; }\n")
    .file("var/lib/dhcp/dhclient6.enp1s0.leases", "default-duid \"\\000\\001\";\n")
    .file("var/lib/dhcp/README", "kept\n")
    // logs
    .link("var/log/README", "../../usr/share/doc/systemd/README.logs")
    .file("var/log/apt/history.log", "Start-Date: 2024-05-01\n")
    .file("var/log/apt/history.log.1.gz", "gz")
    .file("var/log/btmp", "bad logins")
    .mode("var/log/btmp", 0o660)
    .file("var/log/dpkg.log", "2024-05-01 install\n")
    .file("var/log/dpkg.log.1", "older\n")
    .file("var/log/empty.log", "")
    .file("var/log/installer/syslog", "installer was here\n")
    .file(
        "var/log/journal/4f3c2b1a0d9e8f7a6b5c4d3e2f1a0b9c/system.journal",
        "LPKSHHRH",
    )
    .file("var/log/lastlog", "last")
    .file("var/log/messages-20240101", "old\n")
    .file("var/log/syslog", "May  1 model-deb kernel: hello\n")
    .file("var/log/syslog.2.gz", "gz")
    .file("var/log/wtmp", "")
    // histories and user files
    .file("root/.bash_history", "cat /etc/shadow\n")
    .mode("root/.bash_history", 0o600)
    .file("root/.lesshst", "?\n")
    .file("root/.bashrc", "# root's bashrc\n")
    .file("root/.ssh/authorized_keys", "ssh-ed25519 AAAA admin\n")
    .file("home/u/.bash_history", "ls\n")
    .file("home/u/.python_history", "print(1)\n")
    .file("home/u/.viminfo", "# viminfo\n")
    .file("home/u/.local/share/fish/fish_history", "- cmd: ls\n")
    .file("home/u/.ssh/authorized_keys", "ssh-ed25519 AAAA u@laptop\n")
    .mode("home/u/.ssh/authorized_keys", 0o600)
    .file("home/u/notes.txt", "mine\n")
    .link("home/v/.bash_history", "/dev/null")
    // tmp
    .file("tmp/systemd-private-abc/tmp/x", "x")
    .dir("tmp/.X11-unix")
    .file("tmp/build.log", "b")
    .link("tmp/etc-abs", "/etc")
    .link("tmp/passwd-rel", "../etc/passwd")
    .file("var/tmp/cache.bin", "c")
    // package caches
    .file("var/cache/apt/archives/curl_8.5.0_amd64.deb", "deb")
    .file("var/cache/apt/archives/lock", "")
    .file("var/cache/apt/archives/partial/vim_9.1_amd64.deb", "part")
    .file("var/cache/apt/pkgcache.bin", "bin")
    .file("var/cache/apt/srcpkgcache.bin", "bin")
    .file("var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease", "lists")
    .file("var/lib/apt/lists/lock", "")
    // seeds, cloud-init, crashes, mail, cron
    .file("var/lib/systemd/random-seed", "seed")
    .file("var/lib/cloud/instances/i-0123/user-data.txt", "#cloud-config\n")
    .file("var/lib/cloud/data/instance-id", "i-0123\n")
    .file("var/lib/cloud/sem/config_scripts_per_once.once", "")
    .link("var/lib/cloud/instance", "/var/lib/cloud/instances/i-0123")
    .file("var/log/cloud-init.log", "cloud-init ran\n")
    .file("var/crash/_usr_bin_foo.1000.crash", "crash")
    .file("var/lib/systemd/coredump/core.foo.1000.zst", "core")
    .file("var/mail/u", "From root\n")
    .link("var/spool/mail", "../mail")
    .file("var/spool/cron/crontabs/u", "0 * * * * /home/u/job\n")
    .file("var/spool/cron/atjobs/a0000101a2b3c4", "#!/bin/sh\n")
    .file("var/spool/cron/atjobs/.SEQ", "1\n")
    .file("var/spool/anacron/cron.daily", "20240501\n")
    .file("var/lib/systemd/timers/stamp-apt-daily.timer", "")
    .file("var/lib/systemd/timers/other", "");
    t
}

/// Ubuntu 24.04 on aarch64: netplan, and absolute links for sh and init.
fn ubuntu2404() -> Tree {
    let t = Tree::new();
    t.file(
        "usr/lib/os-release",
        "PRETTY_NAME=\"Ubuntu 24.04 LTS\"\nNAME=\"Ubuntu\"\nVERSION_ID=\"24.04\"\n\
         VERSION=\"24.04 LTS (Noble Numbat)\"\nID=ubuntu\nID_LIKE=debian\n",
    )
    .link("etc/os-release", "../usr/lib/os-release")
    .file("etc/debian_version", "trixie/sid\n")
    .link("bin", "usr/bin")
    .link("sbin", "usr/sbin")
    .link("lib", "usr/lib")
    .file("usr/bin/dash", elf(AARCH64, false))
    .link("usr/bin/sh", "/usr/bin/dash")
    .file("usr/lib/systemd/systemd", elf(AARCH64, false))
    .link("usr/sbin/init", "/lib/systemd/systemd")
    .file("etc/machine-id", MACHINE_ID)
    .file("etc/hostname", "model-ubu\n")
    .file("etc/hosts", "127.0.0.1 localhost\n127.0.1.1 model-ubu\n")
    .file(
        "etc/netplan/50-cloud-init.yaml",
        "# This file is generated from information provided by the datasource.  Changes\n\
         # to it will not persist across an instance reboot.\n\
         network:\n    ethernets:\n        ens3:\n            dhcp4: true\n            match:\n\
         \x20               macaddress: 52:54:00:12:34:56\n            set-name: ens3\n\
         \x20   version: 2\n",
    )
    .mode("etc/netplan/50-cloud-init.yaml", 0o600)
    .file(
        "etc/netplan/01-lan.yaml",
        "network:\n  version: 2\n  renderer: networkd\n  ethernets:\n    lan:\n      match:\n\
         \x20       driver: virtio_net\n        macaddress: \"52:54:00:aa:bb:cc\"   # the model's card\n\
         \x20     set-name: lan0\n      macaddress: 02:00:00:00:00:01\n\
         \x20     addresses: [10.0.0.2/24]\n      routes:\n        - to: default\n\
         \x20         via: 10.0.0.1\n",
    )
    .mode("etc/netplan/01-lan.yaml", 0o600)
    .file(
        "etc/netplan/02-flow.yaml",
        "network:\n  ethernets:\n    eth0: {dhcp4: true}\n    eth1:\n\
         \x20     match: {macaddress: \"52:54:00:00:00:02\"}\n      set-name: eth1\n\
         \x20     dhcp4: false\n",
    )
    .file(
        "etc/netplan/90-plain.yaml",
        "network:\n  ethernets:\n    eth9:\n      dhcp4: true\n",
    )
    .file("etc/netplan/README", "macaddress: not yaml of netplan's\n")
    .file("var/lib/cloud/instance/boot-finished", "done\n")
    .file("var/log/cloud-init-output.log", "output\n");
    t
}

/// Fedora 40: NetworkManager keyfiles, rpm, dnf.
fn fedora40() -> Tree {
    let t = Tree::new();
    t.file(
        "usr/lib/os-release",
        "NAME=\"Fedora Linux\"\nVERSION=\"40 (Server Edition)\"\nID=fedora\nVERSION_ID=40\n\
         PLATFORM_ID=\"platform:f40\"\nVARIANT_ID=server\n",
    )
    .link("etc/os-release", "../usr/lib/os-release")
    .file("etc/fedora-release", "Fedora release 40 (Forty)\n")
    .link("etc/redhat-release", "fedora-release")
    .link("bin", "usr/bin")
    .link("sbin", "usr/sbin")
    .link("lib", "usr/lib")
    .file("usr/bin/bash", elf(X86_64, false))
    .link("usr/bin/sh", "bash")
    .file("usr/lib/systemd/systemd", elf(X86_64, false))
    .link("usr/sbin/init", "../lib/systemd/systemd")
    .file("etc/machine-id", MACHINE_ID)
    .file("etc/hostname", "model-fed.example.com\n")
    .file(
        "etc/hosts",
        "127.0.0.1   localhost localhost.localdomain model-fed model-fed.example.com\n\
         ::1         localhost localhost.localdomain localhost6\n\
         10.1.2.3    model-fed.example.com model-fed\n\
         192.0.2.7   db.example.com db # the database\n",
    )
    .file(
        "etc/sysconfig/network",
        "NETWORKING=yes\nHOSTNAME=model-fed.example.com\n",
    )
    .file(
        "etc/NetworkManager/system-connections/enp1s0.nmconnection",
        "[connection]\nid=enp1s0\nuuid=3f1c2a8e-0d6b-4b1e-9a51-2f0c8b7d9e10\ntype=ethernet\n\
         interface-name=enp1s0\n\n[ethernet]\nmac-address=52:54:00:12:34:56\n\
         cloned-mac-address=02:00:00:00:00:05\n\n[ipv4]\nmethod=auto\n\n[ipv6]\n\
         addr-gen-mode=eui64\nmethod=auto\n",
    )
    .mode(
        "etc/NetworkManager/system-connections/enp1s0.nmconnection",
        0o600,
    )
    .file(
        "etc/NetworkManager/system-connections/wlan.nmconnection",
        "[connection]\nid=wlan\nuuid=0e6c5a4b-1111-2222-3333-444455556666\ntype=wifi\n\n\
         [wifi]\nmac-address = 52:54:00:77:88:99\nssid=office\n\n[wifi-security]\npsk=secret\n",
    )
    .mode(
        "etc/NetworkManager/system-connections/wlan.nmconnection",
        0o600,
    )
    .file(
        "var/lib/NetworkManager/internal-3f1c2a8e-0d6b-4b1e-9a51-2f0c8b7d9e10-enp1s0.lease",
        "ADDRESS=10.0.0.9\n",
    )
    .file("var/lib/NetworkManager/secret_key", "nm secret")
    .file("var/lib/NetworkManager/timestamps", "[timestamps]\n")
    .file(
        "var/lib/NetworkManager/NetworkManager.state",
        "[main]\nNetworkingEnabled=true\n",
    )
    .file("var/lib/rpm/rpmdb.sqlite", "sqlite")
    .file("var/lib/rpm/rpmdb.sqlite-shm", "shm")
    .file("var/lib/rpm/__db.001", "db")
    .file("var/lib/rpm/__db.002", "db")
    .file("var/lib/rpm/.rpm.lock", "")
    .file("var/cache/dnf/fedora-abc/repodata/primary.xml.zck", "zck")
    .file("var/cache/dnf/expired_repos.json", "[]")
    .file("var/lib/systemd/random-seed", "seed")
    .file("var/lib/systemd/pstore/dmesg-efi-1", "oops")
    .link("var/mail", "spool/mail")
    .file("var/spool/mail/u", "From root\n")
    .file("var/spool/cron/u", "0 * * * * job\n")
    .file(
        "var/spool/abrt/ccpp-2024-05-01-10:00:00-1234/coredump",
        "core",
    )
    .file("var/log/messages", "May 1 model-fed\n")
    .file("var/log/messages-20240428", "old\n")
    .file("var/log/audit/audit.log", "type=DAEMON_START\n")
    .mode("var/log/audit/audit.log", 0o600)
    .file("root/.bash_history", "dnf update\n");
    t
}

/// RHEL 9: ifcfg, dhclient, at, the subscription registration.
fn rhel9() -> Tree {
    let t = Tree::new();
    t.file(
        "etc/os-release",
        "NAME=\"Red Hat Enterprise Linux\"\nVERSION=\"9.4 (Plow)\"\nID=\"rhel\"\n\
         ID_LIKE=\"fedora\"\nVERSION_ID=\"9.4\"\n",
    )
    .file(
        "etc/redhat-release",
        "Red Hat Enterprise Linux release 9.4 (Plow)\n",
    )
    .link("bin", "usr/bin")
    .link("sbin", "usr/sbin")
    .file("usr/bin/bash", elf(X86_64, false))
    .link("usr/bin/sh", "bash")
    .file("usr/lib/systemd/systemd", elf(X86_64, false))
    .link("usr/sbin/init", "../lib/systemd/systemd")
    .file("etc/machine-id", MACHINE_ID)
    .file("etc/hostname", "model-rhel\n")
    .file("etc/hosts", "127.0.0.1 localhost\n")
    .file(
        "etc/sysconfig/network-scripts/ifcfg-eth0",
        "TYPE=Ethernet\nBOOTPROTO=dhcp\nNAME=eth0\nUUID=5fb06bd0-0bb0-7ffb-45f1-d6edd65f3e03\n\
         DEVICE=eth0\nHWADDR=52:54:00:12:34:56\nMACADDR=\"02:00:00:00:00:09\"\nONBOOT=yes\n",
    )
    .file(
        "etc/sysconfig/network-scripts/ifcfg-lo",
        "DEVICE=lo\nIPADDR=127.0.0.1\n",
    )
    .file(
        "etc/sysconfig/network-scripts/route-eth0",
        "HWADDR=not an ifcfg\n",
    )
    .file("var/lib/dhclient/dhclient--eth0.lease", "lease {}\n")
    .file("etc/pki/consumer/cert.pem", "consumer cert")
    .file("etc/pki/consumer/key.pem", "consumer key")
    .file("etc/pki/entitlement/1234.pem", "ent")
    .file("etc/pki/entitlement/1234-key.pem", "ent key")
    .file("etc/pki/tls/certs/ca-bundle.crt", "ca")
    .file("etc/sysconfig/rhn/systemid", "<systemid/>")
    .file("etc/sysconfig/rhn/up2date", "kept")
    .file("var/lib/yum/uuid", "7b1c\n")
    .file("var/spool/at/.SEQ", "10\n")
    .file("var/spool/at/a0001001a2b3c4", "#!/bin/sh\n")
    .file("var/spool/at/spool/a0001001a2b3c4", "output")
    .file("var/cache/yum/x86_64/9/rhel/packages/a.rpm", "rpm")
    .file("var/lib/rpm/__db.001", "db");
    t
}

/// Alpine 3.20 with OpenRC, whose init is busybox.
fn alpine320() -> Tree {
    let t = Tree::new();
    t.file(
        "etc/os-release",
        "NAME=\"Alpine Linux\"\nID=alpine\nVERSION_ID=3.20.3\n\
         PRETTY_NAME=\"Alpine Linux v3.20\"\n",
    )
    .file("etc/alpine-release", "3.20.3\n")
    .file("bin/busybox", elf(X86_64, false))
    .link("bin/sh", "/bin/busybox")
    .link("sbin/init", "/bin/busybox")
    .file("sbin/openrc", elf(X86_64, false))
    .file("etc/inittab", "::sysinit:/sbin/openrc sysinit\n")
    .dir("etc/init.d")
    .dir("etc/runlevels/default")
    .file("etc/hostname", "model-alp\n")
    .file(
        "etc/hosts",
        "127.0.0.1\tmodel-alp localhost.localdomain localhost\n::1\t\tlocalhost\n",
    )
    .file(
        "etc/network/interfaces",
        "auto eth0\niface eth0 inet dhcp\n",
    )
    .file("etc/ssh/ssh_host_ed25519_key", "k")
    .file("etc/ssh/ssh_host_ed25519_key.pub", "k")
    .file("etc/ssh/ssh_host_ed25519_key-cert.pub", "cert")
    .file("root/.ash_history", "apk add curl\n")
    .file("var/cache/apk/APKINDEX.66a8b5b6.tar.gz", "index")
    .file("var/cache/apk/curl-8.9.1-r0.1a2b.apk", "apk")
    .file("var/lib/seedrng/seed.credit", "seed")
    .file("var/lib/udhcpc/eth0.lease", "lease")
    .file("var/log/messages", "syslog\n")
    .file("var/log/messages.0", "older\n");
    t
}

// ---------------------------------------------------------------------------------------------
// inspect

fn os(distro: &str, version: &str, arch: Arch, init: InitSystem) -> OsInfo {
    OsInfo {
        family: "linux".into(),
        distro: distro.into(),
        version: version.into(),
        arch,
        init_system: init,
    }
}

#[test]
fn debian_12_is_recognised_through_its_merged_usr_links() {
    assert_eq!(
        inspect(&debian12()),
        os("debian", "12", Arch::X8664, InitSystem::Systemd)
    );
}

#[test]
fn ubuntu_24_04_on_aarch64_is_recognised_through_absolute_links() {
    // sh and init are absolute links, and /lib a link too: what they lead to is found inside the
    // tree, never on the host (x86-64, so aarch64 can only come from the tree's binary).
    assert_eq!(
        inspect(&ubuntu2404()),
        os("ubuntu", "24.04", Arch::Aarch64, InitSystem::Systemd)
    );
}

#[test]
fn fedora_and_the_rhel_family_are_recognised() {
    assert_eq!(
        inspect(&fedora40()),
        os("fedora", "40", Arch::X8664, InitSystem::Systemd)
    );
    assert_eq!(
        inspect(&rhel9()),
        os("rhel", "9.4", Arch::X8664, InitSystem::Systemd)
    );
    for (id, like, version) in [
        ("rocky", "rhel centos fedora", "9.4"),
        ("almalinux", "rhel centos fedora", "9.4"),
        ("centos", "rhel fedora", "7"),
        // Not in the list itself, but like RHEL.
        ("ol", "fedora", "8.9"),
    ] {
        let t = rhel9();
        t.file(
            "etc/os-release",
            format!("ID=\"{id}\"\nID_LIKE=\"{like}\"\nVERSION_ID=\"{version}\"\n"),
        );
        assert_eq!(
            inspect(&t),
            os(id, version, Arch::X8664, InitSystem::Systemd),
            "{id}"
        );
    }
}

#[test]
fn alpine_with_openrc_is_openrc_though_its_init_is_busybox() {
    assert_eq!(
        inspect(&alpine320()),
        os("alpine", "3.20.3", Arch::X8664, InitSystem::Openrc)
    );
}

#[test]
fn a_busybox_init_tree_without_os_release_is_recognised_by_alpine_release() {
    let t = Tree::new();
    t.file("etc/alpine-release", "3.20.0\n")
        .file("bin/busybox", elf(0xf3, false))
        .link("bin/sh", "busybox")
        .link("sbin/init", "../bin/busybox")
        .file("etc/inittab", "::sysinit:/etc/init.d/rcS\n");
    assert_eq!(
        inspect(&t),
        os("alpine", "3.20.0", Arch::Riscv64, InitSystem::Busybox)
    );
}

#[test]
fn an_old_debian_with_sysvinit_is_recognised_by_debian_version() {
    let t = Tree::new();
    t.file("etc/debian_version", "7.11\n")
        .file("bin/dash", elf(X86_64, false))
        .link("bin/sh", "dash")
        .file("sbin/init", elf(X86_64, false))
        .file("etc/inittab", "id:2:initdefault:\n")
        .dir("etc/init.d");
    assert_eq!(
        inspect(&t),
        os("debian", "7.11", Arch::X8664, InitSystem::Sysvinit)
    );
}

#[test]
fn versions_come_from_release_files_when_os_release_lacks_them() {
    // Debian testing has no VERSION_ID.
    let t = debian12();
    t.file(
        "usr/lib/os-release",
        "PRETTY_NAME=\"Debian GNU/Linux trixie/sid\"\nID=debian\n",
    )
    .file("etc/debian_version", "trixie/sid\n");
    assert_eq!(inspect(&t).version, "trixie/sid");

    // No os-release at all: redhat-release names the distro and its version.
    let t = rhel9();
    fs::remove_file(t.path("etc/os-release")).unwrap();
    t.file(
        "etc/redhat-release",
        "CentOS Linux release 7.9.2009 (Core)\n",
    );
    let found = inspect(&t);
    assert_eq!(
        (found.distro.as_str(), found.version.as_str()),
        ("centos", "7.9.2009")
    );
}

#[test]
fn os_release_falls_back_to_usr_lib_and_links_cannot_climb_out() {
    let t = debian12();
    // Climbing above the root stops at the root, as in the guest's kernel.
    fs::remove_file(t.path("etc/os-release")).unwrap();
    t.link("etc/os-release", "../../../../../../usr/lib/os-release");
    assert_eq!(inspect(&t).distro, "debian");
    // A dangling link: /usr/lib/os-release is read instead.
    fs::remove_file(t.path("etc/os-release")).unwrap();
    t.link("etc/os-release", "../nonexistent");
    assert_eq!(inspect(&t).version, "12");
    // So is an absolute one, which the sandbox does not follow.
    fs::remove_file(t.path("etc/os-release")).unwrap();
    t.link("etc/os-release", "/usr/lib/os-release");
    assert_eq!(inspect(&t).version, "12");
}

#[test]
fn an_absolute_init_link_is_matched_inside_the_tree() {
    // The sandbox does not reveal absolute targets; their length and the tree's own files tell.
    let t = Tree::new();
    t.file("etc/os-release", "ID=debian\nVERSION_ID=12\n")
        .file("usr/lib/systemd/systemd", elf(AARCH64, false))
        .file("bin/busybox", elf(AARCH64, false))
        .link("sbin/init", "/usr/lib/systemd/systemd");
    assert_eq!(inspect(&t).init_system, InitSystem::Systemd);

    fs::remove_file(t.path("sbin/init")).unwrap();
    t.link("sbin/init", "/bin/busybox");
    assert_eq!(inspect(&t).init_system, InitSystem::Busybox);

    // The right length, but the tree has no such file: not guessed from the host's.
    fs::remove_file(t.path("sbin/init")).unwrap();
    t.link("sbin/init", "/lib/systemd/systemd");
    assert_eq!(inspect(&t).init_system, InitSystem::Unknown);

    fs::remove_file(t.path("sbin/init")).unwrap();
    t.link("sbin/init", "/opt/site/init");
    assert_eq!(inspect(&t).init_system, InitSystem::Unknown);
}

#[test]
fn every_supported_architecture_is_read_from_the_elf_header() {
    for (machine, big_endian, arch) in [
        (X86_64, false, Arch::X8664),
        (AARCH64, false, Arch::Aarch64),
        (0xf3, false, Arch::Riscv64),
        (0x15, false, Arch::Ppc64le),
        (0x16, true, Arch::S390x),
    ] {
        let t = Tree::new();
        t.file("etc/os-release", "ID=debian\nVERSION_ID=12\n")
            .file("bin/sh", elf(machine, big_endian));
        assert_eq!(inspect(&t).arch, arch, "e_machine {machine:#x}");
    }
}

#[test]
fn an_unsupported_architecture_is_an_error_naming_the_binary() {
    let t = Tree::new();
    let mut i386 = elf(0x03, false);
    i386[4] = 1; // ELFCLASS32
    t.file("etc/os-release", "ID=debian\nVERSION_ID=12\n")
        .file("bin/sh", i386);
    let err = plugin().inspect(t.root()).unwrap_err().to_string();
    assert!(err.contains("/bin/sh") && err.contains("0x3"), "{err}");
}

#[test]
fn trees_that_are_not_linux_of_a_known_family_are_not_mine() {
    let empty = Tree::new();
    assert_eq!(plugin().inspect(empty.root()).unwrap(), None);

    let windows = Tree::new();
    windows
        .file("Windows/System32/config/SYSTEM", "regf")
        .file("Windows/System32/ntoskrnl.exe", "MZ")
        .file("pagefile.sys", "")
        .dir("Program Files");
    assert_eq!(plugin().inspect(windows.root()).unwrap(), None);

    let arch = Tree::new();
    arch.file("etc/os-release", "NAME=\"Arch Linux\"\nID=arch\n")
        .file("usr/bin/sh", elf(X86_64, false));
    assert_eq!(plugin().inspect(arch.root()).unwrap(), None);
}

#[test]
fn hostile_trees_give_errors_naming_the_path_not_traps() {
    let expect_err = |t: &Tree, needles: &[&str]| {
        let err = plugin().inspect(t.root()).unwrap_err();
        assert!(matches!(err, PluginError::Failed { .. }), "{err}");
        let msg = err.to_string();
        for n in needles {
            assert!(msg.contains(n), "{msg:?} should mention {n:?}");
        }
    };

    let huge = debian12();
    fs::remove_file(huge.path("etc/os-release")).unwrap();
    huge.file("etc/os-release", vec![b'A'; 10 << 20]);
    expect_err(&huge, &["/etc/os-release", "64 KiB"]);

    let init_loop = debian12();
    fs::remove_file(init_loop.path("usr/sbin/init")).unwrap();
    init_loop
        .link("usr/sbin/init", "init2")
        .link("usr/sbin/init2", "../../sbin/init");
    expect_err(&init_loop, &["sbin/init", "symbolic links"]);

    let self_link = debian12();
    fs::remove_file(self_link.path("etc/os-release")).unwrap();
    self_link.link("etc/os-release", "./os-release");
    expect_err(&self_link, &["etc/os-release", "symbolic links"]);

    // An absolute loop cannot even be read: it is an init this plugin does not know.
    let hidden_loop = debian12();
    fs::remove_file(hidden_loop.path("usr/sbin/init")).unwrap();
    hidden_loop.link("usr/sbin/init", "/sbin/init");
    assert_eq!(inspect(&hidden_loop).init_system, InitSystem::Unknown);

    let bad_id = debian12();
    bad_id.file(
        "usr/lib/os-release",
        format!("ID_LIKE=debian\nID=\"{}\"\n", "x\u{1b}".repeat(300)),
    );
    expect_err(&bad_id, &["/usr/lib/os-release", "ID"]);
}

#[test]
fn junk_where_binaries_should_be_is_skipped() {
    let t = Tree::new();
    t.file("etc/os-release", "ID=debian\nVERSION_ID=12\n")
        .dir("bin/sh")
        .file("usr/bin/env", b"\x7fELF\x02")
        .file("sbin/init", "#!/bin/sh\nexec /bin/busybox init\n")
        .file("bin/busybox", elf(AARCH64, false));
    assert_eq!(
        inspect(&t),
        os("debian", "12", Arch::Aarch64, InitSystem::Unknown)
    );
}

// ---------------------------------------------------------------------------------------------
// strip: the report

#[test]
fn operations_run_in_the_documented_order_and_each_reports_even_when_idle() {
    let t = Tree::new();
    t.file("etc/os-release", "ID=debian\nVERSION_ID=12\n")
        .file("bin/sh", elf(X86_64, false))
        .file("etc/hostname", "localhost\n");
    let ops = strip(&t);
    let names: Vec<&str> = ops.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "machine-id",
            "ssh-host-keys",
            "udev-persistent-net",
            "net-mac-pins",
            "hostname",
            "dhcp-leases",
            "logs",
            "shell-history",
            "tmp-files",
            "package-caches",
            "random-seed",
            "cloud-init-state",
            "crash-data",
            "mail-spool",
            "cron-spool",
            "rpm-db-locks",
            "passwd-backups",
            "network-manager-state",
            "rhsm-registration",
            "yum-uuid",
        ]
    );
    for o in &ops {
        assert!(o.changed.is_empty(), "{}: {:?}", o.name, o.changed);
        assert_eq!(o.detail, "nothing to do", "{}", o.name);
    }
}

#[test]
fn a_second_strip_finds_nothing_left_to_do() {
    for t in [debian12(), ubuntu2404(), fedora40(), rhel9(), alpine320()] {
        let first = strip(&t);
        assert!(first.iter().any(|o| !o.changed.is_empty()));
        for o in strip(&t) {
            assert!(o.changed.is_empty(), "{}: {:?}", o.name, o.changed);
            assert!(o.detail.starts_with("nothing to do"), "{}", o.detail);
        }
    }
}

#[test]
fn a_tree_of_another_family_is_refused() {
    let t = debian12();
    let mut windows = inspect(&t);
    windows.family = "windows".into();
    let err = plugin().strip(t.root(), &windows).unwrap_err().to_string();
    assert!(err.contains("Linux") && err.contains("windows"), "{err}");
    assert_eq!(t.read("etc/machine-id"), MACHINE_ID, "nothing was touched");
}

// ---------------------------------------------------------------------------------------------
// strip: each operation

#[test]
fn machine_id_is_emptied_not_removed_and_dbus_link_kept() {
    let t = debian12();
    let ino = t.meta("etc/machine-id").ino();
    let ops = strip(&t);
    assert_eq!(changed(&ops, "machine-id"), ["etc/machine-id"]);
    assert_eq!(t.read("etc/machine-id"), "");
    assert_eq!(
        t.meta("etc/machine-id").ino(),
        ino,
        "the same file, emptied"
    );
    assert_eq!(t.mode_of("etc/machine-id"), 0o644);
    assert!(t.is_link("var/lib/dbus/machine-id"), "the link to it stays");

    // A copy of its own is removed.
    let t = fedora40();
    t.file("var/lib/dbus/machine-id", MACHINE_ID);
    let ops = strip(&t);
    assert_eq!(
        changed(&ops, "machine-id"),
        ["etc/machine-id", "var/lib/dbus/machine-id"]
    );
    assert!(!t.has("var/lib/dbus/machine-id"));

    // systemd's own first-boot marker is already right.
    let t = rhel9();
    t.file("etc/machine-id", "uninitialized\n");
    assert!(changed(&strip(&t), "machine-id").is_empty());
    assert_eq!(t.read("etc/machine-id"), "uninitialized\n");
}

#[test]
fn ssh_host_keys_are_removed_and_the_rest_of_etc_ssh_kept() {
    let t = debian12();
    let ops = strip(&t);
    assert_eq!(
        changed(&ops, "ssh-host-keys"),
        [
            "etc/ssh/ssh_host_ecdsa_key",
            "etc/ssh/ssh_host_ecdsa_key.pub",
            "etc/ssh/ssh_host_ed25519_key",
            "etc/ssh/ssh_host_ed25519_key.pub",
            "etc/ssh/ssh_host_rsa_key",
            "etc/ssh/ssh_host_rsa_key.pub",
        ]
    );
    assert_eq!(
        t.list("etc/ssh"),
        ["moduli", "ssh_known_hosts", "sshd_config", "sshd_config.d"]
    );

    let t = alpine320();
    let ops = strip(&t);
    assert_eq!(
        op(&ops, "ssh-host-keys").changed.len(),
        3,
        "certificates too"
    );
    assert!(t.list("etc/ssh").is_empty());
}

#[test]
fn udev_persistent_net_rules_are_removed_and_the_generator_switch_kept() {
    let t = debian12();
    let ops = strip(&t);
    assert_eq!(
        changed(&ops, "udev-persistent-net"),
        ["etc/udev/rules.d/70-persistent-net.rules"]
    );
    assert_eq!(
        t.list("etc/udev/rules.d"),
        ["75-persistent-net-generator.rules", "99-local.rules"]
    );
    assert!(t.is_link("etc/udev/rules.d/75-persistent-net-generator.rules"));
}

#[test]
fn networkd_mac_pins_are_dropped_in_place() {
    let t = debian12();
    let ino = t.meta("etc/systemd/network/30-lan.network").ino();
    let ops = strip(&t);
    let pins = op(&ops, "net-mac-pins");
    assert_eq!(
        pins.changed,
        [
            "etc/systemd/network/10-wan.link",
            "etc/systemd/network/30-lan.network"
        ]
    );
    assert_eq!(
        t.read("etc/systemd/network/10-wan.link"),
        "[Match]\n\n[Link]\nName=wan0\n"
    );
    assert!(
        pins.detail
            .contains("10-wan.link: its [Match] matched only on a MAC"),
        "{}",
        pins.detail
    );
    assert_eq!(
        t.read("etc/systemd/network/30-lan.network"),
        "[Match]\nDriver=virtio_net\n\n[Link]\n\n[Network]\nAddress=10.0.0.2/24\n"
    );
    assert_eq!(t.mode_of("etc/systemd/network/30-lan.network"), 0o640);
    assert_eq!(t.meta("etc/systemd/network/30-lan.network").ino(), ino);
    assert_eq!(
        t.read("etc/systemd/network/20-wan.network"),
        "[Match]\nName=wan0\n\n[Network]\nDHCP=yes\n"
    );
}

#[test]
fn netplan_mac_matches_go_with_their_set_name() {
    let t = ubuntu2404();
    let ops = strip(&t);
    assert_eq!(
        changed(&ops, "net-mac-pins"),
        [
            "etc/netplan/01-lan.yaml",
            "etc/netplan/02-flow.yaml",
            "etc/netplan/50-cloud-init.yaml"
        ]
    );
    assert_eq!(
        t.read("etc/netplan/50-cloud-init.yaml"),
        "# This file is generated from information provided by the datasource.  Changes\n\
         # to it will not persist across an instance reboot.\n\
         network:\n    ethernets:\n        ens3:\n            dhcp4: true\n    version: 2\n"
    );
    // Another condition keeps the match (and so the rename); the fixed address goes.
    assert_eq!(
        t.read("etc/netplan/01-lan.yaml"),
        "network:\n  version: 2\n  renderer: networkd\n  ethernets:\n    lan:\n      match:\n\
         \x20       driver: virtio_net\n      set-name: lan0\n\
         \x20     addresses: [10.0.0.2/24]\n      routes:\n        - to: default\n\
         \x20         via: 10.0.0.1\n"
    );
    assert_eq!(
        t.read("etc/netplan/02-flow.yaml"),
        "network:\n  ethernets:\n    eth0: {dhcp4: true}\n    eth1:\n      dhcp4: false\n"
    );
    assert_eq!(t.mode_of("etc/netplan/50-cloud-init.yaml"), 0o600);
    assert_eq!(t.mode_of("etc/netplan/01-lan.yaml"), 0o600);
    assert_eq!(
        t.read("etc/netplan/README"),
        "macaddress: not yaml of netplan's\n"
    );
}

#[test]
fn netplan_it_cannot_edit_safely_is_refused_with_its_line() {
    let t = ubuntu2404();
    t.file(
        "etc/netplan/60-inline.yaml",
        "network:\n  ethernets:\n    eth0: {dhcp4: true, macaddress: \"02:00:00:00:00:01\"}\n",
    );
    let os = inspect(&t);
    let err = plugin().strip(t.root(), &os).unwrap_err().to_string();
    assert!(
        err.contains("net-mac-pins")
            && err.contains("/etc/netplan/60-inline.yaml")
            && err.contains("line 3"),
        "{err}"
    );
}

#[test]
fn network_manager_and_ifcfg_mac_pins_are_dropped_keeping_uuids() {
    let t = fedora40();
    let ops = strip(&t);
    assert_eq!(
        changed(&ops, "net-mac-pins"),
        [
            "etc/NetworkManager/system-connections/enp1s0.nmconnection",
            "etc/NetworkManager/system-connections/wlan.nmconnection"
        ]
    );
    let keyfile = "etc/NetworkManager/system-connections/enp1s0.nmconnection";
    assert_eq!(
        t.read(keyfile),
        "[connection]\nid=enp1s0\nuuid=3f1c2a8e-0d6b-4b1e-9a51-2f0c8b7d9e10\ntype=ethernet\n\
         interface-name=enp1s0\n\n[ethernet]\n\n[ipv4]\nmethod=auto\n\n[ipv6]\n\
         addr-gen-mode=eui64\nmethod=auto\n"
    );
    assert_eq!(t.mode_of(keyfile), 0o600);
    assert_eq!(
        t.read("etc/NetworkManager/system-connections/wlan.nmconnection"),
        "[connection]\nid=wlan\nuuid=0e6c5a4b-1111-2222-3333-444455556666\ntype=wifi\n\n\
         [wifi]\nssid=office\n\n[wifi-security]\npsk=secret\n"
    );

    let t = rhel9();
    let ops = strip(&t);
    assert_eq!(
        changed(&ops, "net-mac-pins"),
        ["etc/sysconfig/network-scripts/ifcfg-eth0"]
    );
    assert_eq!(
        t.read("etc/sysconfig/network-scripts/ifcfg-eth0"),
        "TYPE=Ethernet\nBOOTPROTO=dhcp\nNAME=eth0\nUUID=5fb06bd0-0bb0-7ffb-45f1-d6edd65f3e03\n\
         DEVICE=eth0\nONBOOT=yes\n"
    );
    assert_eq!(
        t.read("etc/sysconfig/network-scripts/route-eth0"),
        "HWADDR=not an ifcfg\n"
    );
}

#[test]
fn hostname_is_reset_and_the_model_name_leaves_etc_hosts() {
    let t = debian12();
    let ops = strip(&t);
    assert_eq!(changed(&ops, "hostname"), ["etc/hostname", "etc/hosts"]);
    assert_eq!(t.read("etc/hostname"), "localhost\n");
    assert_eq!(
        t.read("etc/hosts"),
        "127.0.0.1\tlocalhost\n\n# The following lines are desirable for IPv6 capable hosts\n\
         ::1     localhost ip6-localhost ip6-loopback\nff02::1 ip6-allnodes\n\
         10.0.0.6 model-debian.example.com\n"
    );

    let t = fedora40();
    let ops = strip(&t);
    assert_eq!(
        changed(&ops, "hostname"),
        ["etc/hostname", "etc/hosts", "etc/sysconfig/network"]
    );
    assert_eq!(
        t.read("etc/hosts"),
        "127.0.0.1\tlocalhost localhost.localdomain\n\
         ::1         localhost localhost.localdomain localhost6\n\
         192.0.2.7   db.example.com db # the database\n"
    );
    assert_eq!(t.read("etc/sysconfig/network"), "NETWORKING=yes\n");

    let t = alpine320();
    strip(&t);
    assert_eq!(t.read("etc/hostname"), "localhost\n");
    assert_eq!(
        t.read("etc/hosts"),
        "127.0.0.1\tlocalhost.localdomain localhost\n::1\t\tlocalhost\n"
    );
}

#[test]
fn the_configured_hostname_is_used_and_a_bad_one_refused_at_load() {
    let staged = load(&[("hostname", "staged.example")]).unwrap();
    let t = rhel9();
    let os = staged.inspect(t.root()).unwrap().unwrap();
    staged.strip(t.root(), &os).unwrap();
    assert_eq!(t.read("etc/hostname"), "staged.example\n");

    let err = load(&[("hostname", "bad_name!")]).err().expect("refused");
    assert!(err.to_string().contains("bad_name!"), "{err}");
    let err = load(&[("hostnme", "x")]).err().expect("refused");
    assert!(err.to_string().contains("hostnme"), "{err}");
}

#[test]
fn dhcp_leases_and_client_ids_are_removed() {
    let t = debian12();
    let ops = strip(&t);
    assert_eq!(
        changed(&ops, "dhcp-leases"),
        [
            "var/lib/dhcp/dhclient.enp1s0.leases",
            "var/lib/dhcp/dhclient6.enp1s0.leases"
        ]
    );
    assert_eq!(t.list("var/lib/dhcp"), ["README"]);

    let t = fedora40();
    let ops = strip(&t);
    assert_eq!(
        changed(&ops, "dhcp-leases"),
        ["var/lib/NetworkManager/internal-3f1c2a8e-0d6b-4b1e-9a51-2f0c8b7d9e10-enp1s0.lease"]
    );

    let t = rhel9();
    t.file("var/lib/dhcpcd/duid", "duid")
        .file("var/lib/dhcpcd/eth0.lease", "l");
    let ops = strip(&t);
    assert_eq!(
        changed(&ops, "dhcp-leases"),
        [
            "var/lib/dhclient/dhclient--eth0.lease",
            "var/lib/dhcpcd/duid",
            "var/lib/dhcpcd/eth0.lease"
        ]
    );
    assert!(t.list("var/lib/dhclient").is_empty() && t.list("var/lib/dhcpcd").is_empty());

    let t = alpine320();
    assert_eq!(
        changed(&strip(&t), "dhcp-leases"),
        ["var/lib/udhcpc/eth0.lease"]
    );
}

#[test]
fn logs_are_emptied_rotated_ones_and_the_journal_removed() {
    let t = debian12();
    let btmp_ino = t.meta("var/log/btmp").ino();
    let ops = strip(&t);
    assert_eq!(
        changed(&ops, "logs"),
        [
            "var/log/journal/4f3c2b1a0d9e8f7a6b5c4d3e2f1a0b9c",
            "var/log/apt/history.log",
            "var/log/apt/history.log.1.gz",
            "var/log/btmp",
            "var/log/cloud-init.log",
            "var/log/dpkg.log",
            "var/log/dpkg.log.1",
            "var/log/installer/syslog",
            "var/log/lastlog",
            "var/log/messages-20240101",
            "var/log/syslog",
            "var/log/syslog.2.gz",
        ]
    );
    assert_eq!(
        t.list("var/log"),
        [
            "README",
            "apt",
            "btmp",
            "cloud-init.log",
            "dpkg.log",
            "empty.log",
            "installer",
            "journal",
            "lastlog",
            "syslog",
            "wtmp"
        ]
    );
    assert!(t.list("var/log/journal").is_empty());
    assert!(t.is_link("var/log/README"));
    for kept in ["var/log/syslog", "var/log/apt/history.log", "var/log/btmp"] {
        assert_eq!(t.meta(kept).len(), 0, "{kept}");
    }
    assert_eq!(t.mode_of("var/log/btmp"), 0o660);
    assert_eq!(t.meta("var/log/btmp").ino(), btmp_ino);

    let t = alpine320();
    assert_eq!(
        changed(&strip(&t), "logs"),
        ["var/log/messages", "var/log/messages.0"]
    );
    assert_eq!(t.list("var/log"), ["messages"]);
}

#[test]
fn histories_are_removed_and_user_files_kept() {
    let t = debian12();
    let ops = strip(&t);
    assert_eq!(
        changed(&ops, "shell-history"),
        [
            "root/.bash_history",
            "root/.lesshst",
            "home/u/.bash_history",
            "home/u/.python_history",
            "home/u/.viminfo",
            "home/u/.local/share/fish/fish_history",
        ]
    );
    assert_eq!(t.list("root"), [".bashrc", ".ssh"]);
    assert_eq!(t.list("home/u"), [".local", ".ssh", "notes.txt"]);
    assert_eq!(
        t.read("home/u/.ssh/authorized_keys"),
        "ssh-ed25519 AAAA u@laptop\n"
    );
    assert_eq!(t.mode_of("home/u/.ssh/authorized_keys"), 0o600);
    assert_eq!(
        t.read("root/.ssh/authorized_keys"),
        "ssh-ed25519 AAAA admin\n"
    );
    assert!(
        t.is_link("home/v/.bash_history"),
        "history disabled by a link stays disabled"
    );

    let t = alpine320();
    assert_eq!(changed(&strip(&t), "shell-history"), ["root/.ash_history"]);
}

#[test]
fn tmp_is_emptied_and_links_there_removed_as_links() {
    let t = debian12();
    let ops = strip(&t);
    assert_eq!(
        changed(&ops, "tmp-files"),
        [
            "tmp/.X11-unix",
            "tmp/build.log",
            "tmp/etc-abs",
            "tmp/passwd-rel",
            "tmp/systemd-private-abc",
            "var/tmp/cache.bin",
        ]
    );
    assert!(t.list("tmp").is_empty() && t.list("var/tmp").is_empty());
    assert!(t.has("tmp") && t.has("var/tmp"));
    assert_eq!(
        t.read("etc/passwd"),
        "root:x:0:0:root:/root:/bin/bash\nu:x:1000:1000::/home/u:/bin/bash\n"
    );
    assert_eq!(t.list("etc/ssh").len(), 4, "/etc is intact");
}

#[test]
fn a_cleaned_directory_that_is_a_symlink_is_not_followed() {
    let t = debian12();
    fs::remove_dir_all(t.path("var/tmp")).unwrap();
    t.link("var/tmp", "../etc");
    fs::remove_dir_all(t.path("var/cache/apt/archives")).unwrap();
    t.link("var/cache/apt/archives", "/etc/ssh");
    let mut before = t.list("etc");
    // The only entries of /etc that strip removes itself.
    before.retain(|n| n != "passwd-" && n != "shadow-");
    let ops = strip(&t);
    assert_eq!(changed(&ops, "tmp-files").len(), 5, "only /tmp");
    assert!(
        op(&ops, "tmp-files")
            .detail
            .contains("/var/tmp is a symlink and was not followed"),
        "{}",
        op(&ops, "tmp-files").detail
    );
    assert!(t.is_link("var/tmp"));
    assert_eq!(t.list("etc"), before);
    assert_eq!(
        t.list("etc/ssh"),
        ["moduli", "ssh_known_hosts", "sshd_config", "sshd_config.d"]
    );
}

#[test]
fn package_caches_go_and_apt_lists_stay() {
    let t = debian12();
    let ops = strip(&t);
    assert_eq!(
        changed(&ops, "package-caches"),
        [
            "var/cache/apt/archives/curl_8.5.0_amd64.deb",
            "var/cache/apt/archives/partial/vim_9.1_amd64.deb",
            "var/cache/apt/pkgcache.bin",
            "var/cache/apt/srcpkgcache.bin",
        ]
    );
    assert_eq!(t.list("var/cache/apt/archives"), ["lock", "partial"]);
    assert_eq!(
        t.list("var/lib/apt/lists"),
        ["deb.debian.org_debian_dists_bookworm_InRelease", "lock"]
    );

    let t = fedora40();
    assert_eq!(
        changed(&strip(&t), "package-caches"),
        [
            "var/cache/dnf/expired_repos.json",
            "var/cache/dnf/fedora-abc"
        ]
    );
    assert!(t.list("var/cache/dnf").is_empty());

    let t = rhel9();
    assert_eq!(
        changed(&strip(&t), "package-caches"),
        ["var/cache/yum/x86_64"]
    );

    let t = alpine320();
    assert_eq!(changed(&strip(&t), "package-caches").len(), 2);
    assert!(t.list("var/cache/apk").is_empty());
}

#[test]
fn random_seeds_are_removed() {
    let t = debian12();
    t.file("var/lib/urandom/random-seed", "s");
    assert_eq!(
        changed(&strip(&t), "random-seed"),
        ["var/lib/systemd/random-seed", "var/lib/urandom/random-seed"]
    );
    assert!(!t.has("var/lib/systemd/random-seed"));

    let t = alpine320();
    assert_eq!(
        changed(&strip(&t), "random-seed"),
        ["var/lib/seedrng/seed.credit"]
    );
}

#[test]
fn cloud_init_state_is_removed() {
    let t = debian12();
    let ops = strip(&t);
    assert_eq!(
        changed(&ops, "cloud-init-state"),
        [
            "var/lib/cloud/data",
            "var/lib/cloud/instance",
            "var/lib/cloud/instances",
            "var/lib/cloud/sem"
        ]
    );
    assert!(t.list("var/lib/cloud").is_empty());
    assert_eq!(
        t.meta("var/log/cloud-init.log").len(),
        0,
        "its log was emptied by logs"
    );
}

#[test]
fn crash_data_is_removed() {
    let t = debian12();
    assert_eq!(
        changed(&strip(&t), "crash-data"),
        [
            "var/crash/_usr_bin_foo.1000.crash",
            "var/lib/systemd/coredump/core.foo.1000.zst"
        ]
    );
    let t = fedora40();
    assert_eq!(
        changed(&strip(&t), "crash-data"),
        [
            "var/lib/systemd/pstore/dmesg-efi-1",
            "var/spool/abrt/ccpp-2024-05-01-10:00:00-1234"
        ]
    );
    assert!(t.list("var/spool/abrt").is_empty());
}

#[test]
fn mailboxes_are_removed_through_whichever_spool_is_real() {
    // Debian: /var/mail is real, /var/spool/mail links to it.
    let t = debian12();
    let ops = strip(&t);
    assert_eq!(changed(&ops, "mail-spool"), ["var/mail/u"]);
    assert!(t.is_link("var/spool/mail") && t.list("var/mail").is_empty());
    // Fedora: the other way round.
    let t = fedora40();
    assert_eq!(changed(&strip(&t), "mail-spool"), ["var/spool/mail/u"]);
    assert!(t.is_link("var/mail"));
}

#[test]
fn at_jobs_and_run_stamps_go_and_crontabs_stay() {
    let t = debian12();
    let ops = strip(&t);
    assert_eq!(
        changed(&ops, "cron-spool"),
        [
            "var/spool/cron/atjobs/.SEQ",
            "var/spool/cron/atjobs/a0000101a2b3c4",
            "var/spool/anacron/cron.daily",
            "var/lib/systemd/timers/stamp-apt-daily.timer",
        ]
    );
    assert_eq!(
        t.read("var/spool/cron/crontabs/u"),
        "0 * * * * /home/u/job\n"
    );
    assert_eq!(t.list("var/lib/systemd/timers"), ["other"]);

    let t = rhel9();
    assert_eq!(
        changed(&strip(&t), "cron-spool"),
        [
            "var/spool/at/.SEQ",
            "var/spool/at/a0001001a2b3c4",
            "var/spool/at/spool/a0001001a2b3c4"
        ]
    );
    assert_eq!(t.list("var/spool/at"), ["spool"]);
    let t = fedora40();
    strip(&t);
    assert_eq!(t.read("var/spool/cron/u"), "0 * * * * job\n");
}

#[test]
fn rpm_db_locks_go_and_the_database_stays() {
    let t = fedora40();
    assert_eq!(
        changed(&strip(&t), "rpm-db-locks"),
        [
            "var/lib/rpm/.rpm.lock",
            "var/lib/rpm/__db.001",
            "var/lib/rpm/__db.002"
        ]
    );
    assert_eq!(t.list("var/lib/rpm"), ["rpmdb.sqlite", "rpmdb.sqlite-shm"]);
    // Debian has no rpm: the operation reports, and does nothing.
    let t = debian12();
    let ops = strip(&t);
    assert_eq!(op(&ops, "rpm-db-locks").detail, "nothing to do");
}

#[test]
fn account_backups_nm_secrets_and_registrations_are_removed() {
    let t = debian12();
    let ops = strip(&t);
    assert_eq!(
        changed(&ops, "passwd-backups"),
        ["etc/passwd-", "etc/shadow-"]
    );
    assert!(t.has("etc/passwd") && t.has("etc/shadow"));

    let t = fedora40();
    let ops = strip(&t);
    assert_eq!(
        changed(&ops, "network-manager-state"),
        [
            "var/lib/NetworkManager/secret_key",
            "var/lib/NetworkManager/timestamps"
        ]
    );
    assert_eq!(t.list("var/lib/NetworkManager"), ["NetworkManager.state"]);

    let t = rhel9();
    let ops = strip(&t);
    assert_eq!(
        changed(&ops, "rhsm-registration"),
        [
            "etc/pki/consumer/cert.pem",
            "etc/pki/consumer/key.pem",
            "etc/pki/entitlement/1234-key.pem",
            "etc/pki/entitlement/1234.pem",
            "etc/sysconfig/rhn/systemid",
        ]
    );
    assert_eq!(t.read("etc/pki/tls/certs/ca-bundle.crt"), "ca");
    assert_eq!(t.read("etc/sysconfig/rhn/up2date"), "kept");
    assert_eq!(changed(&ops, "yum-uuid"), ["var/lib/yum/uuid"]);
}

#[test]
fn what_is_not_identity_is_left_byte_for_byte() {
    let t = debian12();
    strip(&t);
    for (rel, content) in [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/bash\nu:x:1000:1000::/home/u:/bin/bash\n",
        ),
        ("etc/ssh/sshd_config", "PermitRootLogin no\n"),
        (
            "etc/ssh/ssh_known_hosts",
            "gitlab.example.com ssh-ed25519 AAAA\n",
        ),
        (
            "etc/network/interfaces",
            "auto lo\niface lo inet loopback\n",
        ),
        ("etc/udev/rules.d/99-local.rules", "# site rules\n"),
        ("home/u/notes.txt", "mine\n"),
        ("root/.bashrc", "# root's bashrc\n"),
        ("var/lib/dhcp/README", "kept\n"),
    ] {
        assert_eq!(t.read(rel), content, "{rel}");
    }
    assert!(t.is_link("etc/os-release") && t.is_link("bin") && t.is_link("usr/sbin/init"));
    // The staged tree is still the same OS.
    assert_eq!(
        inspect(&t),
        os("debian", "12", Arch::X8664, InitSystem::Systemd)
    );
}

#[test]
fn hostile_trees_make_strip_fail_naming_the_path() {
    let t = ubuntu2404();
    t.file("etc/netplan/99-big.yaml", vec![b'#'; 100 << 10]);
    let os = inspect(&t);
    let err = plugin().strip(t.root(), &os).unwrap_err();
    assert!(matches!(err, PluginError::Failed { .. }), "{err}");
    assert!(
        err.to_string().contains("/etc/netplan/99-big.yaml"),
        "{err}"
    );

    let t = debian12();
    let deep: String = (0..140).map(|_| "d/").collect();
    t.dir(&format!("tmp/{deep}"));
    let err = plugin()
        .strip(t.root(), &inspect(&t))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tmp-files") && err.contains("/tmp/d/d"),
        "{err}"
    );
}
