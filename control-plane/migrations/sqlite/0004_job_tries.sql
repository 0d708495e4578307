-- The devices that already had a go at a job (or that it should avoid), one row each, instead
-- of the comma-separated `jobs.tried_devices`. The scheduler tries them last.
CREATE TABLE job_tries (
    job_id     TEXT NOT NULL REFERENCES jobs(id),
    device_id  TEXT NOT NULL,
    tried_at   BIGINT NOT NULL,
    PRIMARY KEY (job_id, device_id)
);

-- 'dev_a,dev_b,' → one row per id.
WITH RECURSIVE split(job_id, device_id, rest) AS (
    SELECT id, '', tried_devices FROM jobs WHERE tried_devices <> ''
    UNION ALL
    SELECT job_id, substr(rest, 1, instr(rest, ',') - 1), substr(rest, instr(rest, ',') + 1)
    FROM split WHERE instr(rest, ',') > 0
)
INSERT OR IGNORE INTO job_tries (job_id, device_id, tried_at)
SELECT job_id, device_id, 0 FROM split WHERE device_id <> '';

ALTER TABLE jobs DROP COLUMN tried_devices;
