-- contextfs metadata schema for PostgreSQL, version 2: file times.
--
-- A version carries the mtime and atime its writer set, in nanoseconds since
-- the Unix epoch. NULL (every version written before this migration, and a
-- commit that names no time) means the commit time, `created_at`.

ALTER TABLE versions ADD COLUMN mtime bigint, ADD COLUMN atime bigint;
