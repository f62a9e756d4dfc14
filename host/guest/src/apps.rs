//! Installing the apps the staged VM lacked, at first boot, from the seed's `slipway-apps`:
//!
//! ```json
//! {"apps": [{"name": "hello", "version": "1.0",
//!            "method": {"kind": "bundle", "url": ".../artifacts/<sha256>", "sha256": "<sha256>",
//!                       "install_script": "install.sh"}},
//!           {"name": "nginx", "version": "1.22",
//!            "method": {"kind": "packages", "manager": "apt", "packages": ["nginx"]}}]}
//! ```
//!
//! A bundle is fetched from the seed (`artifacts/<sha256>`: the seed server, whatever the
//! document's `url` says), its digest checked, its listing checked for absolute paths and `..`,
//! unpacked with the guest's own `tar` under `/var/lib/slipway/apps/<name>/`, and its script run
//! there with `sh`, bounded in time, with `SLIPWAY_ROOT` naming the guest's root. Packages go to
//! the distribution's package manager, each name a separate argument, never through a shell. An
//! app that fails does not stop the others; each outcome is reported. An app installed on an
//! earlier boot of the same instance is not installed again.
//!
//! Bundles are held in memory while they are checked (at most [`MAX_BUNDLE`]): guests are small,
//! and so are the bundles of tests; a larger bundle is refused, said so in the report.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The largest `slipway-apps` document accepted.
pub const MAX_DOCUMENT: usize = 256 * 1024;
/// The largest bundle accepted.
pub const MAX_BUNDLE: usize = 64 << 20;
const MAX_APPS: usize = 256;
/// The end of an install's output kept for the report.
const TAIL: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct App {
    pub name: String,
    #[serde(default)]
    pub version: String,
    pub method: Method,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Method {
    Bundle {
        #[serde(default)]
        url: String,
        sha256: String,
        install_script: String,
    },
    Packages {
        manager: String,
        packages: Vec<String>,
    },
}

#[derive(Deserialize)]
struct Document {
    apps: Vec<App>,
}

/// One app's outcome, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub name: String,
    pub version: String,
    pub ok: bool,
    pub detail: String,
}

fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

fn package_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-:=~".contains(&b))
}

fn relative_ok(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 255
        && !p.starts_with('/')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
        && !p.bytes().any(|b| b.is_ascii_control())
}

/// Parses and checks the document: every name, digest, script path and package name, before
/// anything is installed.
pub fn parse(bytes: &[u8]) -> Result<Vec<App>, String> {
    if bytes.len() > MAX_DOCUMENT {
        return Err(format!("slipway-apps is over {MAX_DOCUMENT} bytes"));
    }
    let doc: Document =
        serde_json::from_slice(bytes).map_err(|e| format!("slipway-apps is not valid: {e}"))?;
    if doc.apps.len() > MAX_APPS {
        return Err(format!("slipway-apps names over {MAX_APPS} apps"));
    }
    for app in &doc.apps {
        if !name_ok(&app.name) {
            return Err(format!("{:?} is not an app name", clip(&app.name)));
        }
        match &app.method {
            Method::Bundle {
                sha256,
                install_script,
                ..
            } => {
                if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!("{}: {:?} is not a sha256", app.name, clip(sha256)));
                }
                if !relative_ok(install_script) {
                    return Err(format!(
                        "{}: the install script {:?} is not a relative path inside the bundle",
                        app.name,
                        clip(install_script)
                    ));
                }
            }
            Method::Packages { manager, packages } => {
                if !["apt", "dnf", "apk"].contains(&manager.as_str()) {
                    return Err(format!(
                        "{}: {:?} is not a package manager",
                        app.name,
                        clip(manager)
                    ));
                }
                if packages.is_empty() || packages.len() > 256 {
                    return Err(format!("{}: 1 to 256 packages", app.name));
                }
                if let Some(p) = packages.iter().find(|p| !package_ok(p)) {
                    return Err(format!("{}: {:?} is not a package name", app.name, clip(p)));
                }
            }
        }
    }
    Ok(doc.apps)
}

fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

/// The command lines that install packages: an index refresh where the manager needs one, then
/// the install. Pure, so that it can be tested where no package manager may run.
pub fn package_commands(manager: &str, packages: &[String]) -> Vec<Vec<String>> {
    let with = |head: &[&str]| -> Vec<String> {
        head.iter()
            .map(|s| s.to_string())
            .chain(packages.iter().cloned())
            .collect()
    };
    match manager {
        "apt" => vec![
            vec!["apt-get".into(), "update".into(), "-q".into()],
            with(&["apt-get", "install", "-y", "-q", "--no-install-recommends"]),
        ],
        "dnf" => vec![with(&["dnf", "install", "-y", "-q"])],
        "apk" => vec![with(&["apk", "add", "--no-progress"])],
        _ => Vec::new(),
    }
}

/// Runs `command`, its output to `log`, killed after `limit`. The tail of its output, and
/// whether it succeeded.
fn run(mut command: Command, log: &Path, limit: Duration) -> (bool, String) {
    let file = match std::fs::File::create(log) {
        Ok(f) => f,
        Err(e) => return (false, format!("cannot write {}: {e}", log.display())),
    };
    let err = match file.try_clone() {
        Ok(f) => f,
        Err(e) => return (false, e.to_string()),
    };
    command.stdin(Stdio::null()).stdout(file).stderr(err);
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => return (false, format!("cannot start it: {e}")),
    };
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let text = std::fs::read(log).unwrap_or_default();
    let tail = String::from_utf8_lossy(&text[text.len().saturating_sub(TAIL)..]).into_owned();
    match status {
        Some(s) if s.success() => (true, tail),
        Some(s) => (false, format!("{s}; output:\n{tail}")),
        None => (
            false,
            format!(
                "did not finish within {} s; output:\n{tail}",
                limit.as_secs()
            ),
        ),
    }
}

