//! Hosts, the join tokens they joined with, the claims placement made on them, and settings.
//!
//! Heartbeats do not come here one by one: the server keeps the live inventory in memory and
//! writes what changed in batches ([`Store::flush_heartbeats`]). Claims do come here one by one,
//! since the store is what makes them safe: [`Store::claim`] adds to a host's claimed amounts
//! only where the sum stays within its capacity, in one conditional `UPDATE`, which SQLite
//! serialises and PostgreSQL re-checks on the locked row — two servers deciding at once cannot
//! both take the last of a host.

use std::collections::BTreeMap;

use slipway_core::agent::{HostMode, HostReport, Resources};
use slipway_core::host::{Claim, ClaimState, JoinToken};
use slipway_core::resources::{Page, Timestamp};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::{
    PageRequest, Result, Store, StoreError, exists_on_unique, found, json, new_id, page,
    sha256_hex, to_i64, to_u64,
};

/// A host as stored: everything the server needs to rebuild its inventory at start.
#[derive(Debug, Clone, PartialEq)]
pub struct HostRecord {
    pub id: String,
    pub name: String,
    pub agent_id: String,
    pub agent_url: String,
    /// What the server presents when it calls the agent.
    pub agent_secret: String,
    pub credential_sha256: String,
    pub join_token: String,
    /// Labels every host of the join token gets.
    pub token_labels: BTreeMap<String, String>,
    pub mode: HostMode,
    pub report: HostReport,
    pub capacity: Resources,
    pub claimed: Resources,
    pub heartbeat_seq: u64,
    pub last_heartbeat: Timestamp,
    pub joined_at: Timestamp,
}

/// An agent joining: who it says it is, and the join token's secret.
#[derive(Debug, Clone)]
pub struct NewHost<'a> {
    pub join_secret: &'a str,
    pub agent_id: &'a str,
    pub name: &'a str,
    pub agent_url: &'a str,
    pub agent_secret: &'a str,
    pub report: &'a HostReport,
    pub capacity: Resources,
}

/// The latest heartbeat of one host, as [`Store::flush_heartbeats`] writes it.
#[derive(Debug, Clone)]
pub struct HeartbeatRecord {
    pub host: String,
    pub seq: u64,
    pub at: Timestamp,
    pub agent_url: String,
    pub report: HostReport,
    pub capacity: Resources,
}

/// What a placement asks to claim.
#[derive(Debug, Clone)]
pub struct NewClaim<'a> {
    pub host: &'a str,
    pub resources: Resources,
    pub anti_affinity_group: Option<&'a str>,
    pub affinity_group: Option<&'a str>,
    /// When the claim lapses unless confirmed; `None` makes it confirmed at once.
    pub expires_at: Option<Timestamp>,
    pub owner: &'a str,
    pub purpose: Option<&'a str>,
}

/// Why a claim was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimRefusal {
    /// The host is gone.
    NoHost,
    /// An admin took the host out of service.
    NotActive(HostMode),
    /// The claim would take the host past its capacity: what is claimed now, and the capacity.
    Full {
        claimed: Resources,
        capacity: Resources,
    },
    /// A VM of the request's anti-affinity group already has a claim there.
    AntiAffinity,
}

macro_rules! host_columns {
    () => {
        "id, name, agent_id, agent_url, agent_secret, credential_sha256, \
     join_token_id, mode, report, capacity_vcpus, capacity_memory_mib, capacity_disk_mib, \
     claimed_vcpus, claimed_memory_mib, claimed_disk_mib, heartbeat_seq, last_heartbeat, joined_at, \
     (SELECT labels FROM join_tokens t WHERE t.id = hosts.join_token_id) AS token_labels"
    };
}

macro_rules! claim_columns {
    () => {
        "id, host_id, vcpus, memory_mib, disk_mib, anti_affinity_group, \
     affinity_group, state, expires_at, owner, purpose, created_at"
    };
}

macro_rules! join_token_columns {
    () => {
        "id, name, labels, uses_left, expires_at, created_at, revoked_at"
    };
}

