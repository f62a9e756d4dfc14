//! Staging end to end: a disk built from a tree shaped like a used Debian or Alpine VM is
//! uploaded, registered as a model VM, staged through the API by the real identity-linux plugin,
//! and the staged image is opened again to check what changed and what did not.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use slipway_image::layout::{self, Content, Layout, Sizing, Volume};
use slipway_image::partition::{ESP_TYPE, LINUX_FS_TYPE, Partition, PartitionType, Scheme, Table};
use slipway_test_artifacts as artifacts;
use uuid::Uuid;

use crate::support::*;

const MIB: u64 = 1 << 20;
const ROOT_UUID: &str = "6f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f";
/// `security.capability` granting cap_net_raw.
const CAP_NET_RAW: [u8; 20] = [
    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

fn root_or_skip() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("SLIPWAY_REQUIRE_ROOT_TESTS").is_none(),
        "the staging tests need root"
    );
    eprintln!("skipped: staging needs root");
    false
}

fn write(root: &Path, path: &str, content: &str) {
    let p = root.join(path);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

/// A minimal ELF header for x86-64, enough for the plugin to read the architecture.
fn elf() -> Vec<u8> {
    let mut e = vec![0u8; 64];
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = 2;
    e[5] = 1;
    e[6] = 1;
    e[18] = 0x3e;
    e
}

/// A used Debian 12 VM: systemd, OpenSSH host keys, a machine-id, logs, history, a lease.
fn debian(root: &Path, cloud_init: bool) {
    for d in [
        "usr/bin",
        "usr/lib/systemd",
        "usr/sbin",
        "etc/systemd/system/multi-user.target.wants",
        "tmp",
        "var/tmp",
        "root",
        "var/log/apt",
        "lost+found",
    ] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    symlink("usr/bin", root.join("bin")).unwrap();
    symlink("usr/sbin", root.join("sbin")).unwrap();
    fs::write(root.join("usr/bin/bash"), elf()).unwrap();
    symlink("bash", root.join("usr/bin/sh")).unwrap();
    fs::write(root.join("usr/lib/systemd/systemd"), elf()).unwrap();
    symlink("/lib/systemd/systemd", root.join("usr/sbin/init")).unwrap();
    symlink("usr/lib", root.join("lib")).unwrap();
    write(
        root,
        "usr/lib/os-release",
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nID=debian\n",
    );
    symlink("../usr/lib/os-release", root.join("etc/os-release")).unwrap();
    write(root, "etc/debian_version", "12.7\n");
    write(root, "etc/machine-id", "4f9a2b1c8d7e6f5a4b3c2d1e0f9a8b7c\n");
    write(root, "etc/hostname", "model-debian\n");
    write(
        root,
        "etc/hosts",
        "127.0.0.1 localhost\n127.0.1.1 model-debian\n",
    );
    write(root, "etc/passwd", "root:x:0:0:root:/root:/bin/bash\n");
    write(root, "etc/ssh/ssh_host_ed25519_key", "PRIVATE\n");
    write(
        root,
        "etc/ssh/ssh_host_ed25519_key.pub",
        "ssh-ed25519 AAAA root@model-debian\n",
    );
    write(root, "etc/ssh/sshd_config", "PermitRootLogin no\n");
    write(
        root,
        "var/lib/dhcp/dhclient.eth0.leases",
        "lease { fixed-address 10.0.2.15; }\n",
    );
    write(root, "var/log/syslog", "model boot log\n");
    write(root, "var/log/syslog.1", "older\n");
    write(root, "root/.bash_history", "cat /etc/shadow\n");
    write(root, "tmp/scratch", "x");
    write(root, "var/lib/systemd/random-seed", "seed");
    fs::write(root.join("usr/bin/ping"), elf()).unwrap();
    fs::set_permissions(root.join("usr/bin/ping"), fs::Permissions::from_mode(0o755)).unwrap();
    rustix::fs::setxattr(
        root.join("usr/bin/ping"),
        "security.capability",
        &CAP_NET_RAW,
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    if cloud_init {
        fs::write(root.join("usr/bin/cloud-init"), elf()).unwrap();
        write(
            root,
            "etc/cloud/cloud.cfg",
            "datasource_list: [ NoCloud, ConfigDrive, None ]\n",
        );
        write(root, "var/lib/cloud/instance/obj.pkl", "state");
    }
}

/// A used Alpine 3.20 VM: OpenRC, busybox.
fn alpine(root: &Path) {
    for d in [
        "bin",
        "sbin",
        "etc/init.d",
        "etc/runlevels/default",
        "etc/runlevels/boot",
        "root",
        "tmp",
        "var/log",
        "lost+found",
    ] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(root.join("bin/busybox"), elf()).unwrap();
    symlink("/bin/busybox", root.join("bin/sh")).unwrap();
    fs::write(root.join("sbin/openrc"), elf()).unwrap();
    symlink("/bin/busybox", root.join("sbin/init")).unwrap();
    write(
        root,
        "etc/os-release",
        "NAME=\"Alpine Linux\"\nID=alpine\nVERSION_ID=3.20.3\n",
    );
    write(root, "etc/alpine-release", "3.20.3\n");
    write(root, "etc/hostname", "model-alpine\n");
    write(
        root,
        "etc/inittab",
        "::sysinit:/sbin/openrc sysinit\n::wait:/sbin/openrc default\n",
    );
    write(root, "etc/ssh/ssh_host_rsa_key", "PRIVATE\n");
    write(root, "root/.ash_history", "reboot\n");
}

/// A GPT disk: an EFI system partition and the root file system.
fn disk(work: &Path, tree: impl FnOnce(&Path)) -> PathBuf {
    fs::create_dir(work.join("root")).unwrap();
    fs::create_dir_all(work.join("esp/EFI/BOOT")).unwrap();
    fs::write(work.join("esp/EFI/BOOT/BOOTX64.EFI"), b"MZ").unwrap();
    tree(&work.join("root"));
    let part = |number, ptype, size| Partition {
        number,
        start: 0,
        size,
        ptype: PartitionType::Gpt(ptype),
        guid: Some(Uuid::new_v4()),
        name: String::new(),
        attributes: 0,
    };
    let layout = Layout {
        disk_size: 0,
        table: Table {
            scheme: Scheme::Gpt {
                disk_guid: Uuid::new_v4(),
            },
            partitions: vec![],
            boot_code: vec![],
        },
        volumes: vec![
            Volume {
                partition: Some(part(1, ESP_TYPE, 34 * MIB)),
                content: Content::Fat {
                    info: slipway_image::fat::Info {
                        kind: "fat32".into(),
                        volume_id: 0xabcd,
                        label: "ESP".into(),
                        cluster_size: 512,
                        size: 34 * MIB,
                        used_bytes: 0,
                    },
                    tree: "esp".into(),
                },
                counts: None,
            },
            Volume {
                partition: Some(part(2, LINUX_FS_TYPE, 96 * MIB)),
                content: Content::Ext {
                    info: slipway_image::ext4::Info {
                        kind: "ext4".into(),
                        uuid: ROOT_UUID.parse().unwrap(),
                        label: "root".into(),
                        block_size: 4096,
                        inode_size: 256,
                        blocks: 0,
                        free_blocks: 0,
                        inodes: 0,
                        free_inodes: 0,
                        reserved_blocks: 0,
                        features: [
                            "has_journal",
                            "ext_attr",
                            "dir_index",
                            "filetype",
                            "extent",
                            "64bit",
                            "flex_bg",
                            "sparse_super",
                            "large_file",
                            "huge_file",
                            "dir_nlink",
                            "extra_isize",
                            "metadata_csum",
                        ]
                        .map(String::from)
                        .to_vec(),
                        hash_seed: Uuid::new_v4(),
                        last_mounted: "/".into(),
                    },
                    tree: "root".into(),
                },
                counts: None,
            },
        ],
    };
    let raw = work.join("model.raw");
    layout::copy_in(&layout, work, &raw, Sizing::Same).unwrap();
    let qcow2 = work.join("model.qcow2");
    layout::to_qcow2(&raw, &qcow2).unwrap();
    qcow2
}

fn model(name: &str, image: &str, distro: &str, version: &str) -> Value {
    json!({
        "name": name,
        "hardware": {
            "vcpus": 1, "memory_mib": 512,
            "disks": [{"size_mib": 256, "bus": "virtio", "image": image}],
            "nics": [{"model": "virtio"}],
            "firmware": "uefi", "arch": "x86_64", "machine_type": "q35"
        },
        "os": {"family": "linux", "distro": distro, "version": version, "arch": "x86_64"},
    })
}

async fn staging_app() -> TestApp {
    staging_app_with(None).await
}

/// `work_dir`: scratch space for the trees, possibly another file system than the data's.
async fn staging_app_with(work_dir: Option<PathBuf>) -> TestApp {
    let plugins = tempfile::tempdir().unwrap().keep();
    std::os::unix::fs::symlink(
        artifacts::IDENTITY_LINUX.dir,
        plugins.join("identity-linux"),
    )
    .unwrap();
    TestApp::with(move |c| {
        c.plugins = plugins;
        c.guest_agent = Some(PathBuf::from(artifacts::GUEST_AGENT));
        if let Some(w) = work_dir {
            c.work_dir = w;
        }
    })
    .await
}

/// Uploads the disk, registers the model VM, stages it, and returns the job.
async fn stage(t: &TestApp, name: &str, qcow2: &Path, distro: &str, version: &str) -> Reply {
    let image = t.upload_ok(name, qcow2).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let created = t
        .post("/v1/model-vms", model(name, &image, distro, version))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    t.call(
        Method::POST,
        "/v1/staged-vms?wait=true",
        Some(&t.operator),
        Some(json!({ "model_vm": name })),
    )
    .await
}

/// Opens a stored image again and copies its file systems out.
fn open_staged(t: &TestApp, image: &str, into: &Path) -> Layout {
    let raw = into.join("staged.raw");
    layout::to_raw(&t.app.images.blob_path(image), "qcow2", &raw).unwrap();
    let trees = into.join("trees");
    fs::create_dir(&trees).unwrap();
    layout::copy_out(&raw, &trees).unwrap()
}

fn no_leftovers(t: &TestApp) {
    let work = &t.app.config.work_dir;
    let left: Vec<_> = fs::read_dir(work)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "working directories left: {left:?}");
    assert!(
        t.tmp_files().is_empty(),
        "temporary files left: {:?}",
        t.tmp_files()
    );
}

#[tokio::test]
async fn a_debian_model_is_stripped_and_gets_the_first_boot_agent_for_systemd() {
    if !root_or_skip() {
        return;
    }
    let t = staging_app().await;
    let work = tempfile::tempdir().unwrap();
    let qcow2 = disk(work.path(), |r| debian(r, false));
    let reply = stage(&t, "debian-12", &qcow2, "debian", "12").await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(reply.body["state"], "succeeded", "{}", reply.body);
    let staged = &reply.body["result"];
    assert_eq!(staged["name"], "debian-12-staged");
    assert_eq!(
        staged["os"],
        json!({"family": "linux", "distro": "debian", "version": "12", "arch": "x86_64", "init_system": "systemd"})
    );
    assert_eq!(staged["first_boot"], "slipway-firstboot");
    assert!(
        staged["plugin"]
            .as_str()
            .unwrap()
            .starts_with("identity-linux@")
    );
    let ops: Vec<&str> = staged["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    let pos = |n: &str| {
        ops.iter()
            .position(|o| *o == n)
            .unwrap_or_else(|| panic!("{n} missing from {ops:?}"))
    };
    assert!(
        pos("machine-id") < pos("ssh-host-keys") && pos("ssh-host-keys") < pos("first-boot"),
        "{ops:?}"
    );
    let machine = staged["operations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "machine-id")
        .unwrap();
    assert!(
        machine["changed"]
            .as_array()
            .unwrap()
            .contains(&json!("etc/machine-id")),
        "{machine}"
    );

    // The staged image: a new image, the model's identity gone, the rest intact.
    let image = staged["image"].as_str().unwrap();
    let out = tempfile::tempdir().unwrap();
    let layout = open_staged(&t, image, out.path());
    let Content::Ext { info, tree } = &layout.volumes[1].content else {
        panic!("{layout:?}")
    };
    assert_eq!(
        info.uuid.to_string(),
        ROOT_UUID,
        "the root file system keeps its UUID (fstab, root=)"
    );
    let root = out.path().join("trees").join(tree);
    assert_eq!(
        fs::read(root.join("etc/machine-id")).unwrap(),
        b"",
        "emptied, not deleted"
    );
    assert!(!root.join("etc/ssh/ssh_host_ed25519_key").exists());
    assert!(!root.join("etc/ssh/ssh_host_ed25519_key.pub").exists());
    assert_eq!(
        fs::read_to_string(root.join("etc/ssh/sshd_config")).unwrap(),
        "PermitRootLogin no\n"
    );
    assert_eq!(
        fs::read_to_string(root.join("etc/hostname"))
            .unwrap()
            .trim(),
        "localhost"
    );
    assert!(!root.join("root/.bash_history").exists());
    assert!(!root.join("var/lib/dhcp/dhclient.eth0.leases").exists());
    assert!(!root.join("tmp/scratch").exists());
    assert_eq!(
        fs::read_to_string(root.join("etc/passwd")).unwrap(),
        "root:x:0:0:root:/root:/bin/bash\n"
    );
    let cap = rustix::fs::getxattr(
        root.join("usr/bin/ping"),
        "security.capability",
        &mut [0u8; 64][..],
    )
    .unwrap();
    assert_eq!(cap, CAP_NET_RAW.len(), "ping keeps its capability");
    // The first-boot agent, wired for systemd.
    let agent = root.join("usr/local/sbin/slipway-firstboot");
    assert_eq!(
        fs::read(&agent).unwrap(),
        fs::read(artifacts::GUEST_AGENT).unwrap()
    );
    assert_eq!(
        fs::metadata(&agent).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let unit =
        fs::read_to_string(root.join("etc/systemd/system/slipway-firstboot.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/sbin/slipway-firstboot"),
        "{unit}"
    );
    assert!(
        fs::symlink_metadata(
            root.join("etc/systemd/system/multi-user.target.wants/slipway-firstboot.service")
        )
        .unwrap()
        .is_symlink()
    );

    // Lineage and listing.
    let listed = t.get("/v1/staged-vms?model_vm=debian-12").await;
    assert_eq!(
        listed.body["items"].as_array().unwrap().len(),
        1,
        "{}",
        listed.body
    );
    let model = t.get("/v1/model-vms/debian-12").await;
    assert_eq!(staged["model_vm"], model.body["id"]);
    // The model and the image cannot go while the staged VM names them.
    let del = t
        .call(
            Method::DELETE,
            "/v1/model-vms/debian-12",
            Some(&t.operator),
            None,
        )
        .await;
    assert_eq!(del.status, StatusCode::CONFLICT, "{}", del.body);
    assert!(
        del.body["detail"]
            .as_str()
            .unwrap()
            .contains("staged VM debian-12-staged"),
        "{}",
        del.body
    );
    let del = t
        .call(
            Method::DELETE,
            &format!("/v1/images/{image}"),
            Some(&t.operator),
            None,
        )
        .await;
    assert_eq!(del.status, StatusCode::CONFLICT, "{}", del.body);
    // The same name twice is a conflict, before any work.
    let again = t
        .call(
            Method::POST,
            "/v1/staged-vms",
            Some(&t.operator),
            Some(json!({ "model_vm": "debian-12" })),
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    no_leftovers(&t);
}

#[tokio::test]
async fn a_model_with_cloud_init_is_pointed_at_the_nocloud_seed_and_an_alpine_one_gets_openrc() {
    if !root_or_skip() {
        return;
    }
    // Trees on another file system than the image store (tmpfs), as `--work-dir` allows.
    let scratch = tempfile::tempdir_in("/dev/shm").unwrap();
    let t = staging_app_with(Some(scratch.path().join("work"))).await;
    let work = tempfile::tempdir().unwrap();
    let qcow2 = disk(work.path(), |r| debian(r, true));
    let reply = stage(&t, "debian-cloud", &qcow2, "debian", "12").await;
    assert_eq!(reply.body["state"], "succeeded", "{}", reply.body);
    assert_eq!(reply.body["result"]["first_boot"], "cloud-init");
    let out = tempfile::tempdir().unwrap();
    let layout = open_staged(
        &t,
        reply.body["result"]["image"].as_str().unwrap(),
        out.path(),
    );
    let root = out
        .path()
        .join("trees")
        .join(layout.volumes[1].tree().unwrap());
    let cfg = fs::read_to_string(root.join("etc/cloud/cloud.cfg.d/99_slipway.cfg")).unwrap();
    assert!(cfg.contains("NoCloud"), "{cfg}");
    assert!(
        !root.join("usr/local/sbin/slipway-firstboot").exists(),
        "cloud-init does the first boot"
    );
    assert!(
        !root.join("var/lib/cloud/instance").exists(),
        "the model's cloud-init state is gone"
    );

    let work = tempfile::tempdir().unwrap();
    let qcow2 = disk(work.path(), alpine);
    let reply = stage(&t, "alpine-3", &qcow2, "alpine", "3.20.3").await;
    assert_eq!(reply.body["state"], "succeeded", "{}", reply.body);
    assert_eq!(reply.body["result"]["os"]["init_system"], "openrc");
    let out = tempfile::tempdir().unwrap();
    let layout = open_staged(
        &t,
        reply.body["result"]["image"].as_str().unwrap(),
        out.path(),
    );
    let root = out
        .path()
        .join("trees")
        .join(layout.volumes[1].tree().unwrap());
    assert!(root.join("etc/init.d/slipway-firstboot").exists());
    assert_eq!(
        fs::read_link(root.join("etc/runlevels/default/slipway-firstboot")).unwrap(),
        Path::new("/etc/init.d/slipway-firstboot")
    );
    assert!(!root.join("etc/ssh/ssh_host_rsa_key").exists());

    // Requests are matched against what staging recorded: the OS it found, the model's apps.
    let plan = t
        .call(
            Method::POST,
            "/v1/plans",
            Some(&t.requester),
            Some(json!({"os": {"distro": "alpine"}})),
        )
        .await;
    // No host has joined this server: the plan says so, and still names the staged VM.
    assert_eq!(
        plan.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        plan.body
    );
    assert_eq!(
        plan.body["findings"][0]["code"], "no-hosts",
        "{}",
        plan.body
    );
    let chosen = &plan.body["plan"]["staged_vm"]["chosen"];
    assert_eq!(chosen["name"], "alpine-3-staged", "{}", plan.body);
    assert_eq!(chosen["os"], "linux alpine 3.20.3 x86_64");
    assert_eq!(
        plan.body["plan"]["staged_vm"]["runner_up"]["name"],
        "debian-cloud-staged"
    );
    no_leftovers(&t);
}

#[tokio::test]
async fn staging_fails_at_the_step_that_cannot_go_on_and_leaves_nothing() {
    if !root_or_skip() {
        return;
    }
    let t = staging_app().await;
    // With `wait=true`, a failed job answers 422 naming the step and why.
    let failed = |reply: &Reply, step: &str| -> String {
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            reply.body
        );
        assert_eq!(reply.problem(), "job-failed", "{}", reply.body);
        let detail = reply.body["detail"].as_str().unwrap().to_owned();
        assert!(
            detail.starts_with(&format!("step {step} failed: ")),
            "{detail}"
        );
        detail
    };
    // No operating system at all.
    let work = tempfile::tempdir().unwrap();
    let qcow2 = disk(work.path(), |r| write(r, "data/file", "just data"));
    let reply = stage(&t, "no-os", &qcow2, "debian", "12").await;
    assert!(
        failed(&reply, "inspect").contains("os-release"),
        "{}",
        reply.body
    );

    // The model VM says Ubuntu; the image holds Debian.
    let work = tempfile::tempdir().unwrap();
    let qcow2 = disk(work.path(), |r| debian(r, false));
    let reply = stage(&t, "liar", &qcow2, "ubuntu", "24.04").await;
    let detail = failed(&reply, "inspect");
    assert!(
        detail.contains("ubuntu") && detail.contains("debian"),
        "{detail}"
    );

    // An `etc` that links to the host's: the host's os-release must not make it a root.
    let work = tempfile::tempdir().unwrap();
    let qcow2 = disk(work.path(), |r| symlink("/etc", r.join("etc")).unwrap());
    let reply = stage(&t, "host-etc", &qcow2, "debian", "12").await;
    assert!(
        failed(&reply, "inspect").contains("os-release"),
        "{}",
        reply.body
    );

    // A disk too small for the tree: refused when the image is written, and no image stays.
    let images_before = t.get("/v1/images").await.body["items"]
        .as_array()
        .unwrap()
        .len();
    let blobs_before = t.blobs().len();
    let work = tempfile::tempdir().unwrap();
    let qcow2 = disk(work.path(), |r| debian(r, false));
    let image = t.upload_ok("tiny", &qcow2).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    t.post("/v1/model-vms", model("tiny", &image, "debian", "12"))
        .await;
    let reply = t
        .call(
            Method::POST,
            "/v1/staged-vms?wait=true",
            Some(&t.operator),
            Some(json!({ "model_vm": "tiny", "disk_mib": 40 })),
        )
        .await;
    assert!(
        failed(&reply, "write-image").contains("MiB"),
        "{}",
        reply.body
    );
    assert_eq!(
        t.get("/v1/images").await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        images_before + 1,
        "only the model's image"
    );
    assert_eq!(t.blobs().len(), blobs_before + 1);

    // A disk of noise: no partition table, no file system.
    let raw = raw_disk(t.dir.path(), "noise.raw", 4, 7);
    let image = t.upload_ok("noise", &raw).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    t.post("/v1/model-vms", model("noise", &image, "debian", "12"))
        .await;
    let reply = t
        .call(
            Method::POST,
            "/v1/staged-vms?wait=true",
            Some(&t.operator),
            Some(json!({ "model_vm": "noise" })),
        )
        .await;
    assert!(
        failed(&reply, "copy-out").contains("no partition table"),
        "{}",
        reply.body
    );
    let job = t
        .get(&format!("/v1/jobs/{}", reply.body["job"].as_str().unwrap()))
        .await;
    assert_eq!(job.body["error"]["step"], "copy-out", "{}", job.body);

    // Bad requests are refused before any job.
    let r = t
        .call(
            Method::POST,
            "/v1/staged-vms",
            Some(&t.operator),
            Some(json!({ "model_vm": "nope" })),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = t
        .call(
            Method::POST,
            "/v1/staged-vms",
            Some(&t.operator),
            Some(json!({ "model_vm": "noise", "fit_margin_mib": 8, "disk_mib": 100 })),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    let r = t
        .call(
            Method::POST,
            "/v1/staged-vms",
            Some(&t.requester),
            Some(json!({ "model_vm": "noise" })),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(t.get("/v1/staged-vms").await.body["items"], json!([]));
    no_leftovers(&t);
}

/// A real Debian bookworm (debootstrap, built once by `scripts/fixtures/debian-image` and cached),
/// partitioned by sfdisk and formatted by mkfs.vfat and mke2fs: imported, staged, and compared
/// file by file with the model. Everything the report does not name is identical.
#[tokio::test]
async fn a_debootstrapped_debian_is_staged_and_everything_not_reported_is_identical() {
    if !root_or_skip() {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = std::process::Command::new(root.join("scripts/fixtures/debian-image"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "building the fixture: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let fixtures = image.parent().unwrap().to_path_buf();
    let t = {
        let plugins = tempfile::tempdir().unwrap().keep();
        std::os::unix::fs::symlink(
            artifacts::IDENTITY_LINUX.dir,
            plugins.join("identity-linux"),
        )
        .unwrap();
        TestApp::with(move |c| {
            c.plugins = plugins;
            c.guest_agent = Some(PathBuf::from(artifacts::GUEST_AGENT));
            c.import_dirs = vec![fixtures];
        })
        .await
    };
    let imported = t
        .call(
            Method::POST,
            "/v1/images/import?wait=true",
            Some(&t.operator),
            Some(json!({ "path": image, "name": "bookworm" })),
        )
        .await;
    assert_eq!(imported.status, StatusCode::CREATED, "{}", imported.body);
    let model_image = imported.body["result"]["id"].as_str().unwrap().to_owned();
    let mut spec = model("bookworm", &model_image, "debian", "12");
    spec["hardware"]["disks"][0]["size_mib"] = json!(2048);
    assert_eq!(
        t.post("/v1/model-vms", spec).await.status,
        StatusCode::CREATED
    );
    let reply = t
        .call(
            Method::POST,
            "/v1/staged-vms?wait=true",
            Some(&t.operator),
            Some(json!({ "model_vm": "bookworm" })),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let staged = &reply.body["result"];
    assert_eq!(staged["os"]["init_system"], "systemd");
    assert_eq!(staged["first_boot"], "slipway-firstboot");

    let before = tempfile::tempdir().unwrap();
    let after = tempfile::tempdir().unwrap();
    let model_layout = open_staged(&t, &model_image, before.path());
    let staged_layout = open_staged(&t, staged["image"].as_str().unwrap(), after.path());
    assert_eq!(
        model_layout.table.scheme, staged_layout.table.scheme,
        "the disk GUID is kept"
    );
    assert_eq!(model_layout.volumes.len(), 3, "ESP, BIOS boot, root");
    for (m, s) in model_layout.volumes.iter().zip(&staged_layout.volumes) {
        let (mp, sp) = (m.partition.as_ref().unwrap(), s.partition.as_ref().unwrap());
        assert_eq!(
            (mp.number, mp.ptype, mp.guid),
            (sp.number, sp.ptype, sp.guid)
        );
    }

    // Paths the report names, and the directories holding them (their times change).
    let mut touched = std::collections::BTreeSet::new();
    for op in staged["operations"].as_array().unwrap() {
        for path in op["changed"].as_array().unwrap() {
            let mut p = Path::new(path.as_str().unwrap());
            touched.insert(p.display().to_string());
            while let Some(parent) = p.parent() {
                touched.insert(parent.display().to_string());
                p = parent;
            }
        }
    }
    for (i, (m, s)) in model_layout
        .volumes
        .iter()
        .zip(&staged_layout.volumes)
        .enumerate()
    {
        let (Some(mt), Some(st)) = (m.tree(), s.tree()) else {
            continue;
        };
        let a = slipway_image::tree::list(&before.path().join("trees").join(mt)).unwrap();
        let b = slipway_image::tree::list(&after.path().join("trees").join(st)).unwrap();
        let is_root = i == 2;
        let keep = |l: &slipway_image::tree::Listing| -> slipway_image::tree::Listing {
            l.iter()
                .filter(|(p, _)| {
                    !is_root
                        || !touched
                            .iter()
                            .any(|t| p == &t || p.starts_with(&format!("{t}/")))
                })
                .map(|(p, e)| (p.clone(), e.clone()))
                .collect()
        };
        let diff = slipway_image::tree::diff(&keep(&a), &keep(&b), false);
        assert!(
            diff.is_empty(),
            "volume {i}: {} differences, first: {:#?}",
            diff.len(),
            &diff[..diff.len().min(5)]
        );
        if is_root {
            assert!(a.len() > 5000, "a real tree: {} entries", a.len());
            let cap = &b["usr/bin/ping"].xattrs;
            assert!(
                cap.contains_key("security.capability"),
                "ping keeps its capability: {cap:?}"
            );
            assert_eq!(b["etc/machine-id"].size, 0);
        }
    }
    no_leftovers(&t);
}
