//! Slipway's persistent state: API tokens, the catalog (applications and model VMs), the records of
//! the image store, jobs, the event log, and the hosts with their join tokens and claims.
//!
//! The default is one SQLite file in the data directory, in WAL mode so that readers never wait for
//! the writer. The schema (`migrations/`, versioned and applied at open) and every query keep to SQL
//! that PostgreSQL speaks as well — `$n` placeholders, `RETURNING`, `ON CONFLICT`, foreign keys
//! with `RESTRICT` — so that several servers can later share one PostgreSQL database.
//!
//! Dependencies between resources are enforced twice: a delete first looks for dependents, so that
//! the error can name them, and the foreign keys refuse whatever a race lets through.

mod hosts;
mod vms;

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};
use slipway_core::catalog::{ApplicationSpec, FieldError, ModelVmSpec};
use slipway_core::resources::{
    Application, Event, Image, ImageFormat, ImageKind, Job, JobError, JobState, ModelVm, Page,
    Role, StagedVm, Timestamp, Token,
};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

macro_rules! job_columns {
    () => {
        "id, kind, state, params, steps, step, done_bytes, total_bytes, result, error, attempts,
         created_at, updated_at, finished_at"
    };
}

/// What the store refuses, or what went wrong underneath it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {id} does not exist")]
    NotFound { kind: &'static str, id: String },
    #[error("{kind} {name} already exists")]
    AlreadyExists { kind: &'static str, name: String },
    #[error("{kind} {id} is in use by {}", users.join(", "))]
    InUse {
        kind: &'static str,
        id: String,
        users: Vec<String>,
    },
    /// The body refers to things that do not exist; each with the field that names it.
    #[error("the body refers to things that do not exist")]
    Dangling(Vec<FieldError>),
    /// Something a long operation started from was deleted before it could be recorded.
    #[error("{0}")]
    Gone(String),
    #[error("{kind} {id} is at revision {actual}, not {expected}")]
    StaleRevision {
        kind: &'static str,
        id: String,
        expected: u64,
        actual: u64,
    },
    /// A credential or token that does not allow what was asked.
    #[error("{0}")]
    Refused(String),
    #[error("the database refused the operation")]
    Database(#[from] sqlx::Error),
    #[error("the database schema could not be brought up to date")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("a stored {0} record cannot be read")]
    Corrupt(&'static str, #[source] serde_json::Error),
    #[error("the system's random number generator failed: {0}")]
    Random(String),
}

pub use hosts::{ClaimRefusal, HeartbeatRecord, HostRecord, NewClaim, NewHost};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Listing cursors are the id of the last item of a page; ids sort by creation time (UUIDv7).
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    pub after: Option<String>,
    pub limit: u32,
}

impl PageRequest {
    pub const MAX_LIMIT: u32 = 500;

    fn limit(&self) -> i64 {
        i64::from(self.limit.clamp(1, Self::MAX_LIMIT))
    }
}

fn page<T>(mut items: Vec<T>, request: &PageRequest, id: impl Fn(&T) -> &str) -> Page<T> {
    let limit = request.limit.clamp(1, PageRequest::MAX_LIMIT) as usize;
    // One more row than asked for tells whether another page exists.
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|t| id(t).to_owned())
    } else {
        None
    };
    Page { items, next }
}

/// Filters on the model VM listing; absent fields match everything.
#[derive(Debug, Clone, Default)]
pub struct ModelVmFilter {
    pub os_family: Option<String>,
    pub os_distro: Option<String>,
    pub os_version: Option<String>,
    pub arch: Option<String>,
    pub label: Option<(String, String)>,
}

/// A new job: its kind, its input, its steps in order, and the token that asked for it.
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    pub kind: &'a str,
    pub params: serde_json::Value,
    pub steps: &'a [&'a str],
    pub owner: &'a str,
}

/// An event to append to the log.
#[derive(Debug, Clone, Serialize)]
pub struct NewEvent<'a> {
    pub topic: &'a str,
    pub subject: &'a str,
    pub kind: &'a str,
    pub data: serde_json::Value,
}

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
}

