//! Deployed VMs: their records, their MAC addresses (unique across the inventory, by the
//! database's own constraint) and the seed tokens their guests present (kept as sha256).

use slipway_core::resources::Page;
use slipway_core::vm::Vm;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::{PageRequest, Result, Store, StoreError, found, is_unique_violation, json, page};

fn vm_from_row(row: &SqliteRow) -> Result<Vm> {
    let body: String = row.try_get("body")?;
    serde_json::from_str(&body).map_err(|e| StoreError::Corrupt("vm", e))
}

impl Store {
    /// Records a new VM with its MACs and seed token, in one transaction. A MAC another VM has
    /// is refused as `AlreadyExists` naming it, and nothing is recorded: the caller draws again.
    pub async fn insert_vm(&self, vm: &Vm, seed_token_sha256: &str) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO vms (id, deployment_id, host_id, phase, seed_token_sha256, owner, body, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&vm.id)
        .bind(&vm.deployment)
        .bind(&vm.host)
        .bind(vm.phase.as_str())
        .bind(seed_token_sha256)
        .bind(&vm.owner)
        .bind(json(vm))
        .bind(vm.created_at.0)
        .execute(&mut *tx)
        .await?;
        for mac in &vm.macs {
            sqlx::query("INSERT INTO vm_macs (mac, vm_id) VALUES ($1, $2)")
                .bind(mac)
                .bind(&vm.id)
                .execute(&mut *tx)
                .await
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        StoreError::AlreadyExists {
                            kind: "MAC address",
                            name: mac.clone(),
                        }
                    } else {
                        e.into()
                    }
                })?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn vm(&self, id: &str) -> Result<Vm> {
        let row = sqlx::query("SELECT body FROM vms WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        found(row, "VM", id, vm_from_row)
    }

    /// The VM whose guest holds the seed token of this sha256.
    pub async fn vm_by_seed(&self, seed_token_sha256: &str) -> Result<Option<Vm>> {
        let row = sqlx::query("SELECT body FROM vms WHERE seed_token_sha256 = $1")
            .bind(seed_token_sha256)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(vm_from_row).transpose()
    }

    /// VMs, optionally of one deployment or one owner.
    pub async fn list_vms(
        &self,
        deployment: Option<&str>,
        owner: Option<&str>,
        request: &PageRequest,
    ) -> Result<Page<Vm>> {
        let rows = sqlx::query(
            "SELECT body FROM vms
             WHERE ($1 IS NULL OR deployment_id = $1) AND ($2 IS NULL OR owner = $2)
               AND ($3 IS NULL OR id > $3)
             ORDER BY id LIMIT $4",
        )
        .bind(deployment)
        .bind(owner)
        .bind(&request.after)
        .bind(request.limit() + 1)
        .fetch_all(&self.pool)
        .await?;
        let items = rows.iter().map(vm_from_row).collect::<Result<_>>()?;
        Ok(page(items, request, |v: &Vm| &v.id))
    }

    /// Replaces a VM's record (its phase, report, error...).
    pub async fn update_vm(&self, vm: &Vm) -> Result<()> {
        let done = sqlx::query("UPDATE vms SET phase = $2, host_id = $3, body = $4 WHERE id = $1")
            .bind(&vm.id)
            .bind(vm.phase.as_str())
            .bind(&vm.host)
            .bind(json(vm))
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                kind: "VM",
                id: vm.id.clone(),
            });
        }
        Ok(())
    }

    /// Forgets a VM: its record, MACs and seed token.
    pub async fn delete_vm(&self, id: &str) -> Result<Vm> {
        let row = sqlx::query("DELETE FROM vms WHERE id = $1 RETURNING body")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        found(row, "VM", id, vm_from_row)
    }
}
