//! Image transfers to a real agent process over loopback, through a proxy that can cut the
//! connection or flip a byte: only allocated data is sent, a cut transfer resumes where the agent
//! got to, a corrupted one is caught by its digest and sent again, and a host without room says
//! so and keeps nothing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use slipway_server::transfer::{TransferError, send_image};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the proxy does to the first connection that carries a body.
#[derive(Clone, Copy)]
enum Fault {
    None,
    /// Closes both sides after this many bytes from the sender.
    CutAfter(usize),
    /// Flips the byte at this position of the sender's stream.
    Flip(usize),
}

/// A TCP proxy to `target` that applies `fault` to the first connection longer than 64 KiB.
async fn proxy(target: std::net::SocketAddr, fault: Fault) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let used = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let used = used.clone();
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                let up = async {
                    let mut buf = vec![0u8; 64 << 10];
                    let mut seen = 0usize;
                    let mut armed = false;
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if !armed && seen + n > 64 << 10 && used.fetch_add(1, Ordering::SeqCst) == 0
                        {
                            armed = true;
                        }
                        match fault {
                            Fault::CutAfter(at) if armed && seen + n > at => {
                                let keep = at.saturating_sub(seen);
                                let _ = sw.write_all(&buf[..keep]).await;
                                return;
                            }
                            Fault::Flip(at) if armed && seen <= at && at < seen + n => {
                                buf[at - seen] ^= 0x5a;
                            }
                            _ => {}
                        }
                        seen += n;
                        if sw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                let down = tokio::io::copy(&mut sr, &mut cw);
                tokio::select! {
                    () = up => {}
                    _ = down => {}
                }
            });
        }
    });
    format!("http://{addr}")
}

/// A sparse file: 64 MiB, with data in three places.
fn sparse_image(dir: &Path) -> (PathBuf, String, u64) {
    let path = dir.join("image.raw");
    let mut f = std::fs::File::create(&path).unwrap();
    f.set_len(64 << 20).unwrap();
    let mut allocated = 0;
    for (i, at) in [0u64, 20 << 20, 60 << 20].into_iter().enumerate() {
        let data: Vec<u8> = (0..(3 << 20))
            .map(|j: u32| (j.wrapping_mul(2654435761).wrapping_add(i as u32) >> 13) as u8)
            .collect();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&data, at).unwrap();
        allocated += data.len() as u64;
    }
    f.flush().unwrap();
    let digest = hex::encode(Sha256::digest(std::fs::read(&path).unwrap()));
    (path, digest, allocated)
}

fn blocks(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_send_only_data_resume_after_a_cut_and_catch_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (image, digest, allocated) = sparse_image(dir.path());
    let node = super::StandaloneAgent::start(&dir.path().join("node"), &[]);
    let http = reqwest::Client::new();

    // Whole, then again: the second time nothing travels.
    let sent = send_image(&http, &node.url, &node.secret, &image, &digest, |_, _| {})
        .await
        .unwrap();
    assert_eq!(sent.bytes_sent, allocated, "only the data extents");
    assert!(!sent.already_cached);
    let cached = node.data.join("images").join(&digest);
    assert_eq!(
        hex::encode(Sha256::digest(std::fs::read(&cached).unwrap())),
        digest
    );
    assert!(blocks(&cached) < 16 << 20, "the holes stayed holes");
    let again = send_image(&http, &node.url, &node.secret, &image, &digest, |_, _| {})
        .await
        .unwrap();
    assert!(again.already_cached);
    assert_eq!(again.bytes_sent, 0);
    std::fs::remove_file(&cached).unwrap();

    // Cut after 5 MiB: the next attempt starts where the agent got to.
    let url = proxy(node.addr, Fault::CutAfter(5 << 20)).await;
    let sent = send_image(&http, &url, &node.secret, &image, &digest, |_, _| {})
        .await
        .unwrap();
    assert!(sent.attempts >= 2, "{sent:?}");
    let from = sent.resumed_from.expect("it resumed");
    assert!(from > 0 && from < 64 << 20, "{sent:?}");
    // Counted as read and queued: what was in flight at the cut counts too. A restart from the
    // beginning would have sent everything twice.
    assert!(sent.bytes_sent < 2 * allocated, "{sent:?}");
    assert_eq!(
        hex::encode(Sha256::digest(std::fs::read(&cached).unwrap())),
        digest
    );
    std::fs::remove_file(&cached).unwrap();

    // A flipped byte: the agent's digest check refuses it, and it is sent again whole.
    let url = proxy(node.addr, Fault::Flip(2 << 20)).await;
    let sent = send_image(&http, &url, &node.secret, &image, &digest, |_, _| {})
        .await
        .unwrap();
    assert_eq!(sent.attempts, 2, "{sent:?}");
    assert_eq!(
        hex::encode(Sha256::digest(std::fs::read(&cached).unwrap())),
        digest
    );
    let _ = Fault::None;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_without_room_refuses_the_image_and_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (image, digest, _) = sparse_image(dir.path());
    // A cache of 32 MiB for a 64 MiB image.
    let node = super::StandaloneAgent::start(&dir.path().join("node"), &["--cache-max-mib", "32"]);
    let http = reqwest::Client::new();
    let err = send_image(&http, &node.url, &node.secret, &image, &digest, |_, _| {})
        .await
        .unwrap_err();
    assert!(matches!(err, TransferError::DiskFull(_)), "{err}");
    assert!(err.to_string().contains("disk is full"), "{err}");
    let partial = node.data.join("images/partial");
    assert_eq!(std::fs::read_dir(&partial).unwrap().count(), 0);

    // A real full disk, mid-transfer: a 6 MiB tmpfs for 9 MiB of data (needs root to mount).
    if !super::root_or_skip() {
        return;
    }
    let small = dir.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(mounted.success());
    let guard = super::Unmount(small.clone());
    let node = super::StandaloneAgent::start(&small.join("node"), &["--cache-max-mib", "1024"]);
    let err = send_image(&http, &node.url, &node.secret, &image, &digest, |_, _| {})
        .await
        .unwrap_err();
    assert!(matches!(err, TransferError::DiskFull(_)), "{err}");
    assert_eq!(
        std::fs::read_dir(small.join("node/images/partial"))
            .unwrap()
            .count(),
        0,
        "the partial image is gone"
    );
    drop(node);
    drop(guard);
    tokio::time::sleep(Duration::from_millis(10)).await;
}