/// A new, time-ordered id (UUIDv7), as every record has.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool })
    }

    /// The versions of the migrations applied, oldest first.
    pub async fn schema_versions(&self) -> Result<Vec<i64>> {
        let rows = sqlx::query("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| r.get::<i64, _>(0)).collect())
    }

    /// A transaction that reads and then writes. SQLite's plain `BEGIN` would fail the upgrade to
    /// a write lock at once with SQLITE_BUSY when another writer is active, ignoring the busy
    /// timeout; `BEGIN IMMEDIATE` takes the lock up front, and waits for it.
    async fn write_tx(&self) -> Result<Tx<'static>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    // ---------------------------------------------------------------------------------------
    // Tokens

    /// Creates a token and returns it with its secret, which is stored only as a sha256.
    pub async fn create_token(&self, name: &str, role: Role) -> Result<(Token, String)> {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| StoreError::Random(e.to_string()))?;
        let secret = format!("slw_{}", hex::encode(raw));
        let token = Token {
            id: new_id(),
            name: name.to_owned(),
            role,
            created_at: Timestamp::now(),
            revoked_at: None,
        };
        sqlx::query(
            "INSERT INTO tokens (id, name, role, secret_sha256, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&token.id)
        .bind(&token.name)
        .bind(role.as_str())
        .bind(sha256_hex(secret.as_bytes()))
        .bind(token.created_at.0)
        .execute(&self.pool)
        .await?;
        Ok((token, secret))
    }

    /// The live token whose secret this is, if any.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<Token>> {
        let row = sqlx::query(
            "SELECT id, name, role, created_at, revoked_at FROM tokens WHERE secret_sha256 = $1 AND revoked_at IS NULL",
        )
        .bind(sha256_hex(secret.as_bytes()))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| token_from_row(&r)).transpose()
    }

    pub async fn list_tokens(&self) -> Result<Vec<Token>> {
        let rows =
            sqlx::query("SELECT id, name, role, created_at, revoked_at FROM tokens ORDER BY id")
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(token_from_row).collect()
    }

    pub async fn revoke_token(&self, id: &str) -> Result<Token> {
        let row = sqlx::query(
            "UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL
             RETURNING id, name, role, created_at, revoked_at",
        )
        .bind(Timestamp::now().0)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        found(row, "token", id, token_from_row)
    }

    // ---------------------------------------------------------------------------------------
    // Images

    /// Records an image. Content addressing makes a second record of the same bytes the same
    /// image: the existing one is returned and `false` says nothing was added.
    pub async fn insert_image(&self, image: &Image) -> Result<(Image, bool)> {
        let inserted = insert_image_row(&self.pool, image).await?;
        Ok((self.image(&image.id).await?, inserted))
    }

    pub async fn image(&self, id: &str) -> Result<Image> {
        let row = sqlx::query(IMAGE_COLUMNS_WHERE_ID)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        found(row, "image", id, image_from_row)
    }

    pub async fn list_images(
        &self,
        kind: Option<ImageKind>,
        request: &PageRequest,
    ) -> Result<Page<Image>> {
        let rows = sqlx::query(
            "SELECT id, name, kind, format, source_format, source_sha256, virtual_size, stored_size,
                    allocated_size, created_at
             FROM images
             WHERE ($1 IS NULL OR kind = $1) AND ($2 IS NULL OR id > $2)
             ORDER BY id LIMIT $3",
        )
        .bind(kind.map(ImageKind::as_str))
        .bind(&request.after)
        .bind(request.limit() + 1)
        .fetch_all(&self.pool)
        .await?;
        let items = rows.iter().map(image_from_row).collect::<Result<_>>()?;
        Ok(page(items, request, |i: &Image| &i.id))
    }

    /// Every image id the store knows, to sweep blobs that no record owns.
    pub async fn image_ids(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT id FROM images")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
    }

    /// Deletes an image's record, unless a model VM or an application uses it.
    pub async fn delete_image(&self, id: &str) -> Result<Image> {
        let mut tx = self.write_tx().await?;
        let users = sqlx::query(
            "SELECT 'model VM ' || m.name FROM model_vm_images u JOIN model_vms m ON m.id = u.model_vm_id
               WHERE u.image_id = $1
             UNION ALL
             SELECT 'application ' || a.name || ' ' || a.version FROM application_artifacts u
               JOIN applications a ON a.id = u.application_id WHERE u.image_id = $1
             UNION ALL
             SELECT 'staged VM ' || s.name FROM staged_vm_images u
               JOIN staged_vms s ON s.id = u.staged_vm_id WHERE u.image_id = $1",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        if !users.is_empty() {
            let mut users: Vec<String> = users.iter().map(|r| r.get::<String, _>(0)).collect();
            users.sort();
            return Err(StoreError::InUse {
                kind: "image",
                id: id.to_owned(),
                users,
            });
        }
        let row = sqlx::query(
            "DELETE FROM images WHERE id = $1
             RETURNING id, name, kind, format, source_format, source_sha256, virtual_size,
                       stored_size, allocated_size, created_at",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| in_use_on_fk(e, "image", id))?;
        let image = found(row, "image", id, image_from_row)?;
        tx.commit().await?;
        Ok(image)
    }

    // ---------------------------------------------------------------------------------------
    // Applications

    pub async fn create_application(&self, spec: &ApplicationSpec) -> Result<Application> {
        let id = new_id();
        let now = Timestamp::now();
        let mut tx = self.write_tx().await?;
        check_artifacts(&mut tx, spec).await?;
        sqlx::query(
            "INSERT INTO applications (id, name, version, spec, revision, created_at, updated_at)
             VALUES ($1, $2, $3, $4, 1, $5, $5)",
        )
        .bind(&id)
        .bind(&spec.name)
        .bind(&spec.version)
        .bind(json(spec))
        .bind(now.0)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            exists_on_unique(e, "application", format!("{} {}", spec.name, spec.version))
        })?;
        link_artifacts(&mut tx, &id, spec).await?;
        tx.commit().await?;
        Ok(Application {
            id,
            revision: 1,
            created_at: now,
            updated_at: now,
            spec: spec.clone(),
        })
    }

    pub async fn application(&self, id: &str) -> Result<Application> {
        let row = sqlx::query(
            "SELECT id, spec, revision, created_at, updated_at FROM applications WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        found(row, "application", id, application_from_row)
    }

    pub async fn list_applications(
        &self,
        name: Option<&str>,
        request: &PageRequest,
    ) -> Result<Page<Application>> {
        let rows = sqlx::query(
            "SELECT id, spec, revision, created_at, updated_at FROM applications
             WHERE ($1 IS NULL OR name = $1) AND ($2 IS NULL OR id > $2)
             ORDER BY id LIMIT $3",
        )
        .bind(name)
        .bind(&request.after)
        .bind(request.limit() + 1)
        .fetch_all(&self.pool)
        .await?;
        let items = rows
            .iter()
            .map(application_from_row)
            .collect::<Result<_>>()?;
        Ok(page(items, request, |a: &Application| &a.id))
    }

    /// Replaces an application. With `expected`, refuses if someone else changed it first.
    pub async fn replace_application(
        &self,
        id: &str,
        spec: &ApplicationSpec,
        expected: Option<u64>,
    ) -> Result<Application> {
        let mut tx = self.write_tx().await?;
        let current = sqlx::query("SELECT revision, name, version FROM applications WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| not_found("application", id))?;
        let revision = to_u64(current.get::<i64, _>(0));
        check_revision("application", id, expected, revision)?;
        let (name, version): (String, String) = (current.get(1), current.get(2));
        if (name.as_str(), version.as_str()) != (spec.name.as_str(), spec.version.as_str()) {
            // Model VMs name their applications; renaming one would silently change them.
            let users = application_users(&mut tx, id).await?;
            if !users.is_empty() {
                return Err(StoreError::InUse {
                    kind: "application",
                    id: id.to_owned(),
                    users,
                });
            }
        }
        check_artifacts(&mut tx, spec).await?;
        let now = Timestamp::now();
        sqlx::query(
            "UPDATE applications SET name = $1, version = $2, spec = $3, revision = revision + 1,
                    updated_at = $4 WHERE id = $5",
        )
        .bind(&spec.name)
        .bind(&spec.version)
        .bind(json(spec))
        .bind(now.0)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            exists_on_unique(e, "application", format!("{} {}", spec.name, spec.version))
        })?;
        sqlx::query("DELETE FROM application_artifacts WHERE application_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        link_artifacts(&mut tx, id, spec).await?;
        tx.commit().await?;
        self.application(id).await
    }

    pub async fn delete_application(&self, id: &str) -> Result<Application> {
        let mut tx = self.write_tx().await?;
        let users = application_users(&mut tx, id).await?;
        if !users.is_empty() {
            return Err(StoreError::InUse {
                kind: "application",
                id: id.to_owned(),
                users,
            });
        }
        let row = sqlx::query(
            "DELETE FROM applications WHERE id = $1
             RETURNING id, spec, revision, created_at, updated_at",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| in_use_on_fk(e, "application", id))?;
        let app = found(row, "application", id, application_from_row)?;
        tx.commit().await?;
        Ok(app)
    }

    // ---------------------------------------------------------------------------------------
    // Model VMs

    pub async fn create_model_vm(&self, spec: &ModelVmSpec) -> Result<ModelVm> {
        let id = new_id();
        let now = Timestamp::now();
        let mut tx = self.write_tx().await?;
        let app_ids = check_model_refs(&mut tx, spec).await?;
        sqlx::query(
            "INSERT INTO model_vms (id, name, os_family, os_distro, os_version, arch, spec, revision,
                                    created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, $8)",
        )
        .bind(&id)
        .bind(&spec.name)
        .bind(spec.os.family.as_str())
        .bind(&spec.os.distro)
        .bind(&spec.os.version)
        .bind(spec.os.arch.as_str())
        .bind(json(spec))
        .bind(now.0)
        .execute(&mut *tx)
        .await
        .map_err(|e| exists_on_unique(e, "model VM", spec.name.clone()))?;
        link_model(&mut tx, &id, spec, &app_ids).await?;
        tx.commit().await?;
        Ok(ModelVm {
            id,
            revision: 1,
            created_at: now,
            updated_at: now,
            spec: spec.clone(),
        })
    }

    /// A model VM by id or by name.
    pub async fn model_vm(&self, id_or_name: &str) -> Result<ModelVm> {
        let row = sqlx::query(
            "SELECT id, spec, revision, created_at, updated_at FROM model_vms WHERE id = $1 OR name = $1",
        )
        .bind(id_or_name)
        .fetch_optional(&self.pool)
        .await?;
        found(row, "model VM", id_or_name, model_from_row)
    }

    pub async fn list_model_vms(
        &self,
        filter: &ModelVmFilter,
        request: &PageRequest,
    ) -> Result<Page<ModelVm>> {
        let (label_key, label_value) = match &filter.label {
            Some((k, v)) => (Some(k.as_str()), Some(v.as_str())),
            None => (None, None),
        };
        let rows = sqlx::query(
            "SELECT id, spec, revision, created_at, updated_at FROM model_vms m
             WHERE ($1 IS NULL OR os_family = $1) AND ($2 IS NULL OR os_distro = $2)
               AND ($3 IS NULL OR os_version = $3) AND ($4 IS NULL OR arch = $4)
               AND ($5 IS NULL OR EXISTS (SELECT 1 FROM model_vm_labels l
                      WHERE l.model_vm_id = m.id AND l.key = $5 AND l.value = $6))
               AND ($7 IS NULL OR id > $7)
             ORDER BY id LIMIT $8",
        )
        .bind(&filter.os_family)
        .bind(&filter.os_distro)
        .bind(&filter.os_version)
        .bind(&filter.arch)
        .bind(label_key)
        .bind(label_value)
        .bind(&request.after)
        .bind(request.limit() + 1)
        .fetch_all(&self.pool)
        .await?;
        let items = rows.iter().map(model_from_row).collect::<Result<_>>()?;
        Ok(page(items, request, |m: &ModelVm| &m.id))
    }

    pub async fn replace_model_vm(
        &self,
        id_or_name: &str,
        spec: &ModelVmSpec,
        expected: Option<u64>,
    ) -> Result<ModelVm> {
        let mut tx = self.write_tx().await?;
        let current = sqlx::query("SELECT id, revision FROM model_vms WHERE id = $1 OR name = $1")
            .bind(id_or_name)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| not_found("model VM", id_or_name))?;
        let id: String = current.get(0);
        check_revision("model VM", &id, expected, to_u64(current.get::<i64, _>(1)))?;
        let app_ids = check_model_refs(&mut tx, spec).await?;
        let now = Timestamp::now();
        sqlx::query(
            "UPDATE model_vms SET name = $1, os_family = $2, os_distro = $3, os_version = $4,
                    arch = $5, spec = $6, revision = revision + 1, updated_at = $7 WHERE id = $8",
        )
        .bind(&spec.name)
        .bind(spec.os.family.as_str())
        .bind(&spec.os.distro)
        .bind(&spec.os.version)
        .bind(spec.os.arch.as_str())
        .bind(json(spec))
        .bind(now.0)
        .bind(&id)
        .execute(&mut *tx)
        .await
        .map_err(|e| exists_on_unique(e, "model VM", spec.name.clone()))?;
        for unlink in [
            "DELETE FROM model_vm_images WHERE model_vm_id = $1",
            "DELETE FROM model_vm_applications WHERE model_vm_id = $1",
            "DELETE FROM model_vm_labels WHERE model_vm_id = $1",
        ] {
            sqlx::query(unlink).bind(&id).execute(&mut *tx).await?;
        }
        link_model(&mut tx, &id, spec, &app_ids).await?;
        tx.commit().await?;
        self.model_vm(&id).await
    }

    /// Deletes a model VM, unless staged VMs were made from it (they name it as their lineage).
    pub async fn delete_model_vm(&self, id_or_name: &str) -> Result<ModelVm> {
        let mut tx = self.write_tx().await?;
        let users = sqlx::query(
            "SELECT 'staged VM ' || s.name FROM staged_vms s JOIN model_vms m ON m.id = s.model_vm_id
             WHERE m.id = $1 OR m.name = $1 ORDER BY s.name",
        )
        .bind(id_or_name)
        .fetch_all(&mut *tx)
        .await?;
        if !users.is_empty() {
            return Err(StoreError::InUse {
                kind: "model VM",
                id: id_or_name.to_owned(),
                users: users.iter().map(|r| r.get::<String, _>(0)).collect(),
            });
        }
        let row = sqlx::query(
            "DELETE FROM model_vms WHERE id = $1 OR name = $1
             RETURNING id, spec, revision, created_at, updated_at",
        )
        .bind(id_or_name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| in_use_on_fk(e, "model VM", id_or_name))?;
        let model = found(row, "model VM", id_or_name, model_from_row)?;
        tx.commit().await?;
        Ok(model)
    }

    // ---------------------------------------------------------------------------------------
    // Staged VMs

    /// Records a staged VM together with its new image, in one transaction: either both are
    /// recorded or neither. Returns whether the image record is new.
    pub async fn insert_staged_vm(&self, image: &Image, staged: &StagedVm) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let added = insert_image_row(&mut *tx, image).await?;
        sqlx::query(
            "INSERT INTO staged_vms (id, name, model_vm_id, model_revision, image_id, body, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&staged.id)
        .bind(&staged.name)
        .bind(&staged.model_vm)
        .bind(to_i64(staged.model_revision))
        .bind(&staged.image)
        .bind(json(staged))
        .bind(staged.created_at.0)
        .execute(&mut *tx)
        .await
        .map_err(|e| staged_refs(e, staged))?;
        let mut disks: Vec<&str> = std::iter::once(staged.image.as_str())
            .chain(
                staged
                    .hardware
                    .disks
                    .iter()
                    .filter_map(|d| d.image.as_deref()),
            )
            .collect();
        disks.sort_unstable();
        disks.dedup();
        for image in disks {
            sqlx::query("INSERT INTO staged_vm_images (staged_vm_id, image_id) VALUES ($1, $2)")
                .bind(&staged.id)
                .bind(image)
                .execute(&mut *tx)
                .await
                .map_err(|e| staged_refs(e, staged))?;
        }
        tx.commit().await?;
        Ok(added)
    }

    /// A staged VM by id or by name.
    pub async fn staged_vm(&self, id_or_name: &str) -> Result<StagedVm> {
        let row = sqlx::query("SELECT body FROM staged_vms WHERE id = $1 OR name = $1")
            .bind(id_or_name)
            .fetch_optional(&self.pool)
            .await?;
        found(row, "staged VM", id_or_name, staged_from_row)
    }

    /// Staged VMs, optionally only those of one model VM (by id).
    pub async fn list_staged_vms(
        &self,
        model_vm: Option<&str>,
        request: &PageRequest,
    ) -> Result<Page<StagedVm>> {
        let rows = sqlx::query(
            "SELECT body FROM staged_vms
             WHERE ($1 IS NULL OR model_vm_id = $1) AND ($2 IS NULL OR id > $2)
             ORDER BY id LIMIT $3",
        )
        .bind(model_vm)
        .bind(&request.after)
        .bind(request.limit() + 1)
        .fetch_all(&self.pool)
        .await?;
        let items = rows.iter().map(staged_from_row).collect::<Result<_>>()?;
        Ok(page(items, request, |s: &StagedVm| &s.id))
    }

    pub async fn delete_staged_vm(&self, id_or_name: &str) -> Result<StagedVm> {
        let row = sqlx::query("DELETE FROM staged_vms WHERE id = $1 OR name = $1 RETURNING body")
            .bind(id_or_name)
            .fetch_optional(&self.pool)
            .await?;
        found(row, "staged VM", id_or_name, staged_from_row)
    }

    // ---------------------------------------------------------------------------------------
    // Jobs

    pub async fn create_job(&self, job: NewJob<'_>) -> Result<Job> {
        let id = new_id();
        let now = Timestamp::now();
        let steps: Vec<String> = job.steps.iter().map(|s| (*s).to_owned()).collect();
        sqlx::query(
            "INSERT INTO jobs (id, kind, state, params, steps, step, done_bytes, attempts, owner,
                               created_at, updated_at)
             VALUES ($1, $2, 'queued', $3, $4, 0, 0, 0, $5, $6, $6)",
        )
        .bind(&id)
        .bind(job.kind)
        .bind(job.params.to_string())
        .bind(json(&steps))
        .bind(job.owner)
        .bind(now.0)
        .execute(&self.pool)
        .await?;
        self.job(&id).await
    }

    pub async fn job(&self, id: &str) -> Result<Job> {
        let row = sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        found(row, "job", id, job_from_row)
    }

    pub async fn list_jobs(
        &self,
        state: Option<JobState>,
        kind: Option<&str>,
        request: &PageRequest,
    ) -> Result<Page<Job>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs
             WHERE ($1 IS NULL OR state = $1) AND ($2 IS NULL OR kind = $2) AND ($3 IS NULL OR id > $3)
             ORDER BY id LIMIT $4"
        ))
        .bind(state.map(JobState::as_str))
        .bind(kind)
        .bind(&request.after)
        .bind(request.limit() + 1)
        .fetch_all(&self.pool)
        .await?;
        let items = rows.iter().map(job_from_row).collect::<Result<_>>()?;
        Ok(page(items, request, |j: &Job| &j.id))
    }

    /// Jobs that were queued or running when the server last stopped, oldest first.
    pub async fn unfinished_jobs(&self) -> Result<Vec<Job>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE state IN ('queued', 'running') ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Marks a job running (again): one more attempt, from its first step.
    pub async fn start_job(&self, id: &str) -> Result<()> {
        sqlx::query(
            "UPDATE jobs SET state = 'running', step = 0, done_bytes = 0, total_bytes = NULL,
                    attempts = attempts + 1, updated_at = $1 WHERE id = $2",
        )
        .bind(Timestamp::now().0)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn set_job_step(
        &self,
        id: &str,
        step: usize,
        total_bytes: Option<u64>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE jobs SET step = $1, done_bytes = 0, total_bytes = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(i64::try_from(step).unwrap_or(i64::MAX))
        .bind(total_bytes.map(to_i64))
        .bind(Timestamp::now().0)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn set_job_progress(&self, id: &str, done: u64, total: Option<u64>) -> Result<()> {
        sqlx::query(
            "UPDATE jobs SET done_bytes = $1, total_bytes = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(to_i64(done))
        .bind(total.map(to_i64))
        .bind(Timestamp::now().0)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Parks a job to run again at the next start (a graceful shutdown interrupted it).
    pub async fn park_job(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE jobs SET state = 'queued', updated_at = $1 WHERE id = $2")
            .bind(Timestamp::now().0)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn finish_job(
        &self,
        id: &str,
        outcome: std::result::Result<serde_json::Value, JobError>,
    ) -> Result<Job> {
        let job = self.job(id).await?;
        let now = Timestamp::now().0;
        let (state, step, result, error) = match outcome {
            // A finished job's step points past its last one; a failed one's at the step that failed.
            Ok(result) => ("succeeded", job.steps.len(), Some(result.to_string()), None),
            Err(error) => ("failed", job.step, None, Some(json(&error))),
        };
        sqlx::query(
            "UPDATE jobs SET state = $1, step = $2, result = $3, error = $4, updated_at = $5,
                    finished_at = $5 WHERE id = $6",
        )
        .bind(state)
        .bind(i64::try_from(step).unwrap_or(i64::MAX))
        .bind(result)
        .bind(error)
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        self.job(id).await
    }

    // ---------------------------------------------------------------------------------------
    // Events

    pub async fn append_event(&self, event: NewEvent<'_>) -> Result<Event> {
        let at = Timestamp::now();
        let row = sqlx::query(
            "INSERT INTO events (at, topic, subject, kind, data) VALUES ($1, $2, $3, $4, $5) RETURNING seq",
        )
        .bind(at.0)
        .bind(event.topic)
        .bind(event.subject)
        .bind(event.kind)
        .bind(event.data.to_string())
        .fetch_one(&self.pool)
        .await?;
        Ok(Event {
            seq: row.get(0),
            at,
            topic: event.topic.to_owned(),
            subject: event.subject.to_owned(),
            kind: event.kind.to_owned(),
            data: event.data,
        })
    }

    /// The newest event's sequence number, 0 when there is none.
    pub async fn last_event_seq(&self) -> Result<i64> {
        let row = sqlx::query("SELECT MAX(seq) FROM events")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get::<Option<i64>, _>(0).unwrap_or(0))
    }

    /// The sequence number of a job's `succeeded` or `failed` event, once it has one.
    pub async fn last_terminal_event(&self, job: &str) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT MAX(seq) FROM events
             WHERE subject = $1 AND topic = 'job' AND kind IN ('succeeded', 'failed')",
        )
        .bind(job)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.get::<Option<i64>, _>(0))
    }

    /// Events after `after`, oldest first, optionally of one subject.
    pub async fn events(
        &self,
        after: i64,
        subject: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Event>> {
        let rows = sqlx::query(
            "SELECT seq, at, topic, subject, kind, data FROM events
             WHERE seq > $1 AND ($2 IS NULL OR subject = $2) ORDER BY seq LIMIT $3",
        )
        .bind(after)
        .bind(subject)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Event {
                    seq: r.get(0),
                    at: Timestamp(r.get(1)),
                    topic: r.get(2),
                    subject: r.get(3),
                    kind: r.get(4),
                    data: serde_json::from_str(r.get::<&str, _>(5))
                        .map_err(|e| StoreError::Corrupt("event", e))?,
                })
            })
            .collect()
    }
}

