-- The devices that already had a go at a job (or that it should avoid), one row each, instead
-- of the comma-separated `jobs.tried_devices`. The scheduler tries them last.
CREATE TABLE job_tries (
    job_id     TEXT NOT NULL REFERENCES jobs(id),
    device_id  TEXT NOT NULL,
    tried_at   BIGINT NOT NULL,
    PRIMARY KEY (job_id, device_id)
);

-- 'dev_a,dev_b,' → one row per id.
INSERT INTO job_tries (job_id, device_id, tried_at)
SELECT DISTINCT id, device_id, 0
FROM jobs, unnest(string_to_array(tried_devices, ',')) AS device_id
WHERE device_id <> ''
ON CONFLICT DO NOTHING;

ALTER TABLE jobs DROP COLUMN tried_devices;
