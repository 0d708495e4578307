-- A batch: a large input cut into pieces of a fixed number of items, which run as ordinary
-- jobs (one job covers consecutive pieces) on every device that can take them. Its price is
-- reserved when it starts; a piece is paid for once, to the owner of the device whose run
-- won it, and what was not spent is refunded when the batch ends.
CREATE TABLE batches (
    id               TEXT PRIMARY KEY,
    network_id       TEXT NOT NULL REFERENCES networks(id),
    requester_id     TEXT NOT NULL REFERENCES people(id),
    workload_hash    TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('uploading', 'running', 'done', 'cancelled', 'failed')),
    items            BIGINT NOT NULL DEFAULT 0,
    pieces           BIGINT NOT NULL DEFAULT 0,
    piece_price      BIGINT NOT NULL,
    reserved         BIGINT NOT NULL DEFAULT 0,
    paid             BIGINT NOT NULL DEFAULT 0,
    tokens           BIGINT NOT NULL DEFAULT 0,
    dimensions       BIGINT,
    error            TEXT,
    idempotency_key  TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    finished_at      BIGINT,
    UNIQUE (network_id, requester_id, idempotency_key)
);
CREATE INDEX batches_state ON batches (state);

-- A piece's input (a JSON array of its texts) and, once a run won it, its result (the
-- vectors, little-endian f32, one after another).
CREATE TABLE batch_pieces (
    batch_id    TEXT NOT NULL REFERENCES batches(id),
    piece       BIGINT NOT NULL,
    items       BIGINT NOT NULL,
    input       BYTEA NOT NULL,
    winner_job  TEXT,
    result      BYTEA,
    PRIMARY KEY (batch_id, piece)
);

-- A run: one job covering pieces first_piece .. first_piece + pieces on one device. A
-- duplicate runs the same pieces as a slower run; the first valid result wins. exec_us is
-- the won run's execution time from its receipt (the device's speed).
CREATE TABLE batch_runs (
    job_id       TEXT PRIMARY KEY REFERENCES jobs(id),
    batch_id     TEXT NOT NULL REFERENCES batches(id),
    first_piece  BIGINT NOT NULL,
    pieces       BIGINT NOT NULL,
    items        BIGINT NOT NULL,
    device_id    TEXT NOT NULL REFERENCES devices(id),
    duplicate    BIGINT NOT NULL DEFAULT 0,
    state        TEXT NOT NULL CHECK (state IN ('running', 'won', 'lost', 'failed')),
    started_at   BIGINT NOT NULL,
    finished_at  BIGINT,
    exec_us      BIGINT,
    error        TEXT
);
CREATE INDEX batch_runs_batch ON batch_runs (batch_id, state);

-- A job that only one device may run (a batch's run, sized for that device).
ALTER TABLE jobs ADD COLUMN only_device TEXT;