const IMAGE_COLUMNS_WHERE_ID: &str =
    "SELECT id, name, kind, format, source_format, source_sha256, virtual_size, stored_size,
        allocated_size, created_at FROM images WHERE id = $1";

fn json<T: Serialize>(value: &T) -> String {
    // Serialising our own types to a string cannot fail: no maps with non-string keys, no I/O.
    serde_json::to_string(value).unwrap_or_default()
}

fn not_found(kind: &'static str, id: &str) -> StoreError {
    StoreError::NotFound {
        kind,
        id: id.to_owned(),
    }
}

/// The record a query found, or `NotFound` naming what was looked for.
fn found<T>(
    row: Option<sqlx::sqlite::SqliteRow>,
    kind: &'static str,
    id: &str,
    read: fn(&sqlx::sqlite::SqliteRow) -> Result<T>,
) -> Result<T> {
    match row {
        Some(row) => read(&row),
        None => Err(not_found(kind, id)),
    }
}

fn check_revision(kind: &'static str, id: &str, expected: Option<u64>, actual: u64) -> Result<()> {
    match expected {
        Some(expected) if expected != actual => Err(StoreError::StaleRevision {
            kind,
            id: id.to_owned(),
            expected,
            actual,
        }),
        _ => Ok(()),
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn exists_on_unique(e: sqlx::Error, kind: &'static str, name: String) -> StoreError {
    if is_unique_violation(&e) {
        StoreError::AlreadyExists { kind, name }
    } else {
        e.into()
    }
}

/// Inserts an image's row unless its bytes are recorded already; whether it was added.
async fn insert_image_row<'e, E>(executor: E, image: &Image) -> Result<bool>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    Ok(sqlx::query(
        "INSERT INTO images (id, name, kind, format, source_format, source_sha256, virtual_size,
                             stored_size, allocated_size, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&image.id)
    .bind(&image.name)
    .bind(image.kind.as_str())
    .bind(image.format.as_str())
    .bind(image.source_format.as_str())
    .bind(&image.source_sha256)
    .bind(image.virtual_size.map(to_i64))
    .bind(to_i64(image.stored_size))
    .bind(to_i64(image.allocated_size))
    .bind(image.created_at.0)
    .execute(executor)
    .await?
    .rows_affected()
        == 1)
}

