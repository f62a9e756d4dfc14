//! Placement plugins: filter and score hosts.
//!
//! Implement [`Placement`] and invoke [`export_placement!`](crate::export_placement). A decision
//! calls your plugin once with the whole candidate list; the fleet arrives column by column (see
//! [`Fleet`]), with labels and groups interned as symbol ids (see [`Fleet::symbol`]).

use serde::de::DeserializeOwned;

pub use crate::bindings::placement::exports::slipway::plugin::placement::{
    DetailKind, Fleet, FleetColumns, PlacementRequest, PluginInfo, Reason, Rejection,
};
pub use crate::bindings::types::{Arch, HostFeatures};

/// A placement plugin.
///
/// `new` runs at the start of every call with the plugin's configuration; then `filter` or
/// `score`. Both receive `candidates`, the indexes of the hosts still in the running; the fleet's
/// columns are indexed by those numbers.
pub trait Placement: Sized {
    /// The plugin's configuration, deserialised from the manifest's `config` table.
    type Config: DeserializeOwned;

    /// Set when the plugin rejects hosts: `filter` is then called.
    const FILTERS: bool = false;
    /// Set when the plugin ranks hosts: `score` is then called.
    const SCORES: bool = false;
    /// The fleet columns the plugin reads. Only these are copied into the plugin; the others
    /// arrive empty, so indexing them panics. Ask for what you use: each column of a
    /// 10,000-host fleet costs time on every call.
    const COLUMNS: FleetColumns = FleetColumns::all();

    /// Every reason `filter` may give, declared once so that the server can count and explain
    /// rejections: at most 64, each message at most 200 bytes.
    fn reasons() -> Vec<Reason> {
        Vec::new()
    }

    /// Builds the plugin from its configuration; an error refuses the configuration. Called when
    /// the plugin is loaded (so a bad configuration fails then) and at the start of every call.
    fn new(config: Self::Config) -> Result<Self, String>;

    /// Returns the candidates that cannot take the VM, each with a declared reason code.
    fn filter(
        &self,
        request: &PlacementRequest,
        fleet: &Fleet,
        candidates: &[u32],
    ) -> Result<Vec<Rejection>, String> {
        let _ = (request, fleet, candidates);
        Ok(Vec::new())
    }

    /// Returns one score per candidate, in order; higher is better, any finite scale.
    fn score(
        &self,
        request: &PlacementRequest,
        fleet: &Fleet,
        candidates: &[u32],
    ) -> Result<Vec<f64>, String> {
        let _ = (request, fleet);
        Ok(vec![0.0; candidates.len()])
    }
}

/// A shorthand for declaring a reason.
pub fn reason(code: u32, message: &str, detail: DetailKind) -> Reason {
    Reason {
        code,
        message: message.to_owned(),
        detail,
    }
}

/// Views over the columnar fleet.
impl Fleet {
    /// The number of hosts.
    pub fn len(&self) -> usize {
        self.hosts as usize
    }

    pub fn is_empty(&self) -> bool {
        self.hosts == 0
    }

    /// Host `host`'s architecture (column `arch`).
    pub fn arch(&self, host: u32) -> Option<Arch> {
        Some(match *self.arch.get(host as usize)? {
            0 => Arch::X8664,
            1 => Arch::Aarch64,
            2 => Arch::Riscv64,
            3 => Arch::Ppc64le,
            4 => Arch::S390x,
            _ => return None,
        })
    }

    /// Host `host`'s features (column `features`).
    pub fn features(&self, host: u32) -> HostFeatures {
        HostFeatures::from_bits_truncate(self.features.get(host as usize).copied().unwrap_or(0))
    }

    /// The symbol ids of host `host`'s labels, each a `key=value` symbol (column `labels`).
    pub fn labels(&self, host: u32) -> &[u32] {
        let set = self.label_set.get(host as usize).copied();
        span(&self.label_set_offsets, &self.label_ids, set)
    }

    /// The symbol ids of the groups of the VMs already on host `host` (column `groups`).
    pub fn groups(&self, host: u32) -> &[u32] {
        let set = self.group_set.get(host as usize).copied();
        span(&self.group_set_offsets, &self.group_ids, set)
    }

    /// The number of symbols sent.
    pub fn symbol_count(&self) -> usize {
        self.symbol_offsets.len().saturating_sub(1)
    }

    /// Symbol `id`, or `""` for an id out of range.
    pub fn symbol(&self, id: u32) -> &str {
        let i = id as usize;
        match (self.symbol_offsets.get(i), self.symbol_offsets.get(i + 1)) {
            (Some(&start), Some(&end)) => self
                .symbol_text
                .get(start as usize..end as usize)
                .unwrap_or(""),
            _ => "",
        }
    }

    /// The id of `symbol`, if this fleet has it. A linear scan: look ids up once per call, not
    /// once per host.
    pub fn symbol_id(&self, symbol: &str) -> Option<u32> {
        (0..self.symbol_count() as u32).find(|&id| self.symbol(id) == symbol)
    }

    /// The value of label `key` on host `host`, if it carries one.
    pub fn label_value(&self, host: u32, key: &str) -> Option<&str> {
        self.labels(host).iter().find_map(|&id| {
            let (k, v) = self.symbol(id).split_once('=')?;
            (k == key).then_some(v)
        })
    }
}

