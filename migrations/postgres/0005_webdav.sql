-- contextfs metadata schema for PostgreSQL, version 5: WebDAV.
--
-- Write locks, shared by every instance on this database (a LOCK through
-- one instance makes a write without its token through another 423):
-- one row per lock on a project path ('' is the project's root), expiring
-- at `expires_at` (Unix milliseconds). Dead properties that clients set
-- with PROPPATCH, per node, so they follow a MOVE (the node keeps its id).

CREATE TABLE dav_locks (
    token text PRIMARY KEY,
    project_id bigint NOT NULL,
    path text NOT NULL,
    principal text,
    owner_xml text,
    deep boolean NOT NULL,
    shared boolean NOT NULL,
    timeout_secs bigint NOT NULL,
    expires_at bigint NOT NULL
);
CREATE INDEX dav_locks_project ON dav_locks (project_id, expires_at);
CREATE TABLE dav_props (
    node_id bigint NOT NULL,
    namespace text NOT NULL,
    name text NOT NULL,
    prefix text,
    xml bytea NOT NULL,
    PRIMARY KEY (node_id, namespace, name)
);
