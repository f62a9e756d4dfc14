-- Deployed VMs. The body is the API's record; the columns are what is looked up or constrained.
-- A seed token is kept as its sha256 only; MAC addresses are unique across the whole inventory.
CREATE TABLE vms (
    id                 TEXT PRIMARY KEY,
    deployment_id      TEXT NOT NULL,
    host_id            TEXT NOT NULL,
    phase              TEXT NOT NULL,
    seed_token_sha256  TEXT NOT NULL UNIQUE,
    owner              TEXT NOT NULL,
    body               TEXT NOT NULL,
    created_at         BIGINT NOT NULL
);
CREATE INDEX vms_deployment ON vms (deployment_id);
CREATE INDEX vms_host ON vms (host_id);

CREATE TABLE vm_macs (
    mac    TEXT PRIMARY KEY,
    vm_id  TEXT NOT NULL REFERENCES vms (id) ON DELETE CASCADE
);
