-- contextfs metadata schema for PostgreSQL, version 3: paths longer than a
-- B-tree entry.
--
-- A B-tree index entry holds at most about 2,700 bytes, so the path indexes
-- of version 1 refused inserting a node whose path is longer than that (and
-- does not compress), though the service accepts paths up to
-- MAX_PATH_BYTES. Now the one-live-node-per-path rule is checked on an MD5
-- of the path, and lookups and prefix ranges use an index on the path's
-- first 512 characters (at most 2,048 bytes); queries compare that prefix
-- and then the whole path.

DROP INDEX nodes_live_path;
DROP INDEX nodes_any_path;
CREATE UNIQUE INDEX nodes_live_path ON nodes (project_id, md5(path)) WHERE NOT deleted;
CREATE INDEX nodes_any_path ON nodes (project_id, left(path, 512), deleted_at);