/// Installs one bundle, fetched with `fetch` (a seed-relative name → the body).
fn bundle(
    root: &Path,
    dir: &Path,
    sha256: &str,
    script: &str,
    fetch: &dyn Fn(&str) -> Result<Vec<u8>, String>,
    limit: Duration,
) -> (bool, String) {
    let bytes = match fetch(&format!("artifacts/{sha256}")) {
        Ok(b) => b,
        Err(e) => return (false, format!("fetching the bundle: {e}")),
    };
    let actual = hex::encode(Sha256::digest(&bytes));
    if !actual.eq_ignore_ascii_case(sha256) {
        return (
            false,
            format!("the bundle's sha256 is {actual}, not {sha256}: not installed"),
        );
    }
    if let Err(e) = std::fs::create_dir_all(dir) {
        return (false, format!("creating {}: {e}", dir.display()));
    }
    let archive = dir.join("bundle.tar");
    if let Err(e) = std::fs::write(&archive, &bytes) {
        return (false, format!("writing the bundle: {e}"));
    }
    // Gzip is told by its magic: busybox tar does not always guess it.
    let z = bytes.starts_with(&[0x1f, 0x8b]);
    let flags = |op: &str| {
        if z {
            format!("-{op}zf")
        } else {
            format!("-{op}f")
        }
    };
    let listing = Command::new("tar").arg(flags("t")).arg(&archive).output();
    match listing {
        Ok(out) if out.status.success() => {
            let names = String::from_utf8_lossy(&out.stdout);
            if let Some(bad) = names
                .lines()
                .find(|n| n.starts_with('/') || n.split('/').any(|c| c == ".."))
            {
                return (
                    false,
                    format!(
                        "the bundle holds {:?}, outside its directory: refused",
                        clip(bad)
                    ),
                );
            }
        }
        Ok(out) => {
            return (
                false,
                format!(
                    "tar cannot list the bundle: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            );
        }
        Err(e) => return (false, format!("cannot run tar: {e}")),
    }
    let mut extract = Command::new("tar");
    extract.arg(flags("x")).arg(&archive).arg("-C").arg(dir);
    let (ok, detail) = run(extract, &dir.join("extract.log"), limit);
    if !ok {
        return (false, format!("unpacking: {detail}"));
    }
    if !dir.join(script).is_file() {
        return (false, format!("the bundle has no {script}"));
    }
    let mut sh = Command::new("sh");
    sh.arg(script).current_dir(dir).env("SLIPWAY_ROOT", root);
    run(sh, &dir.join("install.log"), limit)
}

/// Installs every app, and says how each went.
pub fn install(
    root: &Path,
    apps: &[App],
    instance_id: &str,
    fetch: &dyn Fn(&str) -> Result<Vec<u8>, String>,
    limit: Duration,
) -> Vec<Outcome> {
    let base: PathBuf = root.join("var/lib/slipway/apps");
    apps.iter()
        .map(|app| {
            let dir = base.join(&app.name);
            let done = dir.join("done");
            let outcome = |ok: bool, detail: String| Outcome {
                name: app.name.clone(),
                version: app.version.clone(),
                ok,
                detail,
            };
            if std::fs::read_to_string(&done).is_ok_and(|d| d.trim() == instance_id) {
                return outcome(true, "installed on an earlier boot".into());
            }
            let (ok, detail) = match &app.method {
                Method::Bundle {
                    sha256,
                    install_script,
                    ..
                } => bundle(root, &dir, sha256, install_script, fetch, limit),
                Method::Packages { .. } if root != Path::new("/") => (
                    false,
                    "packages are installed only in the guest itself".into(),
                ),
                Method::Packages { manager, packages } => {
                    let _ = std::fs::create_dir_all(&dir);
                    let mut result = (true, String::new());
                    for argv in package_commands(manager, packages) {
                        let mut c = Command::new(&argv[0]);
                        c.args(&argv[1..]).env("DEBIAN_FRONTEND", "noninteractive");
                        result = run(c, &dir.join("install.log"), limit);
                        if !result.0 {
                            break;
                        }
                    }
                    result
                }
            };
            if ok {
                let _ = std::fs::write(&done, format!("{instance_id}\n"));
            }
            crate::agent::log(format_args!(
                "app {} {}: {}",
                app.name,
                app.version,
                if ok { "installed" } else { "failed" }
            ));
            outcome(ok, detail)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(method: &str) -> Vec<u8> {
        format!(r#"{{"apps": [{{"name": "hello", "version": "1", "method": {method}}}]}}"#)
            .into_bytes()
    }

    #[test]
    fn documents_are_checked_before_anything_runs() {
        let sha = "ab".repeat(32);
        assert!(
            parse(&doc(&format!(
                r#"{{"kind": "bundle", "sha256": "{sha}", "install_script": "bin/install.sh"}}"#
            )))
            .is_ok()
        );
        for bad in [
            format!(r#"{{"kind": "bundle", "sha256": "{sha}", "install_script": "../x.sh"}}"#),
            format!(r#"{{"kind": "bundle", "sha256": "{sha}", "install_script": "/etc/x"}}"#),
            r#"{"kind": "bundle", "sha256": "xyz", "install_script": "i.sh"}"#.into(),
            r#"{"kind": "packages", "manager": "apt", "packages": ["nginx; rm -rf /"]}"#.into(),
            r#"{"kind": "packages", "manager": "pip", "packages": ["x"]}"#.into(),
            r#"{"kind": "packages", "manager": "apt", "packages": []}"#.into(),
            r#"{"kind": "shell", "run": "x"}"#.into(),
        ] {
            assert!(parse(&doc(&bad)).is_err(), "{bad}");
        }
        assert!(parse(&vec![b' '; MAX_DOCUMENT + 1]).is_err());
        assert!(parse(b"{\"apps\": [{\"name\": \"../x\", \"method\": {\"kind\": \"packages\", \"manager\": \"apt\", \"packages\": [\"a\"]}}]}").is_err());
    }

    #[test]
    fn package_managers_get_separate_arguments() {
        let p = vec!["nginx".to_owned(), "redis-server".to_owned()];
        assert_eq!(
            package_commands("apt", &p)[1],
            [
                "apt-get",
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "nginx",
                "redis-server"
            ]
        );
        assert_eq!(
            package_commands("apk", &p)[0],
            ["apk", "add", "--no-progress", "nginx", "redis-server"]
        );
    }

    fn tar_of(dir: &Path, files: &[(&str, &str)]) -> Vec<u8> {
        let src = dir.join("src");
        for (name, text) in files {
            let p = src.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let out = dir.join("b.tar");
        let mut c = Command::new("tar");
        c.arg("-cf").arg(&out).arg("-C").arg(&src);
        for (name, _) in files {
            c.arg(name);
        }
        assert!(c.status().unwrap().success());
        std::fs::read(out).unwrap()
    }

    #[test]
    fn a_bundle_is_checked_unpacked_and_run_once_per_instance() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let tar = tar_of(
            dir.path(),
            &[(
                "install.sh",
                "mkdir -p \"$SLIPWAY_ROOT/opt\"; echo hi > \"$SLIPWAY_ROOT/opt/hello\"; echo done-installing\n",
            )],
        );
        let sha = hex::encode(Sha256::digest(&tar));
        let app = App {
            name: "hello".into(),
            version: "1".into(),
            method: Method::Bundle {
                url: String::new(),
                sha256: sha.clone(),
                install_script: "install.sh".into(),
            },
        };
        let fetched = std::cell::Cell::new(0);
        let fetch = |name: &str| {
            fetched.set(fetched.get() + 1);
            assert_eq!(name, format!("artifacts/{sha}"));
            Ok(tar.clone())
        };
        let out = install(
            &root,
            std::slice::from_ref(&app),
            "i-1",
            &fetch,
            Duration::from_secs(30),
        );
        assert!(out[0].ok, "{out:?}");
        assert!(out[0].detail.contains("done-installing"));
        assert_eq!(
            std::fs::read_to_string(root.join("opt/hello")).unwrap(),
            "hi\n"
        );
        // Again for the same instance: nothing runs.
        let again = install(
            &root,
            std::slice::from_ref(&app),
            "i-1",
            &fetch,
            Duration::from_secs(30),
        );
        assert!(again[0].ok);
        assert_eq!(fetched.get(), 1);

        // A corrupted bundle never runs.
        let mut bad = tar.clone();
        bad[600] ^= 1;
        let fetch_bad = |_: &str| Ok(bad.clone());
        std::fs::remove_file(root.join("opt/hello")).unwrap();
        let out = install(
            &root,
            std::slice::from_ref(&app),
            "i-2",
            &fetch_bad,
            Duration::from_secs(30),
        );
        assert!(!out[0].ok);
        assert!(out[0].detail.contains("not installed"), "{out:?}");
        assert!(!root.join("opt/hello").exists());
    }

    #[test]
    fn a_bundle_that_reaches_outside_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("x")).unwrap();
        // A member named with `..`, made with tar's own --transform.
        let src = dir.path().join("s");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("evil"), "x").unwrap();
        std::fs::write(src.join("install.sh"), "true").unwrap();
        let out = dir.path().join("e.tar");
        assert!(
            Command::new("tar")
                .arg("-cf")
                .arg(&out)
                .arg("-C")
                .arg(&src)
                .args(["--transform", "s,^evil,../evil,", "evil", "install.sh"])
                .status()
                .unwrap()
                .success()
        );
        let tar = std::fs::read(&out).unwrap();
        let app = App {
            name: "evil".into(),
            version: "1".into(),
            method: Method::Bundle {
                url: String::new(),
                sha256: hex::encode(Sha256::digest(&tar)),
                install_script: "install.sh".into(),
            },
        };
        let r = install(
            &root,
            &[app],
            "i",
            &|_| Ok(tar.clone()),
            Duration::from_secs(30),
        );
        assert!(!r[0].ok);
        assert!(r[0].detail.contains("outside its directory"), "{r:?}");
        assert!(!root.join("var/lib/slipway/evil").exists());
    }
}
