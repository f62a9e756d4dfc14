//! A validation plugin that misbehaves in the way its configuration's `mode` says, so that the
//! server's tests can check each misbehaviour is contained and reported:
//! `ok` (one warning), `loop` (never returns), `trap` (panics), `nowhere` (findings on fields the
//! request does not have), `flood` (ten million findings), `many` (5,000: over the host's cap),
//! `huge` (one finding with a 16 MiB message), `policy` (an error with a suggestion).

use serde::Deserialize;
use slipway_plugin_sdk::validation::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    mode: String,
}

pub struct HostileValidator(String);

impl Validation for HostileValidator {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Ok(Self(config.mode))
    }

    fn validate(&self, request: &VmRequest, _: &ValidationContext) -> Result<Vec<Finding>, String> {
        Ok(match self.0.as_str() {
            "loop" => {
                let mut n = request.vcpus as u64;
                loop {
                    n = std::hint::black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            "trap" => panic!("the hostile validator panics, as configured"),
            "nowhere" => vec![
                error("no-such-field", "a finding about nothing", Some("x".into())),
                warning("apps.99.version", "an app the request does not have", None),
            ],
            "flood" => (0..10_000_000)
                .map(|i| error("vcpus", format!("finding {i}"), None))
                .collect(),
            "many" => (0..5_000)
                .map(|i| warning("vcpus", format!("finding {i}"), None))
                .collect(),
            "huge" => vec![warning("hostname", "x".repeat(16 << 20), None)],
            "policy" => vec![error(
                "memory-mib",
                "this site allows at most 1024 MiB",
                Some("1024".into()),
            )],
            _ => vec![warning(
                "",
                "the hostile validator is loaded, and behaving",
                None,
            )],
        })
    }
}

slipway_plugin_sdk::export_validation!(HostileValidator);
