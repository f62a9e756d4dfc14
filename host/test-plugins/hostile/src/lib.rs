//! A placement plugin that misbehaves in the way its configuration's `mode` says, so that the
//! runtime's tests can check each misbehaviour is contained and named.

use serde::Deserialize;
use slipway_plugin_sdk::placement::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `ok`, `loop`, `alloc`, `panic`, `panic-on-odd-vcpus`, `miscount`, `nan`, `stranger`, `twice`, `undeclared`,
    /// `fail`, `snoop`, `chatty`, `log-flood`.
    #[serde(default)]
    mode: String,
}

pub struct Hostile(String);

impl Placement for Hostile {
    type Config = Config;
    const FILTERS: bool = true;
    const SCORES: bool = true;

    fn reasons() -> Vec<Reason> {
        vec![reason(1, "hostile", DetailKind::None)]
    }

    fn new(config: Config) -> Result<Self, String> {
        Ok(Self(config.mode))
    }

    fn filter(
        &self,
        request: &PlacementRequest,
        _: &Fleet,
        candidates: &[u32],
    ) -> Result<Vec<Rejection>, String> {
        let reject = |host, reason| Rejection {
            host,
            reason,
            detail: 0,
        };
        match self.0.as_str() {
            "loop" => {
                let mut n = 0u64;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "alloc" => {
                let block = std::hint::black_box(vec![1u8; 1 << 30]);
                Ok(vec![reject(block[block.len() - 1].into(), 1)])
            }
            "panic" => panic!("hostile plugin panics on purpose"),
            // Traps on some requests only: the decision after a trap must work.
            "panic-on-odd-vcpus" if request.vcpus % 2 == 1 => {
                panic!("hostile plugin panics on an odd vCPU count")
            }
            "stranger" => Ok(vec![reject(candidates.len() as u32 + 1000, 1)]),
            // 2 million rejections, 32 MB: inside the plugin's memory limit, far beyond what the
            // host accepts back from one call.
            "flood-result" => Ok(vec![reject(candidates[0], 1); 2_000_000]),
            "twice" => Ok(vec![reject(candidates[0], 1), reject(candidates[0], 1)]),
            "undeclared" => Ok(vec![reject(candidates[0], 77)]),
            "fail" => Err("the hostile plugin refuses".into()),
            "snoop" => {
                let env = std::env::vars().count();
                let files = if std::fs::read_dir("/").is_ok() {
                    "some"
                } else {
                    "none"
                };
                let time = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(u64::MAX, |d| d.as_secs());
                Err(format!("env={env} files={files} time={time}"))
            }
            "chatty" => {
                println!("hello on stdout");
                // Far beyond what the server keeps per call: must not make the plugin fail.
                for i in 0..2_000 {
                    println!("{i:0>99}");
                }
                eprintln!("hello on stderr");
                slipway_plugin_sdk::info!("hello through the log import");
                slipway_plugin_sdk::debug!("a debug line the server does not record");
                Ok(Vec::new())
            }
            "log-flood" => {
                for i in 0..100_000 {
                    slipway_plugin_sdk::warn!("flood line {i}");
                }
                Ok(Vec::new())
            }
            _ => Ok(Vec::new()),
        }
    }

    fn score(
        &self,
        _: &PlacementRequest,
        _: &Fleet,
        candidates: &[u32],
    ) -> Result<Vec<f64>, String> {
        match self.0.as_str() {
            "miscount" => Ok(vec![1.0; candidates.len() + 1]),
            "nan" => Ok(vec![f64::NAN; candidates.len()]),
            _ => Ok(vec![1.0; candidates.len()]),
        }
    }
}

slipway_plugin_sdk::export_placement!(Hostile);
