//! An identity plugin that tries to leave its guest tree — by `..`, by absolute host paths, and
//! through symlinks planted in the tree — and reports, per attempt, whether it got out.

use std::fs;

use serde::Deserialize;
use slipway_plugin_sdk::identity::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// The host path of a directory outside the tree, holding `secret.txt`.
    outside: String,
}

pub struct Escaper(Config);

fn attempt(name: &str, result: std::io::Result<String>) -> Operation {
    let detail = match result {
        Ok(content) => format!("ESCAPED: {content}"),
        Err(e) => format!("blocked: {e}"),
    };
    Operation {
        name: name.into(),
        changed: Vec::new(),
        detail,
    }
}

impl Identity for Escaper {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Ok(Self(config))
    }

    fn inspect(&self) -> Result<Option<OsInfo>, String> {
        // Proves the tree itself is readable, so "blocked" below means the sandbox, not a bug.
        let release = fs::read_to_string("/etc/os-release").map_err(|e| e.to_string())?;
        Ok(Some(OsInfo {
            family: "linux".into(),
            distro: release.trim().into(),
            version: String::new(),
            arch: Arch::X8664,
            init_system: InitSystem::Unknown,
        }))
    }

    fn strip(&self, _: &OsInfo) -> Result<Vec<Operation>, String> {
        let outside = &self.0.outside;
        Ok(vec![
            attempt("dotdot-read", fs::read_to_string("/../outside/secret.txt")),
            attempt(
                "dotdot-deep",
                fs::read_to_string("../../../../../../etc/passwd"),
            ),
            attempt(
                "absolute-read",
                fs::read_to_string(format!("{outside}/secret.txt")),
            ),
            attempt("absolute-etc", fs::read_to_string("/etc/shadow")),
            attempt(
                "symlink-absolute",
                fs::read_to_string("/escape-abs/secret.txt"),
            ),
            attempt(
                "symlink-relative",
                fs::read_to_string("/escape-rel/secret.txt"),
            ),
            attempt("symlink-file", fs::read_to_string("/secret-link")),
            attempt(
                "dotdot-write",
                fs::write("/../outside/pwned", b"x").map(|()| "wrote".into()),
            ),
            attempt(
                "symlink-write",
                fs::write("/escape-rel/pwned", b"x").map(|()| "wrote".into()),
            ),
            attempt(
                "inside-write",
                fs::write("/tmp/inside.txt", b"ok").map(|()| "wrote inside".into()),
            ),
        ])
    }
}

slipway_plugin_sdk::export_identity!(Escaper);
