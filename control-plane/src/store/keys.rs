//! The control plane's Ed25519 signing key and its VRF key. They live in the database, so
//! every control-plane process sharing a database signs and selects with the same keys.

use super::{Db, now_ms};
use mesh_proto::SigningKey;
use mesh_proto::vrf::VrfSecretKey;

const KEY_NAME: &str = "control-plane";
const VRF_KEY_NAME: &str = "vrf";

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

/// Load the VRF key (ECVRF-EDWARDS25519-SHA512-TAI; a 32-byte seed stored as hex), creating it
/// on first start like [`load_or_create`].
pub async fn load_or_create_vrf(db: &Db) -> Result<VrfSecretKey, sqlx::Error> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).expect("the OS random number generator works");
    let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    sqlx::query("INSERT INTO server_keys (name, secret, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING")
        .bind(VRF_KEY_NAME)
        .bind(hex)
        .bind(now_ms())
        .execute(&db.pool)
        .await?;
    let secret: String = sqlx::query_scalar("SELECT secret FROM server_keys WHERE name = $1")
        .bind(VRF_KEY_NAME)
        .fetch_one(&db.pool)
        .await?;
    let bad = || sqlx::Error::Decode("the stored VRF seed is not 64 hex digits".into());
    if secret.len() != 64 || !secret.is_ascii() {
        return Err(bad());
    }
    for (i, byte) in seed.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&secret[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(VrfSecretKey::from_seed(seed))
}
