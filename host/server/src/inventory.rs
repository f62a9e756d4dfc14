//! The live host inventory: every host with its last report, its state and its claims, kept in
//! memory and mirrored into the columnar [`Fleet`] that placement plugins read.
//!
//! Heartbeats change one host each and arrive by the thousand per second at scale, so they touch
//! memory only: the host's column entries are rewritten in place, and what changed is written to
//! the store in batches by [`Inventory::take_dirty`]'s caller. A decision takes a snapshot of the
//! fleet (an `Arc`), so heartbeats during a decision copy the columns once instead of waiting.
//! The store stays the authority on claims: the inventory follows what it accepted.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use slipway_core::agent::{AllocationRatios, Heartbeat, HostMode, HostState, Resources};
use slipway_core::host::{Claim, Host};
use slipway_core::resources::Timestamp;
use slipway_core::{HostSnapshot, PlacementRequest as CoreRequest};
use slipway_runtime::placement::{Fleet, FleetBuilder, PlacementRequest};
use slipway_store::{HeartbeatRecord, HostRecord};

/// How hosts are judged reachable, and what they may be claimed for.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub heartbeat_interval: Duration,
    pub missed_heartbeats: u32,
    pub ratios: AllocationRatios,
}

impl Policy {
    /// How long a host may stay silent and still be reachable.
    pub fn silence_allowed(&self) -> Duration {
        self.heartbeat_interval * self.missed_heartbeats
    }
}

pub struct Inventory {
    inner: Mutex<Inner>,
    policy: Policy,
}

struct Inner {
    /// Slot `i` is host `i` of the fleet; deleted hosts leave a dead slot until the next rebuild.
    slots: Vec<Slot>,
    by_id: HashMap<String, usize>,
    /// Credential sha256 (hex) → slot.
    by_credential: HashMap<String, usize>,
    builder: FleetBuilder,
    /// The host id of every fleet index, shared with snapshots like the fleet.
    ids: Arc<Vec<String>>,
    dead: usize,
}

struct Slot {
    record: HostRecord,
    alive: bool,
    reachable: bool,
    /// When the last heartbeat (or the join) arrived, on the monotonic clock.
    seen: Instant,
    /// Changed since the last flush to the store.
    dirty: bool,
    claims: Vec<Claim>,
}

/// A host changed state: the caller publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub host: String,
    pub name: String,
    pub from: HostState,
    pub to: HostState,
}

/// Why a heartbeat was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeartbeatRefused {
    #[error("the credential is not one of a host's")]
    UnknownCredential,
    #[error("sequence number {got} does not follow {last}: a replayed heartbeat")]
    Replayed { got: u64, last: u64 },
}

/// An accepted heartbeat.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub host: String,
    pub mode: HostMode,
    pub transition: Option<Transition>,
}

/// What one decision sees: the fleet, the request in its symbols, the hosts it may choose, and
/// why the others may not.
pub struct Snapshot {
    pub fleet: Arc<Fleet>,
    pub ids: Arc<Vec<String>>,
    pub request: PlacementRequest,
    pub candidates: Vec<u32>,
    /// Hosts left out before the plugins ran, by why: `unreachable`, `draining`, ...
    pub left_out: BTreeMap<&'static str, usize>,
}

pub fn sha256_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