/// A staged VM's insert: its name taken meanwhile, or its model or an image deleted meanwhile.
fn staged_refs(e: sqlx::Error, staged: &StagedVm) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => StoreError::Gone(format!(
            "model VM {} or one of its images was deleted while it was being staged",
            staged.model_vm
        )),
        _ => exists_on_unique(e, "staged VM", staged.name.clone()),
    }
}

fn in_use_on_fk(e: sqlx::Error, kind: &'static str, id: &str) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => StoreError::InUse {
            kind,
            id: id.to_owned(),
            users: vec!["a resource created meanwhile".to_owned()],
        },
        _ => e.into(),
    }
}

type Tx<'a> = sqlx::Transaction<'a, sqlx::Sqlite>;

async fn application_users(tx: &mut Tx<'_>, id: &str) -> Result<Vec<String>> {
    let rows = sqlx::query(
        "SELECT 'model VM ' || m.name FROM model_vm_applications u
           JOIN model_vms m ON m.id = u.model_vm_id WHERE u.application_id = $1 ORDER BY m.name",
    )
    .bind(id)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
}

async fn missing_images(
    tx: &mut Tx<'_>,
    wanted: &[(String, &str, bool)],
    errors: &mut Vec<FieldError>,
) -> Result<()> {
    for (field, id, artifact) in wanted {
        let row = sqlx::query("SELECT kind FROM images WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
        match row.map(|r| r.get::<String, _>(0)) {
            None => errors.push(FieldError::new(
                field.clone(),
                format!("image {id} does not exist in the image store"),
            )),
            Some(kind) if (kind == "artifact") != *artifact => errors.push(FieldError::new(
                field.clone(),
                format!(
                    "{id} is a {kind}, not a{}",
                    if *artifact {
                        "n artifact"
                    } else {
                        " disk image"
                    }
                ),
            )),
            Some(_) => {}
        }
    }
    Ok(())
}

async fn check_artifacts(tx: &mut Tx<'_>, spec: &ApplicationSpec) -> Result<()> {
    let wanted: Vec<(String, &str, bool)> = spec
        .recipes
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match &r.method {
            slipway_core::catalog::InstallMethod::Bundle { artifact, .. } => Some((
                format!("recipes[{i}].method.artifact"),
                artifact.as_str(),
                true,
            )),
            slipway_core::catalog::InstallMethod::Packages { .. } => None,
        })
        .collect();
    let mut errors = Vec::new();
    missing_images(tx, &wanted, &mut errors).await?;
    if errors.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Dangling(errors))
    }
}

