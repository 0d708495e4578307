-- Invites can be revoked: by an admin, or because their creator was removed or demoted.
ALTER TABLE invites ADD COLUMN revoked_at BIGINT;
-- A token made with another token is its child: it expires no later than its parent and is
-- revoked with it.
ALTER TABLE api_tokens ADD COLUMN parent_id TEXT;