impl Inventory {
    pub fn new(policy: Policy, records: Vec<HostRecord>, claims: Vec<Claim>) -> Self {
        let now = Timestamp::now();
        let mut claims_of: HashMap<String, Vec<Claim>> = HashMap::new();
        for claim in claims {
            claims_of.entry(claim.host.clone()).or_default().push(claim);
        }
        let slots = records
            .into_iter()
            .map(|record| {
                // A host is as reachable as its last heartbeat before the restart makes it.
                let silent = Duration::from_millis(
                    u64::try_from(now.0 - record.last_heartbeat.0).unwrap_or(0),
                );
                let claims = claims_of.remove(&record.id).unwrap_or_default();
                Slot {
                    reachable: silent < policy.silence_allowed(),
                    seen: Instant::now()
                        .checked_sub(silent)
                        .unwrap_or_else(Instant::now),
                    record,
                    alive: true,
                    dirty: false,
                    claims,
                }
            })
            .collect();
        let mut inner = Inner {
            slots,
            by_id: HashMap::new(),
            by_credential: HashMap::new(),
            builder: FleetBuilder::default(),
            ids: Arc::new(Vec::new()),
            dead: 0,
        };
        inner.rebuild();
        Self {
            inner: Mutex::new(inner),
            policy,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind, never a broken invariant
        // worth refusing every later request for.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The number of hosts in each state.
    pub fn counts(&self) -> BTreeMap<HostState, usize> {
        let inner = self.lock();
        let mut counts: BTreeMap<HostState, usize> =
            HostState::ALL.iter().map(|s| (*s, 0)).collect();
        for slot in inner.slots.iter().filter(|s| s.alive) {
            *counts.entry(slot.state()).or_default() += 1;
        }
        counts
    }

    /// A host that joined (or joined again): it is reachable from now.
    pub fn joined(&self, record: HostRecord) -> Option<Transition> {
        let mut inner = self.lock();
        let claims = match inner.by_id.get(&record.id) {
            Some(&i) => std::mem::take(&mut inner.slots[i].claims),
            None => Vec::new(),
        };
        let before = inner.by_id.get(&record.id).map(|&i| inner.slots[i].state());
        let slot = Slot {
            record,
            alive: true,
            reachable: true,
            seen: Instant::now(),
            dirty: false,
            claims,
        };
        let i = match inner.by_id.get(&slot.record.id).copied() {
            Some(i) => {
                let old = inner.slots[i].record.credential_sha256.clone();
                inner.by_credential.remove(&old);
                inner.slots[i] = slot;
                inner.refresh_columns(i);
                i
            }
            None => {
                let i = inner.slots.len();
                let snapshot = snapshot_of(&slot);
                inner.builder.push(&snapshot);
                Arc::make_mut(&mut inner.ids).push(slot.record.id.clone());
                inner.by_id.insert(slot.record.id.clone(), i);
                inner.slots.push(slot);
                i
            }
        };
        let credential = inner.slots[i].record.credential_sha256.clone();
        inner.by_credential.insert(credential, i);
        let slot = &inner.slots[i];
        let after = slot.state();
        before.filter(|b| *b != after).map(|from| Transition {
            host: slot.record.id.clone(),
            name: slot.record.name.clone(),
            from,
            to: after,
        })
    }

    /// Whether a credential (its sha256, hex) is a host's.
    pub fn knows(&self, credential_sha256: &str) -> bool {
        self.lock().by_credential.contains_key(credential_sha256)
    }

    /// Records a heartbeat authenticated by a credential (its sha256, hex).
    pub fn heartbeat(
        &self,
        credential_sha256: &str,
        beat: Heartbeat,
    ) -> Result<Accepted, HeartbeatRefused> {
        let ratios = self.policy.ratios;
        let mut inner = self.lock();
        let i = *inner
            .by_credential
            .get(credential_sha256)
            .ok_or(HeartbeatRefused::UnknownCredential)?;
        let slot = &mut inner.slots[i];
        if beat.seq <= slot.record.heartbeat_seq {
            return Err(HeartbeatRefused::Replayed {
                got: beat.seq,
                last: slot.record.heartbeat_seq,
            });
        }
        let before = slot.state();
        slot.record.heartbeat_seq = beat.seq;
        slot.record.last_heartbeat = Timestamp::now();
        if let Some(url) = beat.agent_url {
            slot.record.agent_url = url;
        }
        slot.record.capacity = ratios.capacity(&beat.report);
        slot.record.report = beat.report;
        slot.seen = Instant::now();
        slot.reachable = true;
        slot.dirty = true;
        let after = slot.state();
        let accepted = Accepted {
            host: slot.record.id.clone(),
            mode: slot.record.mode,
            transition: (before != after).then(|| Transition {
                host: slot.record.id.clone(),
                name: slot.record.name.clone(),
                from: before,
                to: after,
            }),
        };
        inner.refresh_columns(i);
        Ok(accepted)
    }

    /// Marks hosts silent for longer than the policy allows unreachable.
    pub fn sweep(&self) -> Vec<Transition> {
        let allowed = self.policy.silence_allowed();
        let mut inner = self.lock();
        let mut out = Vec::new();
        for slot in inner.slots.iter_mut().filter(|s| s.alive && s.reachable) {
            if slot.seen.elapsed() > allowed {
                let from = slot.state();
                slot.reachable = false;
                out.push(Transition {
                    host: slot.record.id.clone(),
                    name: slot.record.name.clone(),
                    from,
                    to: slot.state(),
                });
            }
        }
        out
    }

    /// The heartbeats not yet written to the store.
    pub fn take_dirty(&self) -> Vec<HeartbeatRecord> {
        let mut inner = self.lock();
        let mut out = Vec::new();
        for slot in inner.slots.iter_mut().filter(|s| s.alive && s.dirty) {
            slot.dirty = false;
            out.push(HeartbeatRecord {
                host: slot.record.id.clone(),
                seq: slot.record.heartbeat_seq,
                at: slot.record.last_heartbeat,
                agent_url: slot.record.agent_url.clone(),
                report: slot.record.report.clone(),
                capacity: slot.record.capacity,
            });
        }
        out
    }

    pub fn set_mode(&self, id: &str, mode: HostMode) -> Option<Transition> {
        let mut inner = self.lock();
        let i = *inner.by_id.get(id)?;
        let slot = &mut inner.slots[i];
        let from = slot.state();
        slot.record.mode = mode;
        let to = slot.state();
        (from != to).then(|| Transition {
            host: slot.record.id.clone(),
            name: slot.record.name.clone(),
            from,
            to,
        })
    }

    pub fn remove(&self, id: &str) {
        let mut inner = self.lock();
        let Some(i) = inner.by_id.remove(id) else {
            return;
        };
        let credential = inner.slots[i].record.credential_sha256.clone();
        inner.by_credential.remove(&credential);
        inner.slots[i].alive = false;
        inner.dead += 1;
        // Dead slots cost every decision a skip; rebuild once they are a quarter of the fleet.
        if inner.dead * 4 > inner.slots.len() {
            inner.slots.retain(|s| s.alive);
            inner.rebuild();
        }
    }

    /// Follows a claim the store accepted.
    pub fn claimed(&self, claim: &Claim) {
        let mut inner = self.lock();
        let Some(&i) = inner.by_id.get(&claim.host) else {
            return;
        };
        let slot = &mut inner.slots[i];
        slot.record.claimed = add(slot.record.claimed, claim.resources);
        slot.claims.push(claim.clone());
        inner.refresh_columns(i);
    }

    /// Follows a claim the store released.
    pub fn released(&self, claim: &Claim) {
        let mut inner = self.lock();
        let Some(&i) = inner.by_id.get(&claim.host) else {
            return;
        };
        let slot = &mut inner.slots[i];
        let Some(at) = slot.claims.iter().position(|c| c.id == claim.id) else {
            return;
        };
        slot.claims.swap_remove(at);
        slot.record.claimed = sub(slot.record.claimed, claim.resources);
        inner.refresh_columns(i);
    }

    /// Follows the store's view of a host's claimed amounts, capacity and mode, after the store
    /// refused a claim the inventory thought would fit (another server claimed first).
    pub fn refresh(&self, record: &HostRecord) {
        let mut inner = self.lock();
        let Some(&i) = inner.by_id.get(&record.id) else {
            return;
        };
        let slot = &mut inner.slots[i];
        slot.record.claimed = record.claimed;
        slot.record.mode = record.mode;
        inner.refresh_columns(i);
    }

    /// What a decision needs, taken at once under the lock.
    pub fn snapshot(&self, request: &CoreRequest, exclude: &[String]) -> Snapshot {
        let inner = self.lock();
        let mut left_out: BTreeMap<&'static str, usize> = BTreeMap::new();
        let mut candidates = Vec::with_capacity(inner.slots.len());
        for (i, slot) in inner.slots.iter().enumerate() {
            if !slot.alive {
                continue;
            }
            match slot.state() {
                HostState::Ready if !exclude.contains(&slot.record.id) => candidates.push(i as u32),
                HostState::Ready => *left_out.entry("excluded").or_default() += 1,
                other => *left_out.entry(other.as_str()).or_default() += 1,
            }
        }
        let (fleet, request) = match inner.builder.request_known(request) {
            Some(wire) => (inner.builder.snapshot(), wire),
            // A label or group no host has: intern it into a copy, never the shared table, so
            // that requests cannot grow the inventory.
            None => {
                let mut copy = inner.builder.clone();
                let wire = copy.request(request);
                (copy.snapshot(), wire)
            }
        };
        Snapshot {
            fleet,
            ids: inner.ids.clone(),
            request,
            candidates,
            left_out,
        }
    }

    /// The API's view of one host.
    pub fn host(&self, id_or_name: &str) -> Option<Host> {
        let inner = self.lock();
        let i = match inner.by_id.get(id_or_name) {
            Some(&i) => i,
            None => inner
                .slots
                .iter()
                .position(|s| s.alive && s.record.name == id_or_name)?,
        };
        Some(inner.slots[i].view())
    }

    /// A page of hosts in id order: those after `after` that pass `filter`, at most `limit`.
    /// Only the hosts it looks at are copied out, so a page costs little whatever the fleet.
    pub fn hosts(
        &self,
        after: Option<&str>,
        limit: usize,
        filter: impl Fn(&Host) -> bool,
    ) -> Vec<Host> {
        let inner = self.lock();
        let mut order: Vec<(&str, usize)> = inner
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.alive && after.is_none_or(|a| s.record.id.as_str() > a))
            .map(|(i, s)| (s.record.id.as_str(), i))
            .collect();
        order.sort_unstable();
        order
            .into_iter()
            .map(|(_, i)| inner.slots[i].view())
            .filter(|h| filter(h))
            .take(limit)
            .collect()
    }

    /// Every host's room, for judging whether a request could ever fit, or fits now.
    pub fn rooms(&self) -> Vec<slipway_core::request::HostRoom> {
        let inner = self.lock();
        inner
            .slots
            .iter()
            .filter(|s| s.alive)
            .map(|s| {
                let r = &s.record;
                let mut groups: Vec<String> = s
                    .claims
                    .iter()
                    .filter_map(|c| c.anti_affinity_group.clone())
                    .collect();
                groups.sort_unstable();
                groups.dedup();
                slipway_core::request::HostRoom {
                    id: r.id.clone(),
                    name: r.name.clone(),
                    ready: s.state() == HostState::Ready,
                    arch: r.report.arch,
                    labels: s.labels(),
                    capacity: r.capacity,
                    free: Resources {
                        vcpus: r.capacity.vcpus.saturating_sub(r.claimed.vcpus),
                        memory_mib: r.capacity.memory_mib.saturating_sub(r.claimed.memory_mib),
                        disk_mib: r.capacity.disk_mib.saturating_sub(r.claimed.disk_mib),
                    },
                    groups,
                }
            })
            .collect()
    }

    /// The agent's URL and secret, for calling it.
    pub fn agent(&self, id: &str) -> Option<(String, String)> {
        let inner = self.lock();
        let i = *inner.by_id.get(id)?;
        let r = &inner.slots[i].record;
        Some((r.agent_url.clone(), r.agent_secret.clone()))
    }
}

impl Inner {
    /// Rebuilds the fleet and the indexes from the slots.
    fn rebuild(&mut self) {
        self.by_id.clear();
        self.by_credential.clear();
        let snapshots: Vec<HostSnapshot> = self.slots.iter().map(snapshot_of).collect();
        self.builder = FleetBuilder::from_hosts(&snapshots);
        self.ids = Arc::new(self.slots.iter().map(|s| s.record.id.clone()).collect());
        for (i, slot) in self.slots.iter().enumerate() {
            self.by_id.insert(slot.record.id.clone(), i);
            self.by_credential
                .insert(slot.record.credential_sha256.clone(), i);
        }
        self.dead = 0;
    }

