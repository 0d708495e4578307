-- Verification: VRF-chosen re-execution, trust and quarantine, ringers.

-- Each device's check record (see mesh_proto::verification::CheckRecord); devices.trust is
-- derived from it. A quarantined device gets no more jobs.
ALTER TABLE devices ADD COLUMN checks_passed BIGINT NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN checks_failed BIGINT NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN consecutive_passed BIGINT NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN quarantined_at BIGINT;

-- A requester's job ('job'), or the control plane re-executing another job ('check', then a
-- third device's 'tiebreak' when the first two disagree). verifies: the job re-executed.
ALTER TABLE jobs ADD COLUMN purpose TEXT NOT NULL DEFAULT 'job' CHECK (purpose IN ('job', 'check', 'tiebreak'));
ALTER TABLE jobs ADD COLUMN verifies TEXT;

-- The VRF decision for every settled job, and the check it led to.
CREATE TABLE checks (
    job_id           TEXT PRIMARY KEY REFERENCES jobs(id),
    network_id       TEXT NOT NULL REFERENCES networks(id),
    executor_id      TEXT NOT NULL REFERENCES devices(id),
    rate_ppm         BIGINT NOT NULL,
    receipt_hash     TEXT NOT NULL,
    proof            TEXT NOT NULL,
    vrf_output       TEXT NOT NULL,
    selected         BIGINT NOT NULL CHECK (selected IN (0, 1)),
    -- not_selected; selected (waiting for the payload or a device); running; disputed (the
    -- first re-execution disagreed, a tie-break is due); passed; failed; inconclusive;
    -- unverifiable (no payload or no device in time: nobody is penalised).
    state            TEXT NOT NULL CHECK (state IN ('not_selected', 'selected', 'running', 'disputed', 'passed', 'failed', 'inconclusive', 'unverifiable')),
    reason           TEXT NOT NULL DEFAULT 'vrf',
    check_job        TEXT,
    check_output     TEXT,
    tiebreak_job     TEXT,
    verified_output  TEXT,
    detail           TEXT,
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE INDEX checks_state ON checks (state, next_attempt_at);

-- One verdict per (job, device): a device's record changes once per job, however often a
-- check is retried.
CREATE TABLE check_verdicts (
    job_id      TEXT NOT NULL REFERENCES jobs(id),
    device_id   TEXT NOT NULL REFERENCES devices(id),
    passed      BIGINT NOT NULL CHECK (passed IN (0, 1)),
    reason      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (job_id, device_id)
);

-- Inputs and outputs of checked jobs, by BLAKE3 (kept for re-execution and for the requester).
CREATE TABLE payloads (
    hash        TEXT PRIMARY KEY,
    bytes       BLOB NOT NULL,
    created_at  BIGINT NOT NULL
);

-- Ringers: items of a requester's own jobs whose answers a passed check confirmed (two
-- devices of different owners agreed), mixed into that requester's later batched jobs.
CREATE TABLE ringers (
    id             TEXT PRIMARY KEY,
    network_id     TEXT NOT NULL REFERENCES networks(id),
    workload_hash  TEXT NOT NULL,
    requester_id   TEXT NOT NULL REFERENCES people(id),
    item           TEXT NOT NULL,
    answer         TEXT NOT NULL,
    source_job     TEXT NOT NULL,
    uses           BIGINT NOT NULL DEFAULT 0,
    created_at     BIGINT NOT NULL,
    UNIQUE (network_id, workload_hash, requester_id, item)
);
CREATE INDEX ringers_pool ON ringers (network_id, workload_hash, requester_id, uses);

-- Devices that have seen a ringer's text (ran its source job, checked it, or got it as a
-- ringer): a ringer is never shown to the same device twice.
CREATE TABLE ringer_seen (
    ringer_id  TEXT NOT NULL REFERENCES ringers(id),
    device_id  TEXT NOT NULL,
    PRIMARY KEY (ringer_id, device_id)
);
