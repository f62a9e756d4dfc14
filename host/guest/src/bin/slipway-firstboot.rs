//! `slipway-firstboot`: Slipway's first-boot agent for guests without cloud-init.
//!
//! Started once per boot by the init system (the hook staging installed). Reads the NoCloud seed
//! location from the SMBIOS serial or the kernel command line, fetches the seed, and on a new
//! instance sets the host name, /etc/hosts, machine-id and SSH host keys, keeps the user-data,
//! and reports ready to the seed server.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use slipway_guest::agent::{self, Options, Outcome, log};

const USAGE: &str = "\
usage: slipway-firstboot [options]

Applies the deployment seed (cloud-init NoCloud format) once per instance.

options:
  --root DIR            prefix of every guest path read or written (default /)
  --dmi-serial STRING   use STRING as the SMBIOS serial instead of /sys/class/dmi/id/product_serial
  --cmdline STRING      use STRING as the kernel command line instead of /proc/cmdline
  --seed URL            use this seed URL instead of looking for one
  --retry-for DURATION  keep retrying the seed this long, e.g. 120s, 2m, 500ms (default 120s)
  --help, --version

exit status: 0 applied or nothing to do; 2 bad usage; 3 no seed location; 4 the seed could not
be fetched; 5 the seed was refused; 6 applying it failed.";

fn main() -> ExitCode {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(Some(opts)) => opts,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            log(format_args!("{e}\n{USAGE}"));
            return ExitCode::from(2);
        }
    };
    match agent::run(&opts) {
        Ok(Outcome::Applied {
            instance_id,
            applied,
            reported,
        }) => {
            log(format_args!(
                "done: instance {instance_id}, applied [{}]{}",
                applied.join(", "),
                if reported {
                    ""
                } else {
                    " (not reported; the next boot tries again)"
                }
            ));
            ExitCode::SUCCESS
        }
        Ok(Outcome::AlreadyApplied { .. } | Outcome::Kept { .. }) => ExitCode::SUCCESS,
        Err(e) => {
            log(format_args!("error: {e}"));
            ExitCode::from(e.exit_code())
        }
    }
}

/// `Ok(None)` when the arguments asked only for help or the version (already printed).
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut opts = Options::default();
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |what: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs {what}"))
        };
        match name.as_str() {
            "--root" => opts.root = PathBuf::from(value("a directory")?),
            "--dmi-serial" => opts.dmi_serial = Some(value("a string")?),
            "--cmdline" => opts.cmdline = Some(value("a string")?),
            "--seed" => opts.seed = Some(value("a URL")?),
            "--retry-for" => opts.retry_for = parse_duration(&value("a duration")?)?,
            "--help" | "-h" => {
                println!("{USAGE}");
                return Ok(None);
            }
            "--version" => {
                println!("slipway-firstboot {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(opts))
}

/// `500ms`, `2s`, `2m`, or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration (e.g. 500ms, 30s, 2m)");
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = digits.parse().map_err(|_| bad())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs).ok_or_else(bad),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Option<Options>, String> {
        parse_args(list.iter().map(|s| s.to_string()))
    }

    #[test]
    fn arguments() {
        let o = args(&[
            "--root",
            "/t",
            "--dmi-serial=ds=nocloud;s=http://h/",
            "--retry-for",
            "2s",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(o.root, PathBuf::from("/t"));
        assert_eq!(o.dmi_serial.as_deref(), Some("ds=nocloud;s=http://h/"));
        assert_eq!(o.retry_for, Duration::from_secs(2));
        assert!(args(&["--root"]).unwrap_err().contains("needs a directory"));
        assert!(args(&["--bogus"]).unwrap_err().contains("unknown argument"));
        assert!(
            args(&["--retry-for", "2h"])
                .unwrap_err()
                .contains("not a duration")
        );
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("3m"), Ok(Duration::from_secs(180)));
        assert!(parse_duration("").is_err());
    }
}