async fn link_artifacts(tx: &mut Tx<'_>, id: &str, spec: &ApplicationSpec) -> Result<()> {
    for artifact in spec.artifacts() {
        sqlx::query("INSERT INTO application_artifacts (application_id, image_id) VALUES ($1, $2)")
            .bind(id)
            .bind(artifact)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Checks that a model's images and applications exist; returns the applications' ids.
async fn check_model_refs(tx: &mut Tx<'_>, spec: &ModelVmSpec) -> Result<Vec<String>> {
    let wanted: Vec<(String, &str, bool)> = spec
        .hardware
        .disks
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            d.image
                .as_deref()
                .map(|image| (format!("hardware.disks[{i}].image"), image, false))
        })
        .collect();
    let mut errors = Vec::new();
    missing_images(tx, &wanted, &mut errors).await?;
    let mut app_ids = Vec::new();
    for (i, app) in spec.applications.iter().enumerate() {
        let row = sqlx::query("SELECT id FROM applications WHERE name = $1 AND version = $2")
            .bind(&app.name)
            .bind(&app.version)
            .fetch_optional(&mut **tx)
            .await?;
        match row {
            Some(r) => app_ids.push(r.get::<String, _>(0)),
            None => errors.push(FieldError::new(
                format!("applications[{i}]"),
                format!(
                    "application {} {} is not in the catalog",
                    app.name, app.version
                ),
            )),
        }
    }
    if errors.is_empty() {
        Ok(app_ids)
    } else {
        Err(StoreError::Dangling(errors))
    }
}

