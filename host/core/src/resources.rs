//! Resources as the server keeps and returns them: catalog entries with their ids and revisions,
//! images in the image store, jobs and their events, API tokens.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::catalog::{ApplicationSpec, ModelVmSpec};

/// A point in time, kept as unix milliseconds and written as RFC 3339 (`2026-11-22T04:35:00.123Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        Self(i64::try_from(ms).unwrap_or(i64::MAX))
    }

    fn system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(u64::try_from(self.0).unwrap_or(0))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            humantime::format_rfc3339_millis(self.system_time())
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let time = humantime::parse_rfc3339(&text).map_err(serde::de::Error::custom)?;
        let ms = time
            .duration_since(UNIX_EPOCH)
            .map_err(serde::de::Error::custom)?
            .as_millis();
        Ok(Self(i64::try_from(ms).map_err(serde::de::Error::custom)?))
    }
}

/// What an API token may do. Each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Requests and the requester's own VMs.
    Requester,
    /// The catalog, the image store, staging, jobs and every VM.
    Operator,
    /// Plugins, hosts and tokens, and everything an operator does.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Requester => "requester",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "requester" => Some(Role::Requester),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An API token as listed; its secret is shown once, when it is created, and kept only hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Token {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Timestamp>,
}

/// What an entry of the image store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ImageKind {
    /// A disk image, stored as qcow2.
    Disk,
    /// Opaque bytes, such as an application bundle, stored as they came.
    Artifact,
}

impl ImageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageKind::Disk => "disk",
            ImageKind::Artifact => "artifact",
        }
    }
}

/// A disk image format, as detected from an image's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ImageFormat {
    Raw,
    Qcow2,
    Vmdk,
    /// An artifact: bytes with no format of their own.
    Blob,
}

impl ImageFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Vmdk => "vmdk",
            ImageFormat::Blob => "blob",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "raw" => Some(ImageFormat::Raw),
            "qcow2" => Some(ImageFormat::Qcow2),
            "vmdk" => Some(ImageFormat::Vmdk),
            "blob" => Some(ImageFormat::Blob),
            _ => None,
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An entry of the content-addressed image store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Image {
    /// The sha256 of the stored bytes, in hex.
    pub id: String,
    pub name: String,
    pub kind: ImageKind,
    /// How it is stored: qcow2 for disks, blob for artifacts.
    pub format: ImageFormat,
    /// How it arrived.
    pub source_format: ImageFormat,
    /// The sha256 of the bytes as they arrived, when they were hashed (uploads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_sha256: Option<String>,
    /// Bytes the guest sees, for disks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_size: Option<u64>,
    /// Length of the stored file.
    pub stored_size: u64,
    /// Bytes the stored file occupies on disk.
    pub allocated_size: u64,
    pub created_at: Timestamp,
}

/// An application in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Application {
    pub id: String,
    /// Increases with each change; a replacement may name the revision it was based on.
    pub revision: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    #[serde(flatten)]
    pub spec: ApplicationSpec,
}

/// A model VM in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelVm {
    pub id: String,
    pub revision: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    #[serde(flatten)]
    pub spec: ModelVmSpec,
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting to run, or parked at shutdown to resume at the next start.
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "queued" => Some(JobState::Queued),
            "running" => Some(JobState::Running),
            "succeeded" => Some(JobState::Succeeded),
            "failed" => Some(JobState::Failed),
            _ => None,
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed)
    }
}

/// Why a job failed: the step, and what went wrong in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobError {
    pub step: String,
    pub message: String,
}

/// A long operation: ordered steps, progress, and a result or the error of the step that failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Job {
    pub id: String,
    /// What the job does, e.g. `image.import`.
    pub kind: String,
    pub state: JobState,
    /// The job's input.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub params: serde_json::Value,
    pub steps: Vec<String>,
    /// The step running now, or the one that failed; equal to the number of steps once done.
    pub step: usize,
    /// Bytes done in the current step, when it moves bytes.
    pub done_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    /// How many times the job has started; more than one when it resumed after a restart.
    pub attempts: u32,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
}

/// Something that happened: a job moved, or the inventory changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    /// Increases with every event; a client resumes a stream after the last one it saw.
    pub seq: i64,
    pub at: Timestamp,
    /// `job`, `image`, `application`, `model_vm` or `token`.
    pub topic: String,
    /// The id of the resource.
    pub subject: String,
    /// e.g. `created`, `deleted`, `step_started`, `progress`, `succeeded`, `failed`.
    pub kind: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: serde_json::Value,
}

/// One page of a listing; `next` is the cursor of the following page, absent on the last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Page<T> {
    pub items: Vec<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// One change a staging step made to the guest tree, in the order it ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StageOperation {
    /// Who made it: the identity plugin (`identity-linux`) or `slipway` (first-boot wiring).
    pub by: String,
    /// A stable name, e.g. `machine-id`, `ssh-host-keys`, `first-boot`.
    pub name: String,
    /// Paths, relative to the file system's root, that were changed, created or removed.
    pub changed: Vec<String>,
    pub detail: String,
}

/// The operating system staging found in the model's image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FoundOs {
    pub family: String,
    pub distro: String,
    pub version: String,
    pub arch: String,
    /// `systemd`, `openrc`, `sysvinit`, `busybox` or `unknown`.
    pub init_system: String,
}

/// A model VM made ready to deploy: its identity stripped and first-boot software added, in a
/// new image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StagedVm {
    pub id: String,
    pub name: String,
    /// The job that made it.
    pub job: String,
    /// The model VM it was staged from, and the revision of it that was staged.
    pub model_vm: String,
    pub model_revision: u64,
    /// The new image of its boot disk.
    pub image: String,
    /// The model's hardware, its boot disk now the staged image (and at least as large); other
    /// disks as the model has them.
    pub hardware: crate::catalog::HardwareConfig,
    pub os: FoundOs,
    /// How the guest finds its seed at first boot: `cloud-init` or `slipway-firstboot`.
    pub first_boot: String,
    /// The identity plugin that stripped it, as `name@version`.
    pub plugin: String,
    /// Every change, in order.
    pub operations: Vec<StageOperation>,
    /// The applications installed in it: the model's, at the revision staged.
    #[serde(default)]
    pub applications: Vec<crate::catalog::AppRef>,
    pub created_at: Timestamp,
}
