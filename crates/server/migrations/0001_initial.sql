-- Nodes the appliance has seen, keyed by the MAC of the NIC they boot from.
CREATE TABLE nodes (
    mac TEXT PRIMARY KEY NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('discovered', 'provisioning', 'provisioned')),
    hostname TEXT,
    -- metalcast_proto::Hardware as JSON, set when the agent registers.
    hardware TEXT,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL
);

-- Every boot step of every MAC. No foreign key: DHCP and TFTP steps happen before the
-- node exists (it is created when iPXE fetches its script).
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    mac TEXT NOT NULL,
    phase TEXT NOT NULL,
    level TEXT NOT NULL CHECK (level IN ('info', 'warn', 'error')),
    message TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE INDEX events_by_mac ON events (mac, id);

-- DHCP leases, written by the lease writer and handed back to the DHCP server at start.
CREATE TABLE leases (
    mac TEXT PRIMARY KEY NOT NULL,
    ip TEXT NOT NULL UNIQUE,
    expires_unix INTEGER NOT NULL,
    hostname TEXT
);

-- Tokens are stored as BLAKE3 hashes (32 bytes), never in clear text.
CREATE TABLE admin_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    hash BLOB NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL
);

-- One per-boot token per node; a new boot replaces it.
CREATE TABLE node_tokens (
    mac TEXT PRIMARY KEY NOT NULL,
    hash BLOB NOT NULL UNIQUE,
    issued_ms INTEGER NOT NULL
);