async fn link_model(
    tx: &mut Tx<'_>,
    id: &str,
    spec: &ModelVmSpec,
    app_ids: &[String],
) -> Result<()> {
    for image in spec.images() {
        sqlx::query("INSERT INTO model_vm_images (model_vm_id, image_id) VALUES ($1, $2)")
            .bind(id)
            .bind(image)
            .execute(&mut **tx)
            .await?;
    }
    for app in app_ids {
        sqlx::query(
            "INSERT INTO model_vm_applications (model_vm_id, application_id) VALUES ($1, $2)
             ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(app)
        .execute(&mut **tx)
        .await?;
    }
    for (key, value) in &spec.labels {
        sqlx::query("INSERT INTO model_vm_labels (model_vm_id, key, value) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(key)
            .bind(value)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

fn token_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<Token> {
    let role: String = r.get(2);
    Ok(Token {
        id: r.get(0),
        name: r.get(1),
        // The CHECK constraint keeps the column to the three names.
        role: Role::parse(&role).unwrap_or(Role::Requester),
        created_at: Timestamp(r.get(3)),
        revoked_at: r.get::<Option<i64>, _>(4).map(Timestamp),
    })
}

fn image_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<Image> {
    let kind: String = r.get(2);
    let format = |s: String| ImageFormat::parse(&s).unwrap_or(ImageFormat::Blob);
    Ok(Image {
        id: r.get(0),
        name: r.get(1),
        kind: if kind == "artifact" {
            ImageKind::Artifact
        } else {
            ImageKind::Disk
        },
        format: format(r.get(3)),
        source_format: format(r.get(4)),
        source_sha256: r.get(5),
        virtual_size: r.get::<Option<i64>, _>(6).map(to_u64),
        stored_size: to_u64(r.get(7)),
        allocated_size: to_u64(r.get(8)),
        created_at: Timestamp(r.get(9)),
    })
}

/// The columns every catalog resource shares: id, spec (JSON), revision, created, updated.
struct CatalogRow<S> {
    id: String,
    spec: S,
    revision: u64,
    created_at: Timestamp,
    updated_at: Timestamp,
}

fn staged_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<StagedVm> {
    serde_json::from_str(r.get::<&str, _>(0)).map_err(|e| StoreError::Corrupt("staged VM", e))
}

fn catalog_row<S: serde::de::DeserializeOwned>(
    r: &sqlx::sqlite::SqliteRow,
    kind: &'static str,
) -> Result<CatalogRow<S>> {
    Ok(CatalogRow {
        id: r.get(0),
        spec: serde_json::from_str(r.get::<&str, _>(1))
            .map_err(|e| StoreError::Corrupt(kind, e))?,
        revision: to_u64(r.get(2)),
        created_at: Timestamp(r.get(3)),
        updated_at: Timestamp(r.get(4)),
    })
}

fn application_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<Application> {
    let row = catalog_row(r, "application")?;
    Ok(Application {
        id: row.id,
        spec: row.spec,
        revision: row.revision,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

fn model_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<ModelVm> {
    let row = catalog_row(r, "model VM")?;
    Ok(ModelVm {
        id: row.id,
        spec: row.spec,
        revision: row.revision,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

fn job_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<Job> {
    let corrupt = |e| StoreError::Corrupt("job", e);
    let state: String = r.get(2);
    Ok(Job {
        id: r.get(0),
        kind: r.get(1),
        state: JobState::parse(&state).unwrap_or(JobState::Failed),
        params: serde_json::from_str(r.get::<&str, _>(3)).map_err(corrupt)?,
        steps: serde_json::from_str(r.get::<&str, _>(4)).map_err(corrupt)?,
        step: usize::try_from(r.get::<i64, _>(5)).unwrap_or(0),
        done_bytes: to_u64(r.get(6)),
        total_bytes: r.get::<Option<i64>, _>(7).map(to_u64),
        result: r
            .get::<Option<&str>, _>(8)
            .map(serde_json::from_str)
            .transpose()
            .map_err(corrupt)?,
        error: r
            .get::<Option<&str>, _>(9)
            .map(serde_json::from_str)
            .transpose()
            .map_err(corrupt)?,
        attempts: u32::try_from(r.get::<i64, _>(10)).unwrap_or(0),
        created_at: Timestamp(r.get(11)),
        updated_at: Timestamp(r.get(12)),
        finished_at: r.get::<Option<i64>, _>(13).map(Timestamp),
    })
}
