-- Mesh control plane schema (SQLite). Keep in step with migrations/postgres.
-- Times are milliseconds since the Unix epoch; ids are their text forms (net_…, dev_…);
-- flags are BIGINT 0/1 (the sqlx Any driver decodes no SQLite BOOLEAN).

CREATE TABLE people (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE networks (
    id                       TEXT PRIMARY KEY,
    name                     TEXT NOT NULL,
    created_by               TEXT NOT NULL REFERENCES people(id),
    require_device_approval  BIGINT NOT NULL CHECK (require_device_approval IN (0, 1)),
    initial_grant            BIGINT NOT NULL,
    allow_credit             BIGINT NOT NULL CHECK (allow_credit IN (0, 1)),
    credit_limit             BIGINT NOT NULL,
    job_price                BIGINT NOT NULL,
    created_at               BIGINT NOT NULL
);

CREATE TABLE memberships (
    network_id  TEXT NOT NULL REFERENCES networks(id),
    person_id   TEXT NOT NULL REFERENCES people(id),
    role        TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (network_id, person_id)
);

CREATE TABLE devices (
    id                 TEXT PRIMARY KEY,
    network_id         TEXT NOT NULL REFERENCES networks(id),
    owner_id           TEXT NOT NULL REFERENCES people(id),
    name               TEXT NOT NULL,
    public_key         TEXT NOT NULL UNIQUE,
    peer_id            TEXT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'revoked')),
    capabilities       TEXT NOT NULL,
    created_at         BIGINT NOT NULL,
    approved_at        BIGINT,
    revoked_at         BIGINT,
    online             BIGINT NOT NULL DEFAULT 0 CHECK (online IN (0, 1)),
    last_seen_at       BIGINT,
    last_heartbeat_ms  BIGINT NOT NULL DEFAULT 0,
    load_running       BIGINT NOT NULL DEFAULT 0,
    load_queued        BIGINT NOT NULL DEFAULT 0,
    load_slots         BIGINT NOT NULL DEFAULT 0,
    trust              DOUBLE PRECISION NOT NULL DEFAULT 0.5
);
CREATE INDEX devices_network ON devices (network_id, status, online);

CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,
    secret_hash  TEXT NOT NULL UNIQUE,
    person_id    TEXT REFERENCES people(id),
    device_id    TEXT REFERENCES devices(id),
    label        TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    revoked_at   BIGINT,
    CHECK ((person_id IS NULL) <> (device_id IS NULL))
);

CREATE TABLE invites (
    id          TEXT PRIMARY KEY,
    network_id  TEXT NOT NULL REFERENCES networks(id),
    code_hash   TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL CHECK (kind IN ('person', 'device')),
    role        TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    created_by  TEXT NOT NULL REFERENCES people(id),
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    used_by     TEXT
);

CREATE TABLE challenges (
    challenge   TEXT PRIMARY KEY,
    expires_at  BIGINT NOT NULL
);

CREATE TABLE components (
    hash   TEXT PRIMARY KEY,
    size   BIGINT NOT NULL,
    bytes  BLOB NOT NULL
);

CREATE TABLE workloads (
    network_id    TEXT NOT NULL REFERENCES networks(id),
    hash          TEXT NOT NULL REFERENCES components(hash),
    name          TEXT NOT NULL,
    version       TEXT NOT NULL,
    metadata      TEXT NOT NULL,
    publisher_id  TEXT NOT NULL REFERENCES people(id),
    size          BIGINT NOT NULL,
    published_at  BIGINT NOT NULL,
    yanked_at     BIGINT,
    PRIMARY KEY (network_id, hash)
);
CREATE UNIQUE INDEX workloads_name_version ON workloads (network_id, name, version);

-- Account ids are deterministic: acct_<network>_issuer, acct_<network>_escrow,
-- acct_<network>_<person>.
CREATE TABLE accounts (
    id          TEXT PRIMARY KEY,
    network_id  TEXT NOT NULL REFERENCES networks(id),
    kind        TEXT NOT NULL CHECK (kind IN ('issuer', 'escrow', 'person')),
    person_id   TEXT REFERENCES people(id),
    -- Cached sum of this account's ledger entries, updated in the same transaction as them.
    balance     BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE ledger_transfers (
    id               TEXT PRIMARY KEY,
    network_id       TEXT NOT NULL REFERENCES networks(id),
    idempotency_key  TEXT NOT NULL,
    kind             TEXT NOT NULL,
    memo             TEXT NOT NULL,
    job_id           TEXT,
    created_at       BIGINT NOT NULL,
    UNIQUE (network_id, idempotency_key)
);

CREATE TABLE ledger_entries (
    transfer_id  TEXT NOT NULL REFERENCES ledger_transfers(id),
    account_id   TEXT NOT NULL REFERENCES accounts(id),
    amount       BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (transfer_id, account_id)
);
CREATE INDEX ledger_entries_account ON ledger_entries (account_id, created_at);

CREATE TABLE jobs (
    id                TEXT PRIMARY KEY,
    network_id        TEXT NOT NULL REFERENCES networks(id),
    requester_id      TEXT NOT NULL REFERENCES people(id),
    requester_device  TEXT,
    workload_hash     TEXT NOT NULL,
    input_hash        TEXT NOT NULL,
    input_size        BIGINT NOT NULL,
    price             BIGINT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('queued', 'assigned', 'running', 'done', 'failed')),
    executor_id       TEXT REFERENCES devices(id),
    attempts          BIGINT NOT NULL DEFAULT 0,
    lease_expires_at  BIGINT,
    idempotency_key   TEXT NOT NULL,
    receipt           TEXT,
    error             TEXT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    UNIQUE (network_id, requester_id, idempotency_key)
);
CREATE INDEX jobs_state ON jobs (state, lease_expires_at);
CREATE INDEX jobs_network ON jobs (network_id, created_at);

CREATE TABLE audit_log (
    id          TEXT PRIMARY KEY,
    network_id  TEXT,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    detail      TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE server_keys (
    name        TEXT PRIMARY KEY,
    secret      TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