    fn refresh_columns(&mut self, i: usize) {
        let snapshot = snapshot_of(&self.slots[i]);
        self.builder.set(i, &snapshot);
    }
}

impl Slot {
    fn state(&self) -> HostState {
        HostState::of(self.record.mode, self.reachable)
    }

    fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.record.token_labels.clone();
        labels.extend(
            self.record
                .report
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        labels
    }

    fn view(&self) -> Host {
        let r = &self.record;
        let mut report = r.report.clone();
        report.labels = self.labels();
        Host {
            id: r.id.clone(),
            name: r.name.clone(),
            state: self.state(),
            mode: r.mode,
            agent_url: r.agent_url.clone(),
            capacity: r.capacity,
            claimed: r.claimed,
            claims: u32::try_from(self.claims.len()).unwrap_or(u32::MAX),
            report,
            last_heartbeat: r.last_heartbeat,
            joined_at: r.joined_at,
            join_token: r.join_token.clone(),
        }
    }
}

/// The host as the placement plugins see it. Totals are the physical amounts (less the memory
/// the agent reserves): the capacity filter applies the allocation ratios itself.
fn snapshot_of(slot: &Slot) -> HostSnapshot {
    let r = &slot.record;
    let report = &r.report;
    let mut groups: Vec<String> = slot
        .claims
        .iter()
        .flat_map(|c| {
            c.anti_affinity_group
                .iter()
                .chain(c.affinity_group.iter())
                .cloned()
        })
        .collect();
    groups.sort_unstable();
    groups.dedup();
    HostSnapshot {
        id: String::new(),
        arch: report.arch,
        vcpus_total: report.cpus,
        vcpus_allocated: r.claimed.vcpus,
        memory_total_mib: report
            .memory_total_mib
            .saturating_sub(report.memory_reserved_mib),
        memory_allocated_mib: r.claimed.memory_mib,
        memory_available_mib: Some(report.memory_available_mib),
        disk_total_mib: report.disk_total_mib,
        disk_allocated_mib: r.claimed.disk_mib,
        load_milli: report.load_milli[0],
        vms: u32::try_from(report.vms.len()).unwrap_or(u32::MAX),
        features: report.features.clone(),
        labels: slot.labels(),
        groups,
    }
}

fn add(a: Resources, b: Resources) -> Resources {
    Resources {
        vcpus: a.vcpus.saturating_add(b.vcpus),
        memory_mib: a.memory_mib.saturating_add(b.memory_mib),
        disk_mib: a.disk_mib.saturating_add(b.disk_mib),
    }
}

fn sub(a: Resources, b: Resources) -> Resources {
    Resources {
        vcpus: a.vcpus.saturating_sub(b.vcpus),
        memory_mib: a.memory_mib.saturating_sub(b.memory_mib),
        disk_mib: a.disk_mib.saturating_sub(b.disk_mib),
    }
}
