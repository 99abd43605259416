-- contextfs metadata schema for PostgreSQL, version 4: operations.
--
-- Retention policies per project; when a project last uploaded each blob
-- (`used_at`, Unix milliseconds; NULL for uploads before this migration:
-- garbage collection then goes by the blob's own upload time); indexes by
-- hash, so garbage collection can ask whether anything still refers to a
-- blob. Creating the index on versions reads the whole table once.

ALTER TABLE project_blobs ADD COLUMN used_at bigint;
CREATE INDEX project_blobs_hash ON project_blobs (hash);
CREATE INDEX versions_hash ON versions (hash);
CREATE TABLE retention (
    project_id bigint PRIMARY KEY,
    keep_days bigint,
    keep_versions bigint
);