fn span<'a>(offsets: &[u32], ids: &'a [u32], set: Option<u32>) -> &'a [u32] {
    let Some(set) = set else { return &[] };
    let i = set as usize;
    match (offsets.get(i), offsets.get(i + 1)) {
        (Some(&start), Some(&end)) => ids.get(start as usize..end as usize).unwrap_or(&[]),
        _ => &[],
    }
}

#[doc(hidden)]
pub mod __glue {
    use super::*;

    fn plugin<P: Placement>() -> Result<P, String> {
        crate::log::install_panic_hook();
        P::new(crate::config::load()?)
    }

    pub fn describe<P: Placement>() -> Result<PluginInfo, String> {
        // Building the plugin checks its configuration now, at load.
        plugin::<P>()?;
        Ok(PluginInfo {
            filters: P::FILTERS,
            scores: P::SCORES,
            reasons: P::reasons(),
            columns: P::COLUMNS,
        })
    }

    pub fn filter<P: Placement>(
        request: PlacementRequest,
        fleet: Fleet,
        candidates: Vec<u32>,
    ) -> Result<Vec<Rejection>, String> {
        plugin::<P>()?.filter(&request, &fleet, &candidates)
    }

    pub fn score<P: Placement>(
        request: PlacementRequest,
        fleet: Fleet,
        candidates: Vec<u32>,
    ) -> Result<Vec<f64>, String> {
        plugin::<P>()?.score(&request, &fleet, &candidates)
    }
}

/// Exports a [`Placement`] implementation as the component's `placement` interface.
///
/// Invoke it once, at the top level of the plugin crate. Natively it expands to a check that the
/// type implements [`Placement`] and nothing else.
#[macro_export]
macro_rules! export_placement {
    ($plugin:ty) => {
        const _: fn() = || {
            fn must_implement_placement<P: $crate::placement::Placement>() {}
            must_implement_placement::<$plugin>();
        };

        #[cfg(target_family = "wasm")]
        #[doc(hidden)]
        pub struct __SlipwayPlacementExport;

        #[cfg(target_family = "wasm")]
        const _: () = {
            use $crate::__private::placement::exports::slipway::plugin::placement as wit;
            impl wit::Guest for __SlipwayPlacementExport {
                fn describe() -> ::std::result::Result<wit::PluginInfo, ::std::string::String> {
                    $crate::placement::__glue::describe::<$plugin>()
                }
                fn filter(
                    request: wit::PlacementRequest,
                    fleet: wit::Fleet,
                    candidates: ::std::vec::Vec<u32>,
                ) -> ::std::result::Result<::std::vec::Vec<wit::Rejection>, ::std::string::String>
                {
                    $crate::placement::__glue::filter::<$plugin>(request, fleet, candidates)
                }
                fn score(
                    request: wit::PlacementRequest,
                    fleet: wit::Fleet,
                    candidates: ::std::vec::Vec<u32>,
                ) -> ::std::result::Result<::std::vec::Vec<f64>, ::std::string::String> {
                    $crate::placement::__glue::score::<$plugin>(request, fleet, candidates)
                }
            }
        };

        #[cfg(target_family = "wasm")]
        $crate::__private::placement::export_placement_world!(__SlipwayPlacementExport);
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet() -> Fleet {
        Fleet {
            hosts: 2,
            symbol_text: "rack=r1web".into(),
            symbol_offsets: vec![0, 7, 10],
            vcpus_total: vec![],
            vcpus_allocated: vec![],
            memory_total_mib: vec![],
            memory_allocated_mib: vec![],
            memory_available_mib: vec![],
            disk_total_mib: vec![],
            disk_allocated_mib: vec![],
            load_milli: vec![],
            vms: vec![],
            arch: vec![1, 9],
            features: vec![0b11, 0],
            label_set: vec![0, 7],
            label_set_offsets: vec![0, 1],
            label_ids: vec![0],
            group_set: vec![0, 0],
            group_set_offsets: vec![0, 1],
            group_ids: vec![1],
        }
    }

    #[test]
    fn accessors_decode_the_columns() {
        let f = fleet();
        assert_eq!(f.symbol(0), "rack=r1");
        assert_eq!(f.symbol(1), "web");
        assert_eq!(f.symbol_id("web"), Some(1));
        assert_eq!(f.labels(0), [0]);
        assert_eq!(f.label_value(0, "rack"), Some("r1"));
        assert_eq!(f.groups(1), [1]);
        assert_eq!(f.arch(0), Some(Arch::Aarch64));
        assert_eq!(f.features(0), HostFeatures::KVM | HostFeatures::UEFI);
    }

    #[test]
    fn malformed_columns_read_as_empty_not_as_a_panic() {
        let f = fleet();
        assert_eq!(f.labels(1), [] as [u32; 0], "label set 7 does not exist");
        assert_eq!(f.labels(99), [] as [u32; 0]);
        assert_eq!(f.symbol(5), "");
        assert_eq!(f.arch(1), None, "arch case 9 does not exist");
        assert_eq!(f.arch(99), None);
        assert_eq!(f.features(99), HostFeatures::empty());
    }
}
