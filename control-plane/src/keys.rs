//! The control plane's Ed25519 signing key. It lives in the database, so every control-plane
//! process sharing a database signs with the same key.

use crate::db::{Db, now_ms};
use mesh_proto::SigningKey;

const KEY_NAME: &str = "control-plane";

/// Load the signing key, creating it on first start. Concurrent first starts agree: the first
/// insert wins and everyone reads it back.
pub async fn load_or_create(db: &Db) -> Result<SigningKey, sqlx::Error> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).expect("the OS random number generator works");
    let candidate = SigningKey::from_seed(seed);
    sqlx::query("INSERT INTO server_keys (name, secret, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING")
        .bind(KEY_NAME)
        .bind(candidate.to_multibase())
        .bind(now_ms())
        .execute(&db.pool)
        .await?;
    let secret: String = sqlx::query_scalar("SELECT secret FROM server_keys WHERE name = $1")
        .bind(KEY_NAME)
        .fetch_one(&db.pool)
        .await?;
    SigningKey::from_multibase(&secret).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}
