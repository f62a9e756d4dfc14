-- Hosts: agents that joined with a join token, their last report, and what placement claimed on
-- them. A claim is checked against the host's capacity in the same statement that records it, so
-- concurrent placements can never over-commit a host.
CREATE TABLE join_tokens (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    secret_sha256  TEXT NOT NULL UNIQUE,
    labels         TEXT NOT NULL,
    uses_left      BIGINT,
    expires_at     BIGINT,
    created_at     BIGINT NOT NULL,
    revoked_at     BIGINT
);

CREATE TABLE hosts (
    id                   TEXT PRIMARY KEY,
    name                 TEXT NOT NULL UNIQUE,
    agent_id             TEXT NOT NULL UNIQUE,
    credential_sha256    TEXT NOT NULL UNIQUE,
    agent_url            TEXT NOT NULL,
    agent_secret         TEXT NOT NULL,
    join_token_id        TEXT NOT NULL REFERENCES join_tokens (id) ON DELETE RESTRICT,
    mode                 TEXT NOT NULL DEFAULT 'active',
    report               TEXT NOT NULL,
    capacity_vcpus       BIGINT NOT NULL,
    capacity_memory_mib  BIGINT NOT NULL,
    capacity_disk_mib    BIGINT NOT NULL,
    claimed_vcpus        BIGINT NOT NULL DEFAULT 0,
    claimed_memory_mib   BIGINT NOT NULL DEFAULT 0,
    claimed_disk_mib     BIGINT NOT NULL DEFAULT 0,
    heartbeat_seq        BIGINT NOT NULL DEFAULT 0,
    last_heartbeat       BIGINT NOT NULL,
    joined_at            BIGINT NOT NULL
);

CREATE TABLE claims (
    id                   TEXT PRIMARY KEY,
    host_id              TEXT NOT NULL REFERENCES hosts (id) ON DELETE RESTRICT,
    vcpus                BIGINT NOT NULL,
    memory_mib           BIGINT NOT NULL,
    disk_mib             BIGINT NOT NULL,
    anti_affinity_group  TEXT,
    affinity_group       TEXT,
    state                TEXT NOT NULL,
    expires_at           BIGINT,
    owner                TEXT NOT NULL,
    purpose              TEXT,
    created_at           BIGINT NOT NULL
);
CREATE INDEX claims_host ON claims (host_id);
CREATE INDEX claims_expiry ON claims (expires_at);

-- Server-wide settings edited through the API (the placement pipeline), with revisions.
CREATE TABLE settings (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    revision    BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