/// A new secret: `prefix_` and 64 hex digits from the system's generator.
pub(crate) fn new_secret(prefix: &str) -> Result<String> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| StoreError::Random(e.to_string()))?;
    Ok(format!("{prefix}_{}", hex::encode(raw)))
}

impl Store {
    // ---------------------------------------------------------------------------------------
    // Join tokens

    /// Creates a join token; returns it with its secret, which is stored only as a sha256.
    pub async fn create_join_token(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        uses: Option<u32>,
        expires_at: Option<Timestamp>,
    ) -> Result<(JoinToken, String)> {
        let secret = new_secret("slj")?;
        let token = JoinToken {
            id: new_id(),
            name: name.to_owned(),
            labels: labels.clone(),
            uses_left: uses,
            expires_at,
            created_at: Timestamp::now(),
            revoked_at: None,
        };
        sqlx::query(
            "INSERT INTO join_tokens (id, name, secret_sha256, labels, uses_left, expires_at, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&token.id)
        .bind(&token.name)
        .bind(sha256_hex(secret.as_bytes()))
        .bind(json(&token.labels))
        .bind(uses.map(i64::from))
        .bind(expires_at.map(|t| t.0))
        .bind(token.created_at.0)
        .execute(&self.pool)
        .await?;
        Ok((token, secret))
    }

    pub async fn list_join_tokens(&self) -> Result<Vec<JoinToken>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            join_token_columns!(),
            " FROM join_tokens ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(join_token_from_row).collect()
    }

    /// Revokes a join token: no agent joins with it again. Hosts that joined keep their
    /// credentials.
    pub async fn revoke_join_token(&self, id: &str) -> Result<JoinToken> {
        let row = sqlx::query(concat!(
            "UPDATE join_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL
             RETURNING ",
            join_token_columns!()
        ))
        .bind(Timestamp::now().0)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        found(row, "join token", id, join_token_from_row)
    }

    // ---------------------------------------------------------------------------------------
    // Hosts

