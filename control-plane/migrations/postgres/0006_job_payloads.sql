-- Payloads belong to the job they were uploaded for: a hash alone no longer finds them, so a
-- receipt that merely names another job's hashes reads nothing.
CREATE TABLE job_payloads (
    job_id      TEXT NOT NULL REFERENCES jobs(id),
    hash        TEXT NOT NULL,
    bytes       BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (job_id, hash)
);

-- Each stored payload goes to the checked jobs whose own record names it: input, original
-- output (from the receipt), the check's output or the verified result.
INSERT INTO job_payloads (job_id, hash, bytes, created_at)
SELECT DISTINCT c.job_id, p.hash, p.bytes, p.created_at
FROM checks c
JOIN jobs j ON j.id = c.job_id
JOIN payloads p ON p.hash = j.input_hash
    OR p.hash = c.check_output
    OR p.hash = c.verified_output
    OR j.receipt LIKE '%"output":"' || p.hash || '"%';

DROP TABLE payloads;
