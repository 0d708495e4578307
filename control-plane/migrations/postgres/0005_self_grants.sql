-- Whether a network's admins may grant credits to themselves (off unless the owner says so).
ALTER TABLE networks ADD COLUMN admins_grant_themselves BIGINT NOT NULL DEFAULT 0;