    /// Lets an agent join with a join token, and gives it a new credential. An agent id already
    /// known is the same host joining again: it keeps its id, claims and mode, and only the
    /// host that joins for the first time uses one of the token's uses. Returns the host, its
    /// credential's secret, and whether the host is new.
    pub async fn join_host(&self, new: &NewHost<'_>) -> Result<(HostRecord, String, bool)> {
        let now = Timestamp::now();
        let mut tx = self.write_tx().await?;
        let token = sqlx::query(concat!(
            "SELECT ",
            join_token_columns!(),
            " FROM join_tokens WHERE secret_sha256 = $1"
        ))
        .bind(sha256_hex(new.join_secret.as_bytes()))
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| join_token_from_row(&r))
        .transpose()?
        .ok_or_else(|| StoreError::Refused("the join token is unknown".into()))?;
        if token.revoked_at.is_some() {
            return Err(StoreError::Refused(format!(
                "join token {} was revoked",
                token.id
            )));
        }
        if token.expires_at.is_some_and(|at| at <= now) {
            return Err(StoreError::Refused(format!(
                "join token {} has expired",
                token.id
            )));
        }
        let existing: Option<String> = sqlx::query("SELECT id FROM hosts WHERE agent_id = $1")
            .bind(new.agent_id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.get(0));
        let credential = new_secret("slh")?;
        let hash = sha256_hex(credential.as_bytes());
        let created = existing.is_none();
        let id = match existing {
            Some(id) => {
                sqlx::query(
                    "UPDATE hosts SET name = $1, credential_sha256 = $2, agent_url = $3,
                         agent_secret = $4, report = $5, capacity_vcpus = $6,
                         capacity_memory_mib = $7, capacity_disk_mib = $8, heartbeat_seq = 0,
                         last_heartbeat = $9
                     WHERE id = $10",
                )
                .bind(new.name)
                .bind(&hash)
                .bind(new.agent_url)
                .bind(new.agent_secret)
                .bind(json(new.report))
                .bind(i64::from(new.capacity.vcpus))
                .bind(to_i64(new.capacity.memory_mib))
                .bind(to_i64(new.capacity.disk_mib))
                .bind(now.0)
                .bind(&id)
                .execute(&mut *tx)
                .await
                .map_err(|e| exists_on_unique(e, "host", new.name.to_owned()))?;
                id
            }
            None => {
                if token.uses_left == Some(0) {
                    return Err(StoreError::Refused(format!(
                        "join token {} has no uses left",
                        token.id
                    )));
                }
                let id = new_id();
                sqlx::query(
                    "INSERT INTO hosts (id, name, agent_id, credential_sha256, agent_url,
                         agent_secret, join_token_id, report, capacity_vcpus, capacity_memory_mib,
                         capacity_disk_mib, last_heartbeat, joined_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)",
                )
                .bind(&id)
                .bind(new.name)
                .bind(new.agent_id)
                .bind(&hash)
                .bind(new.agent_url)
                .bind(new.agent_secret)
                .bind(&token.id)
                .bind(json(new.report))
                .bind(i64::from(new.capacity.vcpus))
                .bind(to_i64(new.capacity.memory_mib))
                .bind(to_i64(new.capacity.disk_mib))
                .bind(now.0)
                .execute(&mut *tx)
                .await
                .map_err(|e| exists_on_unique(e, "host", new.name.to_owned()))?;
                sqlx::query(
                    "UPDATE join_tokens SET uses_left = uses_left - 1
                     WHERE id = $1 AND uses_left IS NOT NULL",
                )
                .bind(&token.id)
                .execute(&mut *tx)
                .await?;
                id
            }
        };
        let row = sqlx::query(concat!(
            "SELECT ",
            host_columns!(),
            " FROM hosts WHERE id = $1"
        ))
        .bind(&id)
        .fetch_one(&mut *tx)
        .await?;
        let host = host_from_row(&row)?;
        tx.commit().await?;
        Ok((host, credential, created))
    }

    /// Every host, for the inventory.
    pub async fn hosts(&self) -> Result<Vec<HostRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            host_columns!(),
            " FROM hosts ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(host_from_row).collect()
    }

    pub async fn host(&self, id: &str) -> Result<HostRecord> {
        let row = sqlx::query(concat!(
            "SELECT ",
            host_columns!(),
            " FROM hosts WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        found(row, "host", id, host_from_row)
    }

    pub async fn set_host_mode(&self, id: &str, mode: HostMode) -> Result<()> {
        let done = sqlx::query("UPDATE hosts SET mode = $1 WHERE id = $2")
            .bind(mode.as_str())
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(super::not_found("host", id));
        }
        Ok(())
    }

    /// Removes a host that holds no claims; its agent must join again to come back.
    pub async fn delete_host(&self, id: &str) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let claims: Vec<String> =
            sqlx::query("SELECT id FROM claims WHERE host_id = $1 ORDER BY id LIMIT 10")
                .bind(id)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| format!("claim {}", r.get::<String, _>(0)))
                .collect();
        if !claims.is_empty() {
            return Err(StoreError::InUse {
                kind: "host",
                id: id.to_owned(),
                users: claims,
            });
        }
        let done = sqlx::query("DELETE FROM hosts WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(super::not_found("host", id));
        }
        tx.commit().await?;
        Ok(())
    }

    /// Writes the latest heartbeat of each host, in one transaction of a few statements (one
    /// per [`FLUSH_ROWS`] hosts: a statement per host would cost more in hand-offs to the
    /// database's thread than in SQLite). Hosts deleted meanwhile are skipped.
    pub async fn flush_heartbeats(&self, beats: &[HeartbeatRecord]) -> Result<()> {
        if beats.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_tx().await?;
        for chunk in beats.chunks(FLUSH_ROWS) {
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "UPDATE hosts SET heartbeat_seq = v.column2, last_heartbeat = v.column3,
                     agent_url = v.column4, report = v.column5, capacity_vcpus = v.column6,
                     capacity_memory_mib = v.column7, capacity_disk_mib = v.column8
                 FROM (",
            );
            q.push_values(chunk, |mut row, b| {
                row.push_bind(&b.host)
                    .push_bind(seq_i64(b.seq))
                    .push_bind(b.at.0)
                    .push_bind(&b.agent_url)
                    .push_bind(json(&b.report))
                    .push_bind(i64::from(b.capacity.vcpus))
                    .push_bind(to_i64(b.capacity.memory_mib))
                    .push_bind(to_i64(b.capacity.disk_mib));
            });
            q.push(") AS v WHERE hosts.id = v.column1 AND hosts.heartbeat_seq <= v.column2");
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // Claims

    /// Claims resources on a host if, and only if, they fit: capacity, mode and anti-affinity
    /// are checked by the statement that adds the claim, so no interleaving of concurrent
    /// claims can over-commit the host. (The anti-affinity `NOT EXISTS` relies on SQLite
    /// serialising writers; on PostgreSQL it needs the host's row locked first, since a
    /// re-checked `UPDATE` does not re-run its subqueries.)
    pub async fn claim(
        &self,
        new: &NewClaim<'_>,
    ) -> Result<std::result::Result<Claim, ClaimRefusal>> {
        let r = new.resources;
        let mut tx = self.write_tx().await?;
        let updated = sqlx::query(
            "UPDATE hosts SET claimed_vcpus = claimed_vcpus + $1,
                 claimed_memory_mib = claimed_memory_mib + $2,
                 claimed_disk_mib = claimed_disk_mib + $3
             WHERE id = $4 AND mode = 'active'
               AND claimed_vcpus + $1 <= capacity_vcpus
               AND claimed_memory_mib + $2 <= capacity_memory_mib
               AND claimed_disk_mib + $3 <= capacity_disk_mib
               AND ($5 IS NULL OR NOT EXISTS (
                   SELECT 1 FROM claims c WHERE c.host_id = $4 AND c.anti_affinity_group = $5))",
        )
        .bind(i64::from(r.vcpus))
        .bind(to_i64(r.memory_mib))
        .bind(to_i64(r.disk_mib))
        .bind(new.host)
        .bind(new.anti_affinity_group)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            let refusal = self.why_not(&mut tx, new).await?;
            return Ok(Err(refusal));
        }
        let claim = Claim {
            id: new_id(),
            host: new.host.to_owned(),
            resources: r,
            anti_affinity_group: new.anti_affinity_group.map(str::to_owned),
            affinity_group: new.affinity_group.map(str::to_owned),
            state: if new.expires_at.is_some() {
                ClaimState::Pending
            } else {
                ClaimState::Confirmed
            },
            expires_at: new.expires_at,
            owner: new.owner.to_owned(),
            purpose: new.purpose.map(str::to_owned),
            created_at: Timestamp::now(),
        };
        sqlx::query(concat!(
            "INSERT INTO claims (",
            claim_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ))
        .bind(&claim.id)
        .bind(&claim.host)
        .bind(i64::from(r.vcpus))
        .bind(to_i64(r.memory_mib))
        .bind(to_i64(r.disk_mib))
        .bind(&claim.anti_affinity_group)
        .bind(&claim.affinity_group)
        .bind(claim.state.as_str())
        .bind(claim.expires_at.map(|t| t.0))
        .bind(&claim.owner)
        .bind(&claim.purpose)
        .bind(claim.created_at.0)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(claim))
    }

    async fn why_not(
        &self,
        tx: &mut super::Tx<'static>,
        new: &NewClaim<'_>,
    ) -> Result<ClaimRefusal> {
        let Some(row) = sqlx::query(concat!(
            "SELECT ",
            host_columns!(),
            " FROM hosts WHERE id = $1"
        ))
        .bind(new.host)
        .fetch_optional(&mut **tx)
        .await?
        else {
            return Ok(ClaimRefusal::NoHost);
        };
        let host = host_from_row(&row)?;
        if host.mode != HostMode::Active {
            return Ok(ClaimRefusal::NotActive(host.mode));
        }
        if !host.claimed.fits(new.resources, host.capacity) {
            return Ok(ClaimRefusal::Full {
                claimed: host.claimed,
                capacity: host.capacity,
            });
        }
        Ok(ClaimRefusal::AntiAffinity)
    }

    /// Confirms a pending claim: it no longer lapses.
    pub async fn confirm_claim(&self, id: &str) -> Result<Claim> {
        let row = sqlx::query(concat!(
            "UPDATE claims SET state = 'confirmed', expires_at = NULL WHERE id = $1
             RETURNING ",
            claim_columns!()
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        found(row, "claim", id, claim_from_row)
    }

    /// Releases a claim, giving its resources back to the host.
    pub async fn release_claim(&self, id: &str) -> Result<Claim> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(concat!(
            "DELETE FROM claims WHERE id = $1 RETURNING ",
            claim_columns!()
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let claim = found(row, "claim", id, claim_from_row)?;
        give_back(&mut tx, &claim).await?;
        tx.commit().await?;
        Ok(claim)
    }

    /// Releases every pending claim whose time ran out by `now`; returns them.
    pub async fn expire_claims(&self, now: Timestamp) -> Result<Vec<Claim>> {
        let mut tx = self.write_tx().await?;
        let rows = sqlx::query(concat!(
            "DELETE FROM claims WHERE state = 'pending' AND expires_at <= $1
             RETURNING ",
            claim_columns!()
        ))
        .bind(now.0)
        .fetch_all(&mut *tx)
        .await?;
        let claims = rows
            .iter()
            .map(claim_from_row)
            .collect::<Result<Vec<_>>>()?;
        for claim in &claims {
            give_back(&mut tx, claim).await?;
        }
        tx.commit().await?;
        Ok(claims)
    }

    pub async fn claim_record(&self, id: &str) -> Result<Claim> {
        let row = sqlx::query(concat!(
            "SELECT ",
            claim_columns!(),
            " FROM claims WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        found(row, "claim", id, claim_from_row)
    }

    /// Claims, optionally of one host only.
    pub async fn list_claims(
        &self,
        host: Option<&str>,
        request: &PageRequest,
    ) -> Result<Page<Claim>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            claim_columns!(),
            " FROM claims
             WHERE ($1 IS NULL OR host_id = $1) AND ($2 IS NULL OR id > $2)
             ORDER BY id LIMIT $3"
        ))
        .bind(host)
        .bind(&request.after)
        .bind(request.limit() + 1)
        .fetch_all(&self.pool)
        .await?;
        let items = rows.iter().map(claim_from_row).collect::<Result<_>>()?;
        Ok(page(items, request, |c: &Claim| &c.id))
    }

    /// Every claim, for the inventory.
    pub async fn all_claims(&self) -> Result<Vec<Claim>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            claim_columns!(),
            " FROM claims ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(claim_from_row).collect()
    }

    // ---------------------------------------------------------------------------------------
    // Settings

    /// A setting's value and revision, if it was ever set.
    pub async fn setting(&self, key: &str) -> Result<Option<(serde_json::Value, u64)>> {
        let row = sqlx::query("SELECT value, revision FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            let value = serde_json::from_str(r.get::<&str, _>(0))
                .map_err(|e| StoreError::Corrupt("setting", e))?;
            Ok((value, to_u64(r.get(1))))
        })
        .transpose()
    }

    /// Sets a setting. With `expected`, only if its revision is that (0: never set). Returns the
    /// new revision.
    pub async fn put_setting(
        &self,
        key: &str,
        value: &serde_json::Value,
        expected: Option<u64>,
    ) -> Result<u64> {
        let mut tx = self.write_tx().await?;
        let current: u64 = sqlx::query("SELECT revision FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?
            .map_or(0, |r| to_u64(r.get(0)));
        if let Some(expected) = expected
            && expected != current
        {
            return Err(StoreError::StaleRevision {
                kind: "setting",
                id: key.to_owned(),
                expected,
                actual: current,
            });
        }
        let revision = current + 1;
        sqlx::query(
            "INSERT INTO settings (key, value, revision, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (key) DO UPDATE SET value = $2, revision = $3, updated_at = $4",
        )
        .bind(key)
        .bind(value.to_string())
        .bind(to_i64(revision))
        .bind(Timestamp::now().0)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(revision)
    }
}

