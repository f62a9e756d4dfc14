-- Staged VMs: model VMs made ready to deploy (identity stripped, first-boot software added),
-- each with its new image. The model and the images stay while a staged VM names them.
CREATE TABLE staged_vms (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    model_vm_id     TEXT NOT NULL REFERENCES model_vms (id) ON DELETE RESTRICT,
    model_revision  BIGINT NOT NULL,
    image_id        TEXT NOT NULL REFERENCES images (id) ON DELETE RESTRICT,
    body            TEXT NOT NULL,
    created_at      BIGINT NOT NULL
);
CREATE INDEX staged_vms_model ON staged_vms (model_vm_id);

-- Every disk image a staged VM uses (the staged one and the model's other disks).
CREATE TABLE staged_vm_images (
    staged_vm_id  TEXT NOT NULL REFERENCES staged_vms (id) ON DELETE CASCADE,
    image_id      TEXT NOT NULL REFERENCES images (id) ON DELETE RESTRICT,
    PRIMARY KEY (staged_vm_id, image_id)
);
CREATE INDEX staged_vm_images_image ON staged_vm_images (image_id);
