//! Disk images end to end: trees written into real images (GPT and MBR, ext4 by mke2fs, FAT),
//! read back by the Rust readers, and compared attribute by attribute; hostile images refused
//! with errors that name the fault and leave nothing behind. Needs root (owners, device nodes,
//! security.* attributes): skipped otherwise, unless SLIPWAY_REQUIRE_ROOT_TESTS=1 makes that a
//! failure.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use slipway_image::layout::{self, Content, Layout, Sizing, Volume};
use slipway_image::partition::{
    self, BIOS_BOOT_TYPE, ESP_TYPE, LINUX_FS_TYPE, Partition, PartitionType, Scheme, Table,
};
use slipway_image::tree::{self, Listing};
use slipway_image::{ImageError, ext4, fat};
use uuid::Uuid;

const MIB: u64 = 1 << 20;

fn root_or_skip() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("SLIPWAY_REQUIRE_ROOT_TESTS").is_none(),
        "SLIPWAY_REQUIRE_ROOT_TESTS is set but the tests do not run as root"
    );
    eprintln!("skipped: needs root");
    false
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn set_times(p: &Path, atime: i64, mtime: (i64, u32)) {
    use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, utimensat};
    utimensat(
        CWD,
        p,
        &Timestamps {
            last_access: Timespec {
                tv_sec: atime,
                tv_nsec: 0,
            },
            last_modification: Timespec {
                tv_sec: mtime.0,
                tv_nsec: i64::from(mtime.1),
            },
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn mknod(p: &Path, kind: rustix::fs::FileType, mode: u32, dev: u64) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        kind,
        rustix::fs::Mode::from_raw_mode(mode),
        dev,
    )
    .unwrap();
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

/// `security.capability` granting cap_net_raw, as `setcap cap_net_raw+ep` writes it.
const CAP_NET_RAW: [u8; 20] = [
    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// A POSIX ACL in VFS form: user::rwx, user:1000:r-x, group::r-x, mask::r-x, other::r--.
fn acl() -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (1u16, 7u16, u32::MAX),
        (2, 5, 1000),
        (4, 5, u32::MAX),
        (0x10, 5, u32::MAX),
        (0x20, 4, u32::MAX),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// A tree with every attribute a faithful copy must keep. Access times lie in the future so
/// that reading the files (relatime) leaves them alone.
fn rich_tree(root: &Path) {
    let future = 2_143_238_400; // 2037-12-01: in the future, and representable in 128-byte inodes
    let mt = |i: i64| {
        (
            1_600_000_000 + i * 1000,
            (i as u32) * 1_000_003 % 1_000_000_000,
        )
    };
    fs::create_dir_all(root.join("etc/ssh")).unwrap();
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::create_dir_all(root.join("tmp")).unwrap();
    fs::create_dir_all(root.join("home/user")).unwrap();
    fs::create_dir_all(root.join("dev")).unwrap();
    fs::create_dir_all(root.join("lost+found")).unwrap();
    fs::set_permissions(root.join("lost+found"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(root.join("etc/hostname"), "model-vm\n").unwrap();
    fs::write(root.join("etc/empty"), "").unwrap();
    fs::write(root.join("etc/ssh/ssh_host_ed25519_key"), "secret\n").unwrap();
    fs::set_permissions(
        root.join("etc/ssh/ssh_host_ed25519_key"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    // Large, incompressible-ish data across many blocks.
    let big: Vec<u8> = (0..3 * MIB as usize)
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    fs::write(root.join("usr/bin/big"), &big).unwrap();
    // Sparse: data at 0 and at 64 MiB, a hole between.
    let sparse = File::create(root.join("usr/bin/sparse")).unwrap();
    sparse.write_all_at(b"head", 0).unwrap();
    sparse.write_all_at(b"tail", 64 * MIB).unwrap();
    drop(sparse);
    fs::write(root.join("usr/bin/ping"), b"\x7fELF ping").unwrap();
    fs::set_permissions(root.join("usr/bin/ping"), fs::Permissions::from_mode(0o755)).unwrap();
    rustix::fs::setxattr(
        root.join("usr/bin/ping"),
        "security.capability",
        &CAP_NET_RAW,
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    fs::write(root.join("usr/bin/su"), b"su").unwrap();
    fs::set_permissions(root.join("usr/bin/su"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(root.join("usr/bin/wall"), b"wall").unwrap();
    chown(&root.join("usr/bin/wall"), 0, 5);
    fs::set_permissions(
        root.join("usr/bin/wall"),
        fs::Permissions::from_mode(0o2755),
    )
    .unwrap();
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(root.join("home/user/notes"), "mine").unwrap();
    chown(&root.join("home/user/notes"), 1000, 1000);
    chown(&root.join("home/user"), 1000, 1000);
    rustix::fs::setxattr(
        root.join("home/user/notes"),
        "user.origin",
        b"model",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::setxattr(
        root.join("home/user/notes"),
        "trusted.overlay",
        b"x",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::setxattr(
        root.join("home/user"),
        "system.posix_acl_access",
        &acl(),
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::setxattr(
        root.join("home/user"),
        "system.posix_acl_default",
        &acl(),
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    // Three names for one file.
    fs::write(root.join("usr/bin/busybox"), "multi-call").unwrap();
    fs::hard_link(root.join("usr/bin/busybox"), root.join("usr/bin/sh")).unwrap();
    fs::hard_link(root.join("usr/bin/busybox"), root.join("etc/ls")).unwrap();
    symlink("/etc/shadow", root.join("etc/shadow-link")).unwrap();
    symlink("../usr/bin/busybox", root.join("etc/relative")).unwrap();
    let long_target = "x/".repeat(100) + "end";
    symlink(&long_target, root.join("etc/long-link")).unwrap();
    chown(&root.join("etc/relative"), 7, 8);
    mknod(&root.join("dev/fifo"), rustix::fs::FileType::Fifo, 0o640, 0);
    mknod(
        &root.join("dev/null"),
        rustix::fs::FileType::CharacterDevice,
        0o666,
        rustix::fs::makedev(1, 3),
    );
    mknod(
        &root.join("dev/sda1"),
        rustix::fs::FileType::BlockDevice,
        0o660,
        rustix::fs::makedev(259, 70000),
    );
    mknod(
        &root.join("dev/sock"),
        rustix::fs::FileType::Socket,
        0o755,
        0,
    );
    fs::write(root.join(OsStr::from_bytes(b"caf\xe9-latin1")), "not utf-8").unwrap();
    // A root that is not 0755 root:root (Fedora's is 0555).
    chown(root, 1234, 4321);
    fs::set_permissions(root, fs::Permissions::from_mode(0o750)).unwrap();
    // Every entry gets distinct times, deepest first so directories keep theirs.
    let mut all: Vec<PathBuf> = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p.symlink_metadata().unwrap().is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
        all.push(p);
    }
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in all.iter().enumerate() {
        set_times(p, future, mt(i as i64));
    }
    set_times(&root.join("etc/hostname"), future, (-86_400, 5)); // before 1970
    set_times(
        &root.join("etc/empty"),
        future,
        (4_500_000_000, 999_999_999),
    ); // past 2038
}

/// A small FAT tree like an EFI system partition.
fn esp_tree(root: &Path) {
    fs::create_dir_all(root.join("EFI/BOOT")).unwrap();
    fs::create_dir_all(root.join("EFI/debian")).unwrap();
    fs::write(root.join("EFI/BOOT/BOOTX64.EFI"), vec![0x4d; 200_000]).unwrap();
    fs::write(
        root.join("EFI/debian/grub.cfg"),
        "search.fs_uuid 1234 root\n",
    )
    .unwrap();
    fs::write(root.join("EFI/debian/A long file name.txt"), "lfn").unwrap();
    for p in [
        "EFI/BOOT/BOOTX64.EFI",
        "EFI/debian/grub.cfg",
        "EFI/debian/A long file name.txt",
    ] {
        set_times(&root.join(p), 1_700_000_000, (1_700_000_002, 0));
    }
}

fn ext_info(uuid: &str, features: &[&str]) -> ext4::Info {
    ext4::Info {
        kind: "ext4".into(),
        uuid: uuid.parse().unwrap(),
        label: "root".into(),
        block_size: 4096,
        inode_size: 256,
        blocks: 0,
        free_blocks: 0,
        inodes: 0,
        free_inodes: 0,
        reserved_blocks: 0,
        features: features.iter().map(|s| s.to_string()).collect(),
        hash_seed: Uuid::new_v4(),
        last_mounted: "/".into(),
    }
}

const EXT4_FEATURES: &[&str] = &[
    "has_journal",
    "ext_attr",
    "resize_inode",
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
];

fn gpt_layout(work: &Path) -> Layout {
    let part = |number, ptype, size| Partition {
        number,
        start: 0,
        size,
        ptype: PartitionType::Gpt(ptype),
        guid: Some(Uuid::new_v4()),
        name: format!("part{number}"),
        attributes: 0,
    };
    fs::write(work.join("p2.raw"), vec![0xab; MIB as usize]).unwrap();
    Layout {
        disk_size: 0,
        table: Table {
            scheme: Scheme::Gpt {
                disk_guid: Uuid::new_v4(),
            },
            partitions: vec![],
            boot_code: vec![0xeb; 440],
        },
        volumes: vec![
            Volume {
                partition: Some(part(1, ESP_TYPE, 64 * MIB)),
                content: Content::Fat {
                    info: fat::Info {
                        kind: "fat32".into(),
                        volume_id: 0x1234_abcd,
                        label: "ESP".into(),
                        cluster_size: 512,
                        size: 64 * MIB,
                        used_bytes: 0,
                    },
                    tree: "esp".into(),
                },
                counts: None,
            },
            Volume {
                partition: Some(part(2, BIOS_BOOT_TYPE, MIB)),
                content: Content::Raw {
                    file: "p2.raw".into(),
                },
                counts: None,
            },
            Volume {
                partition: Some(part(3, LINUX_FS_TYPE, 160 * MIB)),
                content: Content::Ext {
                    info: ext_info("0b8f4a63-1c1e-4c3a-9f0e-2d5c1b7e9a01", EXT4_FEATURES),
                    tree: "root".into(),
                },
                counts: None,
            },
        ],
    }
}

fn listing(root: &Path) -> Listing {
    tree::list(root).unwrap()
}

/// Access times are compared for entries nothing reads (special files); reading a file or
/// listing a directory may update its own.
fn assert_same(a: &Listing, b: &Listing) {
    let diff = tree::diff(a, b, false);
    assert!(diff.is_empty(), "trees differ:\n{}", diff.join("\n"));
    for (path, e) in a {
        if matches!(e.kind, 'p' | 'c' | 'b' | 's') {
            assert_eq!(e.atime, b[path].atime, "{path}: access time");
        }
    }
}

mod round_trip {
    use super::*;

    #[test]
    fn tree_to_image_to_tree_keeps_every_attribute() {
        if !root_or_skip() {
            return;
        }
        let work = tempfile::tempdir().unwrap();
        let w = work.path();
        fs::create_dir(w.join("root")).unwrap();
        fs::create_dir(w.join("esp")).unwrap();
        rich_tree(&w.join("root"));
        esp_tree(&w.join("esp"));
        let before = listing(&w.join("root"));
        let esp_before = listing(&w.join("esp"));

        let layout = gpt_layout(w);
        let written = layout::copy_in(&layout, w, &w.join("disk.raw"), Sizing::Same).unwrap();
        assert_eq!(written.table.partitions.len(), 3);

        // Another tool agrees on the table.
        let out = Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(w.join("disk.raw"))
            .output()
            .unwrap();
        assert!(out.status.success());

        let back = tempfile::tempdir().unwrap();
        let read = layout::copy_out(&w.join("disk.raw"), back.path()).unwrap();
        assert_eq!(read.table.scheme, layout.table.scheme, "disk GUID kept");
        assert_eq!(read.table.boot_code, vec![0xeb; 440], "MBR boot code kept");
        for (a, b) in layout.volumes.iter().zip(&read.volumes) {
            let (pa, pb) = (a.partition.as_ref().unwrap(), b.partition.as_ref().unwrap());
            assert_eq!(
                (pa.number, pa.ptype, pa.guid, &pa.name),
                (pb.number, pb.ptype, pb.guid, &pb.name)
            );
            assert_eq!(pb.start % MIB, 0, "aligned");
        }
        let Content::Ext { info, tree } = &read.volumes[2].content else {
            panic!("{:?}", read.volumes[2])
        };
        assert_eq!(
            info.uuid.to_string(),
            "0b8f4a63-1c1e-4c3a-9f0e-2d5c1b7e9a01"
        );
        assert_eq!(info.label, "root");
        assert_eq!(info.kind, "ext4");
        assert!(
            info.features.iter().any(|f| f == "metadata_csum"),
            "{:?}",
            info.features
        );
        assert_same(&before, &listing(&back.path().join(tree)));
        let sparse = &listing(&back.path().join(tree))["usr/bin/sparse"];
        assert!(sparse.sparse, "holes kept");

        let Content::Fat { info, tree } = &read.volumes[0].content else {
            panic!()
        };
        assert_eq!(
            (info.volume_id, info.label.as_str(), info.kind.as_str()),
            (0x1234_abcd, "ESP", "fat32")
        );
        let esp_after = listing(&back.path().join(tree));
        for (path, e) in esp_before.iter().filter(|(_, e)| e.kind == 'f') {
            let f = &esp_after[path];
            assert_eq!(
                (&f.content, f.size, f.mtime),
                (&e.content, e.size, e.mtime),
                "{path}"
            );
        }
        assert_eq!(
            esp_before.keys().collect::<Vec<_>>(),
            esp_after.keys().collect::<Vec<_>>()
        );

        let Content::Raw { file } = &read.volumes[1].content else {
            panic!()
        };
        assert_eq!(
            fs::read(back.path().join(file)).unwrap(),
            vec![0xab; MIB as usize]
        );
    }

    #[test]
    fn an_image_made_by_other_tools_reads_and_rewrites_to_a_new_layout() {
        if !root_or_skip() {
            return;
        }
        // ext2 and ext3 (block maps, no extents) on an MBR disk, laid out by hand, formatted by
        // mke2fs at odd offsets; then rewritten shrunk to fit.
        let work = tempfile::tempdir().unwrap();
        let w = work.path();
        fs::create_dir(w.join("src")).unwrap();
        rich_tree(&w.join("src"));
        // 128-byte inodes (mke2fs's choice for small ext2/3) cannot hold dates past 2038.
        set_times(&w.join("src/etc/empty"), 2_143_238_400, (1_500_000_000, 0));
        let before = listing(&w.join("src"));
        let disk = w.join("mbr.raw");
        File::create(&disk).unwrap().set_len(300 * MIB).unwrap();
        let table = Table {
            scheme: Scheme::Mbr {
                signature: 0xdead_beef,
            },
            partitions: vec![
                Partition {
                    number: 1,
                    start: 63 * 512,
                    size: 140 * MIB,
                    ptype: PartitionType::Mbr(0x83),
                    guid: None,
                    name: String::new(),
                    attributes: 0x80,
                },
                Partition {
                    number: 2,
                    start: 150 * MIB + 512 * 7,
                    size: 140 * MIB,
                    ptype: PartitionType::Mbr(0x83),
                    guid: None,
                    name: String::new(),
                    attributes: 0,
                },
            ],
            boot_code: vec![0; 440],
        };
        let f = File::options().write(true).open(&disk).unwrap();
        for (off, bytes) in partition::encode(&table, 300 * MIB).unwrap() {
            f.write_all_at(&bytes, off).unwrap();
        }
        for (p, kind) in table.partitions.iter().zip(["ext2", "ext3"]) {
            sh(Command::new("mke2fs")
                .args(["-q", "-F", "-t", kind, "-b", "1024", "-E"])
                .arg(format!("offset={}", p.start))
                .arg("-d")
                .arg(w.join("src"))
                .arg(&disk)
                .arg(format!("{}k", p.size / 1024)));
        }
        let out1 = w.join("out1");
        fs::create_dir(&out1).unwrap();
        let read = layout::copy_out(&disk, &out1).unwrap();
        assert_eq!(
            read.table.scheme,
            Scheme::Mbr {
                signature: 0xdead_beef
            }
        );
        assert_eq!(read.table.partitions[0].attributes, 0x80, "bootable flag");
        // mke2fs 1.47.0 itself keeps whole seconds and not the root's times: compare at that
        // precision with what it wrote; from there on the copy must be exact.
        let coarse = |l: &Listing| -> Listing {
            l.iter()
                .filter(|(p, _)| !p.is_empty())
                .map(|(p, e)| {
                    (
                        p.clone(),
                        tree::Entry {
                            mtime: tree::Time {
                                sec: e.mtime.sec,
                                nsec: 0,
                            },
                            ..e.clone()
                        },
                    )
                })
                .collect()
        };
        let mut firsts = Vec::new();
        for (v, kind) in read.volumes.iter().zip(["ext2", "ext3"]) {
            let Content::Ext { info, tree } = &v.content else {
                panic!()
            };
            assert_eq!(info.kind, kind);
            let first = listing(&out1.join(tree));
            assert_same(&coarse(&before), &coarse(&first));
            firsts.push(first);
        }

        let rewritten = w.join("rewritten.raw");
        let new = layout::copy_in(&read, &out1, &rewritten, Sizing::Fit { margin_mib: 8 }).unwrap();
        assert!(
            new.disk_size < 300 * MIB,
            "shrunk to what is used: {} MiB",
            new.disk_size / MIB
        );
        let out2 = w.join("out2");
        fs::create_dir(&out2).unwrap();
        let again = layout::copy_out(&rewritten, &out2).unwrap();
        for ((v, kind), first) in again.volumes.iter().zip(["ext2", "ext3"]).zip(&firsts) {
            let Content::Ext { info, tree } = &v.content else {
                panic!()
            };
            assert_eq!(info.kind, kind, "the kind is kept");
            assert_eq!(info.block_size, 1024, "the block size is kept");
            assert_same(first, &listing(&out2.join(tree)));
        }
        assert_ne!(
            read.table.partitions[0].start, again.table.partitions[0].start,
            "a new sector layout"
        );

        // Growing the disk gives the difference to the last file system.
        let grown = w.join("grown.raw");
        let g = layout::copy_in(&read, &out1, &grown, Sizing::Disk { disk_mib: 400 }).unwrap();
        assert_eq!(g.disk_size, 400 * MIB);
        let Content::Ext { info, .. } = &g.volumes[1].content else {
            panic!()
        };
        assert!(info.size() > 200 * MIB, "{}", info.size());
    }

    #[test]
    fn a_tree_too_large_for_the_target_is_refused_and_nothing_is_left() {
        if !root_or_skip() {
            return;
        }
        let work = tempfile::tempdir().unwrap();
        let w = work.path();
        fs::create_dir(w.join("root")).unwrap();
        fs::create_dir(w.join("esp")).unwrap();
        rich_tree(&w.join("root"));
        esp_tree(&w.join("esp"));
        let mut layout = gpt_layout(w);
        if let Some(p) = layout.volumes[2].partition.as_mut() {
            p.size = 2 * MIB;
        }
        let err = layout::copy_in(&layout, w, &w.join("disk.raw"), Sizing::Same).unwrap_err();
        assert!(matches!(err, ImageError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("MiB"), "{err}");
        let err = layout::copy_in(
            &gpt_layout(w),
            w,
            &w.join("disk.raw"),
            Sizing::Disk { disk_mib: 70 },
        )
        .unwrap_err();
        assert!(matches!(err, ImageError::TooLarge { .. }), "{err}");
        let left: Vec<_> = fs::read_dir(w)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let mut left: Vec<_> = left
            .iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["esp", "p2.raw", "root"],
            "no half-written image or temporary file"
        );
    }
}

mod edges {
    use super::*;

    #[test]
    fn many_small_files_get_the_inodes_they_need() {
        if !root_or_skip() {
            return;
        }
        let work = tempfile::tempdir().unwrap();
        let w = work.path();
        fs::create_dir_all(w.join("root/lost+found")).unwrap();
        for d in 0..20 {
            let dir = w.join(format!("root/d{d}"));
            fs::create_dir(&dir).unwrap();
            for f in 0..1000 {
                File::create(dir.join(f.to_string())).unwrap();
            }
        }
        let mut layout = gpt_layout(w);
        layout.volumes.truncate(1);
        layout.volumes[0] = Volume {
            partition: layout.volumes[0].partition.clone().map(|p| Partition {
                ptype: PartitionType::Gpt(LINUX_FS_TYPE),
                size: 64 * MIB,
                ..p
            }),
            content: Content::Ext {
                info: ext_info("0b8f4a63-1c1e-4c3a-9f0e-2d5c1b7e9a02", EXT4_FEATURES),
                tree: "root".into(),
            },
            counts: None,
        };
        let written = layout::copy_in(&layout, w, &w.join("disk.raw"), Sizing::Same).unwrap();
        let Content::Ext { info, .. } = &written.volumes[0].content else {
            panic!()
        };
        assert!(info.inodes >= 20_021, "{} inodes", info.inodes);
    }

    #[test]
    fn an_existing_output_is_refused_and_kept() {
        let work = tempfile::tempdir().unwrap();
        let out = work.path().join("keep.raw");
        fs::write(&out, "precious").unwrap();
        let err =
            layout::copy_in(&gpt_layout(work.path()), work.path(), &out, Sizing::Same).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(fs::read(&out).unwrap(), b"precious");
    }

    #[test]
    fn a_fat_on_the_whole_disk_is_read_as_one() {
        if !root_or_skip() {
            return;
        }
        let work = tempfile::tempdir().unwrap();
        let w = work.path();
        fs::create_dir(w.join("esp")).unwrap();
        esp_tree(&w.join("esp"));
        let disk = w.join("fat.raw");
        File::create(&disk).unwrap().set_len(40 * MIB).unwrap();
        let info = fat::Info {
            kind: "fat32".into(),
            volume_id: 7,
            label: "WHOLE".into(),
            cluster_size: 512,
            size: 40 * MIB,
            used_bytes: 0,
        };
        fat::write(&disk, 0, 40 * MIB, &info, &w.join("esp")).unwrap();
        let out = w.join("out");
        fs::create_dir(&out).unwrap();
        let read = layout::copy_out(&disk, &out).unwrap();
        assert_eq!(read.table.scheme, Scheme::None);
        let Content::Fat { info, tree } = &read.volumes[0].content else {
            panic!("{read:?}")
        };
        assert_eq!(info.label, "WHOLE");
        assert_eq!(
            fs::read(out.join(tree).join("EFI/debian/grub.cfg")).unwrap(),
            b"search.fs_uuid 1234 root\n"
        );
    }
}

mod hostile {
    use super::*;

    /// An ext4 on the whole disk (no partition table), from a small tree, patched by `patch`.
    fn ext4_image(w: &Path, tree: impl FnOnce(&Path), patch: impl FnOnce(&Path)) -> PathBuf {
        let src = w.join("src");
        fs::create_dir(&src).unwrap();
        tree(&src);
        let img = w.join("fs.raw");
        File::create(&img).unwrap().set_len(16 * MIB).unwrap();
        sh(Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-O", "^metadata_csum", "-d"])
            .arg(&src)
            .arg(&img));
        patch(&img);
        img
    }

    fn replace_bytes(img: &Path, from: &[u8], to: &[u8]) {
        let mut data = fs::read(img).unwrap();
        let at = data
            .windows(from.len())
            .position(|w| w == from)
            .expect("pattern in image");
        data[at..at + to.len()].copy_from_slice(to);
        fs::write(img, data).unwrap();
    }

    fn debugfs(img: &Path, cmd: &str) {
        sh(Command::new("debugfs").args(["-w", "-R", cmd]).arg(img));
    }

    fn copy_out_err(img: &Path, w: &Path) -> ImageError {
        let out = w.join("out");
        fs::create_dir(&out).unwrap();
        layout::copy_out(img, &out).unwrap_err()
    }

    fn nothing_outside(outside: &Path) {
        let left: Vec<_> = fs::read_dir(outside).unwrap().collect();
        assert!(
            left.is_empty(),
            "something was written outside the tree: {left:?}"
        );
    }

    #[test]
    fn a_name_with_a_slash_is_refused() {
        if !root_or_skip() {
            return;
        }
        let w = tempfile::tempdir().unwrap();
        let img = ext4_image(
            w.path(),
            |t| fs::write(t.join("evilXpasswd"), "x").unwrap(),
            |img| replace_bytes(img, b"evilXpasswd", b"evil/passwd"),
        );
        let err = copy_out_err(&img, w.path());
        assert!(
            matches!(&err, ImageError::UnsafeEntry { path, .. } if path.contains("evil/passwd")),
            "{err}"
        );
    }

    #[test]
    fn a_symlink_to_the_hosts_etc_is_kept_as_a_link_and_never_followed() {
        if !root_or_skip() {
            return;
        }
        let w = tempfile::tempdir().unwrap();
        let outside = w.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let target = outside.clone();
        // A symlink `aaaa` to a host directory, then a directory whose name is patched to the
        // same `aaaa`, holding a file: following the link would write into `outside`.
        let img = ext4_image(
            w.path(),
            |t| {
                symlink(&target, t.join("aaaa")).unwrap();
                fs::create_dir(t.join("aaab")).unwrap();
                fs::write(t.join("aaab/passwd"), "owned").unwrap();
            },
            |img| replace_bytes(img, b"aaab", b"aaaa"),
        );
        let err = copy_out_err(&img, w.path());
        assert!(
            matches!(&err, ImageError::UnsafeEntry { detail, .. } if detail.contains("twice")),
            "{err}"
        );
        nothing_outside(&outside);

        // Alone, such a link is copied as what it is.
        let w2 = tempfile::tempdir().unwrap();
        let img = ext4_image(
            w2.path(),
            |t| symlink("/etc", t.join("etc")).unwrap(),
            |_| {},
        );
        let out = w2.path().join("out");
        fs::create_dir(&out).unwrap();
        let layout = layout::copy_out(&img, &out).unwrap();
        let tree = out.join(layout.volumes[0].tree().unwrap());
        assert_eq!(fs::read_link(tree.join("etc")).unwrap(), Path::new("/etc"));
    }

    #[test]
    fn a_directory_loop_is_refused() {
        if !root_or_skip() {
            return;
        }
        let w = tempfile::tempdir().unwrap();
        let img = ext4_image(
            w.path(),
            |t| fs::create_dir_all(t.join("a/b")).unwrap(),
            |img| debugfs(img, "ln /a /a/b/loop"),
        );
        let err = copy_out_err(&img, w.path());
        assert!(err.to_string().contains("directory loop"), "{err}");
    }

    #[test]
    fn a_corrupted_superblock_is_refused_naming_the_field() {
        if !root_or_skip() {
            return;
        }
        for (offset, value, expect) in [
            (1024 + 24, 30u32, "block size"),
            (1024 + 40, 0, "inodes per group"),
            (1024 + 4, 0x7fff_ffff, "claims"),
        ] {
            let w = tempfile::tempdir().unwrap();
            let img = ext4_image(
                w.path(),
                |t| fs::write(t.join("f"), "x").unwrap(),
                |img| {
                    File::options()
                        .write(true)
                        .open(img)
                        .unwrap()
                        .write_all_at(&value.to_le_bytes(), offset)
                        .unwrap();
                },
            );
            let err = copy_out_err(&img, w.path());
            assert!(err.to_string().contains(expect), "offset {offset}: {err}");
        }
    }

    #[test]
    fn a_file_system_larger_than_its_image_is_refused() {
        if !root_or_skip() {
            return;
        }
        let w = tempfile::tempdir().unwrap();
        let img = ext4_image(
            w.path(),
            |t| fs::write(t.join("f"), "x").unwrap(),
            |img| {
                File::options()
                    .write(true)
                    .open(img)
                    .unwrap()
                    .set_len(8 * MIB)
                    .unwrap();
            },
        );
        let err = copy_out_err(&img, w.path());
        assert!(matches!(err, ImageError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("claims"), "{err}");
    }

    #[test]
    fn a_file_mapping_blocks_outside_the_file_system_is_refused() {
        if !root_or_skip() {
            return;
        }
        let w = tempfile::tempdir().unwrap();
        let img = ext4_image(
            w.path(),
            |t| fs::write(t.join("f"), vec![1u8; 20_000]).unwrap(),
            |img| {
                debugfs(img, "sif /f block[5] 0x7ffffff0");
            },
        );
        let err = copy_out_err(&img, w.path());
        assert!(
            err.to_string().contains("outside the file system")
                || err.to_string().contains("extent"),
            "{err}"
        );
    }

    fn gpt_disk(w: &Path, parts: &[(u64, u64)]) -> PathBuf {
        let disk = w.join("gpt.raw");
        File::create(&disk).unwrap().set_len(64 * MIB).unwrap();
        let table = Table {
            scheme: Scheme::Gpt {
                disk_guid: Uuid::new_v4(),
            },
            partitions: parts
                .iter()
                .enumerate()
                .map(|(i, &(start, size))| Partition {
                    number: i as u32 + 1,
                    start,
                    size,
                    ptype: PartitionType::Gpt(LINUX_FS_TYPE),
                    guid: None,
                    name: String::new(),
                    attributes: 0,
                })
                .collect(),
            boot_code: vec![],
        };
        let f = File::options().write(true).open(&disk).unwrap();
        for (off, bytes) in partition::encode(&table, 64 * MIB).unwrap() {
            f.write_all_at(&bytes, off).unwrap();
        }
        disk
    }

    #[test]
    fn overlapping_or_out_of_range_partitions_are_refused() {
        let w = tempfile::tempdir().unwrap();
        let disk = gpt_disk(w.path(), &[(MIB, 10 * MIB), (5 * MIB, 10 * MIB)]);
        let err = partition::read(&slipway_image::disk::Extent::open(&disk).unwrap()).unwrap_err();
        assert!(
            err.to_string().contains("partitions 1 and 2 overlap"),
            "{err}"
        );

        let w = tempfile::tempdir().unwrap();
        let disk = gpt_disk(w.path(), &[(MIB, 100 * MIB)]);
        let err = partition::read(&slipway_image::disk::Extent::open(&disk).unwrap()).unwrap_err();
        assert!(err.to_string().contains("outside the usable"), "{err}");
    }

    #[test]
    fn a_gpt_with_a_damaged_primary_header_is_read_from_its_backup_and_bad_crcs_are_refused() {
        let w = tempfile::tempdir().unwrap();
        let disk = gpt_disk(w.path(), &[(MIB, 10 * MIB)]);
        let f = File::options().write(true).open(&disk).unwrap();
        f.write_all_at(b"garbage!", 512 + 24).unwrap();
        let t = partition::read(&slipway_image::disk::Extent::open(&disk).unwrap()).unwrap();
        assert_eq!(t.partitions.len(), 1, "the backup header answered");
        // Both entry arrays damaged: nothing to trust.
        f.write_all_at(&[0xff; 16], 1024).unwrap();
        f.write_all_at(&[0xff; 16], 64 * MIB - 33 * 512).unwrap();
        let err = partition::read(&slipway_image::disk::Extent::open(&disk).unwrap()).unwrap_err();
        assert!(err.to_string().contains("CRC"), "{err}");
    }

    #[test]
    fn an_extended_partition_chain_that_loops_is_refused() {
        let w = tempfile::tempdir().unwrap();
        let disk = w.path().join("mbr.raw");
        let f = File::create(&disk).unwrap();
        f.set_len(16 * MIB).unwrap();
        let mut mbr = vec![0u8; 512];
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        // An extended partition at sector 2048 whose boot record points at itself.
        mbr[446 + 4] = 0x05;
        mbr[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
        mbr[446 + 12..446 + 16].copy_from_slice(&20000u32.to_le_bytes());
        f.write_all_at(&mbr, 0).unwrap();
        let mut ebr = vec![0u8; 512];
        ebr[510] = 0x55;
        ebr[511] = 0xaa;
        ebr[446 + 4] = 0x83;
        ebr[446 + 8..446 + 12].copy_from_slice(&63u32.to_le_bytes());
        ebr[446 + 12..446 + 16].copy_from_slice(&100u32.to_le_bytes());
        ebr[462 + 4] = 0x05;
        ebr[462 + 8..462 + 12].copy_from_slice(&0u32.to_le_bytes());
        f.write_all_at(&ebr, 2048 * 512).unwrap();
        let err = partition::read(&slipway_image::disk::Extent::open(&disk).unwrap()).unwrap_err();
        assert!(err.to_string().contains("loops"), "{err}");
    }

    fn inode_of(img: &Path, path: &str) -> u32 {
        let out = Command::new("debugfs")
            .args(["-R", &format!("stat {path}")])
            .arg(img)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.split("Inode: ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .expect("an inode number")
    }

    #[test]
    fn an_attribute_value_naming_its_own_inode_is_refused_not_followed() {
        if !root_or_skip() {
            return;
        }
        let w = tempfile::tempdir().unwrap();
        let img = ext4_image(
            w.path(),
            |t| {
                fs::write(t.join("f"), "x").unwrap();
                rustix::fs::setxattr(
                    t.join("f"),
                    "user.selfref",
                    b"value",
                    rustix::fs::XattrFlags::empty(),
                )
                .unwrap();
            },
            |_| {},
        );
        let ino = inode_of(&img, "/f");
        let mut data = fs::read(&img).unwrap();
        let at = data
            .windows(7)
            .position(|w| w == b"selfref")
            .expect("the attribute's name")
            - 16;
        data[at + 4..at + 8].copy_from_slice(&ino.to_le_bytes());
        fs::write(&img, data).unwrap();
        let err = copy_out_err(&img, w.path());
        assert!(
            err.to_string().contains("not an attribute value inode"),
            "{err}"
        );
    }

    #[test]
    fn a_block_map_that_points_at_itself_is_refused_quickly() {
        if !root_or_skip() {
            return;
        }
        let w = tempfile::tempdir().unwrap();
        let src = w.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("f"), vec![7u8; 1024]).unwrap();
        let img = w.path().join("ext2.raw");
        File::create(&img).unwrap().set_len(16 * MIB).unwrap();
        sh(Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext2", "-b", "1024", "-d"])
            .arg(&src)
            .arg(&img));
        // The file's one data block becomes a triple-indirect block full of its own number.
        let out = Command::new("debugfs")
            .args(["-R", "blocks /f"])
            .arg(&img)
            .output()
            .unwrap();
        let block: u32 = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let looped: Vec<u8> = (0..256).flat_map(|_| block.to_le_bytes()).collect();
        File::options()
            .write(true)
            .open(&img)
            .unwrap()
            .write_all_at(&looped, u64::from(block) * 1024)
            .unwrap();
        debugfs(&img, &format!("sif /f block[TIND] {block}"));
        debugfs(&img, "sif /f size 0x10000000000");
        let started = std::time::Instant::now();
        let err = copy_out_err(&img, w.path());
        assert!(
            err.to_string()
                .contains("more blocks mapped than the file system has"),
            "{err}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_file_claiming_the_largest_size_is_an_error_not_a_panic() {
        if !root_or_skip() {
            return;
        }
        let w = tempfile::tempdir().unwrap();
        let img = ext4_image(
            w.path(),
            |t| fs::write(t.join("f"), "x").unwrap(),
            |img| debugfs(img, "sif /f size 0xffffffffffffffff"),
        );
        let err = copy_out_err(&img, w.path());
        assert!(!err.to_string().is_empty());
    }

    #[test]
    fn random_damage_to_an_image_never_panics() {
        if !root_or_skip() {
            return;
        }
        // Deterministic pseudo-random byte flips in the metadata area of a real file system.
        let w = tempfile::tempdir().unwrap();
        let img = ext4_image(w.path(), rich_tree, |_| {});
        let pristine = fs::read(&img).unwrap();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for round in 0..60 {
            let mut data = pristine.clone();
            for _ in 0..8 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let at = 1024 + (seed as usize % (2 * MIB as usize));
                data[at] ^= (seed >> 32) as u8 | 1;
            }
            let damaged = w.path().join(format!("damaged-{round}.raw"));
            fs::write(&damaged, &data).unwrap();
            let out = w.path().join(format!("out-{round}"));
            fs::create_dir(&out).unwrap();
            // Either outcome is fine; a panic or a hang is not.
            let _ = layout::copy_out(&damaged, &out);
            fs::remove_dir_all(&out).unwrap();
            fs::remove_file(&damaged).unwrap();
        }
    }
}
