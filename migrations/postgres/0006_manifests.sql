-- contextfs metadata schema for PostgreSQL, version 6: chunked content.
--
-- A file of at least 16 MiB is stored as content-defined chunks (each an
-- ordinary blob named by its own hash) and a manifest: the whole content's
-- hash and size and the chunk list, 40 bytes a chunk (the blake3 hash, then
-- the size as a big-endian u64). `manifest_chunks` lists each chunk of each
-- manifest once, so garbage collection keeps a chunk while any manifest
-- holding it exists.

CREATE TABLE manifests (
    hash text PRIMARY KEY,
    size bigint NOT NULL,
    chunks bytea NOT NULL,
    created_at bigint NOT NULL
);
CREATE TABLE manifest_chunks (
    chunk text NOT NULL,
    manifest text NOT NULL,
    PRIMARY KEY (chunk, manifest)
);
CREATE INDEX manifest_chunks_manifest ON manifest_chunks (manifest);
