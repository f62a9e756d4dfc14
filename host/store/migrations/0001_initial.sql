-- Slipway's state. Kept to SQL that SQLite and PostgreSQL both speak: TEXT ids, BIGINT unix
-- milliseconds, JSON documents as TEXT, foreign keys that refuse to orphan a row. The one
-- difference, the events sequence, is an INTEGER PRIMARY KEY here and an identity column there.

CREATE TABLE tokens (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'requester')),
    secret_sha256 TEXT NOT NULL UNIQUE,
    created_at    BIGINT NOT NULL,
    revoked_at    BIGINT
);

CREATE TABLE images (
    id             TEXT PRIMARY KEY,          -- sha256 of the stored bytes
    name           TEXT NOT NULL,
    kind           TEXT NOT NULL CHECK (kind IN ('disk', 'artifact')),
    format         TEXT NOT NULL,             -- stored format: qcow2 for disks, blob for artifacts
    source_format  TEXT NOT NULL,             -- what was uploaded or imported
    source_sha256  TEXT,                      -- digest of the bytes as received, when known
    virtual_size   BIGINT,                    -- bytes the guest sees (disks)
    stored_size    BIGINT NOT NULL,           -- bytes of the stored file
    allocated_size BIGINT NOT NULL,           -- bytes the stored file occupies on disk
    created_at     BIGINT NOT NULL
);

CREATE TABLE applications (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    version     TEXT NOT NULL,
    spec        TEXT NOT NULL,
    revision    BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    UNIQUE (name, version)
);

CREATE TABLE application_artifacts (
    application_id TEXT NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    image_id       TEXT NOT NULL REFERENCES images (id) ON DELETE RESTRICT,
    PRIMARY KEY (application_id, image_id)
);

CREATE TABLE model_vms (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    os_family   TEXT NOT NULL,
    os_distro   TEXT NOT NULL,
    os_version  TEXT NOT NULL,
    arch        TEXT NOT NULL,
    spec        TEXT NOT NULL,
    revision    BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX model_vms_os ON model_vms (os_family, os_distro, os_version);

CREATE TABLE model_vm_images (
    model_vm_id TEXT NOT NULL REFERENCES model_vms (id) ON DELETE CASCADE,
    image_id    TEXT NOT NULL REFERENCES images (id) ON DELETE RESTRICT,
    PRIMARY KEY (model_vm_id, image_id)
);
CREATE INDEX model_vm_images_image ON model_vm_images (image_id);

CREATE TABLE model_vm_applications (
    model_vm_id    TEXT NOT NULL REFERENCES model_vms (id) ON DELETE CASCADE,
    application_id TEXT NOT NULL REFERENCES applications (id) ON DELETE RESTRICT,
    PRIMARY KEY (model_vm_id, application_id)
);
CREATE INDEX model_vm_applications_app ON model_vm_applications (application_id);

CREATE TABLE model_vm_labels (
    model_vm_id TEXT NOT NULL REFERENCES model_vms (id) ON DELETE CASCADE,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (model_vm_id, key)
);
CREATE INDEX model_vm_labels_kv ON model_vm_labels (key, value);

CREATE TABLE jobs (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
    params       TEXT NOT NULL,
    steps        TEXT NOT NULL,               -- JSON list of step names, in order
    step         BIGINT NOT NULL,             -- index of the current (or failed) step
    done_bytes   BIGINT NOT NULL,
    total_bytes  BIGINT,
    result       TEXT,
    error        TEXT,
    attempts     BIGINT NOT NULL,
    owner        TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    finished_at  BIGINT
);
CREATE INDEX jobs_state ON jobs (state);

CREATE TABLE events (
    seq      INTEGER PRIMARY KEY,
    at       BIGINT NOT NULL,
    topic    TEXT NOT NULL,                   -- job, image, application, model_vm, token
    subject  TEXT NOT NULL,                   -- the id of the resource
    kind     TEXT NOT NULL,
    data     TEXT NOT NULL
);
CREATE INDEX events_subject ON events (subject, seq);