async fn give_back(tx: &mut super::Tx<'static>, claim: &Claim) -> Result<()> {
    let r = claim.resources;
    sqlx::query(
        "UPDATE hosts SET claimed_vcpus = claimed_vcpus - $1,
             claimed_memory_mib = claimed_memory_mib - $2,
             claimed_disk_mib = claimed_disk_mib - $3
         WHERE id = $4",
    )
    .bind(i64::from(r.vcpus))
    .bind(to_i64(r.memory_mib))
    .bind(to_i64(r.disk_mib))
    .bind(&claim.host)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Hosts per statement of a flush: 8 values each, well under SQLite's 32,766 parameters.
const FLUSH_ROWS: usize = 500;

/// Sequence numbers are microseconds: they fit an `i64` for the next 290,000 years.
fn seq_i64(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn resources(r: &SqliteRow, vcpus: &str, memory: &str, disk: &str) -> Resources {
    Resources {
        vcpus: u32::try_from(r.get::<i64, _>(vcpus)).unwrap_or(0),
        memory_mib: to_u64(r.get(memory)),
        disk_mib: to_u64(r.get(disk)),
    }
}

fn host_from_row(r: &SqliteRow) -> Result<HostRecord> {
    let mode: &str = r.get("mode");
    Ok(HostRecord {
        id: r.get("id"),
        name: r.get("name"),
        agent_id: r.get("agent_id"),
        agent_url: r.get("agent_url"),
        agent_secret: r.get("agent_secret"),
        credential_sha256: r.get("credential_sha256"),
        join_token: r.get("join_token_id"),
        token_labels: serde_json::from_str(
            r.get::<Option<&str>, _>("token_labels").unwrap_or("{}"),
        )
        .map_err(|e| StoreError::Corrupt("join token", e))?,
        mode: HostMode::parse(mode).unwrap_or(HostMode::Maintenance),
        report: serde_json::from_str(r.get("report"))
            .map_err(|e| StoreError::Corrupt("host", e))?,
        capacity: resources(
            r,
            "capacity_vcpus",
            "capacity_memory_mib",
            "capacity_disk_mib",
        ),
        claimed: resources(r, "claimed_vcpus", "claimed_memory_mib", "claimed_disk_mib"),
        heartbeat_seq: to_u64(r.get("heartbeat_seq")),
        last_heartbeat: Timestamp(r.get("last_heartbeat")),
        joined_at: Timestamp(r.get("joined_at")),
    })
}

fn claim_from_row(r: &SqliteRow) -> Result<Claim> {
    Ok(Claim {
        id: r.get("id"),
        host: r.get("host_id"),
        resources: resources(r, "vcpus", "memory_mib", "disk_mib"),
        anti_affinity_group: r.get("anti_affinity_group"),
        affinity_group: r.get("affinity_group"),
        state: ClaimState::parse(r.get("state")).unwrap_or(ClaimState::Confirmed),
        expires_at: r.get::<Option<i64>, _>("expires_at").map(Timestamp),
        owner: r.get("owner"),
        purpose: r.get("purpose"),
        created_at: Timestamp(r.get("created_at")),
    })
}

fn join_token_from_row(r: &SqliteRow) -> Result<JoinToken> {
    Ok(JoinToken {
        id: r.get("id"),
        name: r.get("name"),
        labels: serde_json::from_str(r.get("labels"))
            .map_err(|e| StoreError::Corrupt("join token", e))?,
        uses_left: r
            .get::<Option<i64>, _>("uses_left")
            .map(|n| u32::try_from(n).unwrap_or(0)),
        expires_at: r.get::<Option<i64>, _>("expires_at").map(Timestamp),
        created_at: Timestamp(r.get("created_at")),
        revoked_at: r.get::<Option<i64>, _>("revoked_at").map(Timestamp),
    })
}
