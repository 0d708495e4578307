//! `accounts`, `ledger_transfers` and `ledger_entries`: the only code that reads or writes them.
//! The rules (what sums to zero, which account may go how low) are the domain's ledger; these
//! are the statements it is made of, each atomic on both backends.

use super::{StoreError, Tx, parse_column};
use mesh_proto::api::LedgerEntryInfo;
use mesh_proto::{JobId, NetworkId, PersonId};
use sqlx::Row;

/// Open an account with balance 0 (a no-op when it exists). `person` is set for members'
/// accounts.
pub async fn open_account(
    tx: &mut Tx,
    id: &str,
    network: &NetworkId,
    kind: &str,
    person: Option<&PersonId>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO accounts (id, network_id, kind, person_id, balance) VALUES ($1, $2, $3, $4, 0) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(network.to_string())
    .bind(kind)
    .bind(person.map(|p| p.to_string()))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The balance of account `id`.
pub async fn balance(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    id: &str,
) -> Result<Option<i64>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT balance FROM accounts WHERE id = $1")
            .bind(id)
            .fetch_optional(db)
            .await?,
    )
}

/// A transfer as recorded: what an idempotent retry must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedTransfer {
    /// Its id.
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// The debited account.
    pub from: String,
    /// The credited account.
    pub to: String,
    /// Credits moved.
    pub amount: i64,
}

/// The transfer of `network` with this idempotency key, if one was made.
pub async fn transfer_by_key(
    tx: &mut Tx,
    network: &NetworkId,
    key: &str,
) -> Result<Option<RecordedTransfer>, StoreError> {
    let Some(row) = sqlx::query(
        "SELECT t.id, t.kind, \
         (SELECT account_id FROM ledger_entries e WHERE e.transfer_id = t.id AND e.amount < 0) AS from_account, \
         (SELECT account_id FROM ledger_entries e WHERE e.transfer_id = t.id AND e.amount > 0) AS to_account, \
         (SELECT amount FROM ledger_entries e WHERE e.transfer_id = t.id AND e.amount > 0) AS amount \
         FROM ledger_transfers t WHERE t.network_id = $1 AND t.idempotency_key = $2",
    )
    .bind(network.to_string())
    .bind(key)
    .fetch_optional(&mut **tx)
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(RecordedTransfer {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        from: row.try_get("from_account")?,
        to: row.try_get("to_account")?,
        amount: row.try_get("amount")?,
    }))
}

/// Take `amount` from account `id`, unless that would take it below `floor` (no floor: always).
/// Returns whether it was taken.
pub async fn debit(
    tx: &mut Tx,
    id: &str,
    amount: i64,
    floor: Option<i64>,
) -> Result<bool, StoreError> {
    let changed = match floor {
        None => sqlx::query("UPDATE accounts SET balance = balance - $1 WHERE id = $2")
            .bind(amount)
            .bind(id)
            .execute(&mut **tx)
            .await?
            .rows_affected(),
        Some(floor) => sqlx::query(
            "UPDATE accounts SET balance = balance - $1 WHERE id = $2 AND balance - $1 >= $3",
        )
        .bind(amount)
        .bind(id)
        .bind(floor)
        .execute(&mut **tx)
        .await?
        .rows_affected(),
    };
    Ok(changed == 1)
}

/// Add `amount` to account `id`; returns whether the account exists.
pub async fn credit(tx: &mut Tx, id: &str, amount: i64) -> Result<bool, StoreError> {
    let changed = sqlx::query("UPDATE accounts SET balance = balance + $1 WHERE id = $2")
        .bind(amount)
        .bind(id)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    Ok(changed == 1)
}

/// A transfer's record and its two entries.
#[derive(Debug, Clone)]
pub struct TransferRecord<'a> {
    /// Its id.
    pub id: &'a str,
    /// Its network.
    pub network: &'a NetworkId,
    /// Unique per network.
    pub idempotency_key: &'a str,
    /// Kind (`grant`, `job_reserve`, ...).
    pub kind: &'a str,
    /// Description.
    pub memo: &'a str,
    /// The job it is for.
    pub job: Option<JobId>,
    /// The debited account.
    pub from: &'a str,
    /// The credited account.
    pub to: &'a str,
    /// Credits moved.
    pub amount: i64,
}

/// Write a transfer and its balanced entries (−amount, +amount). A second transfer with the
/// same key in the network is [`StoreError::Duplicate`] (the unique constraint settles races
/// between processes: the loser's transaction is rolled back whole).
pub async fn record_transfer(
    tx: &mut Tx,
    t: &TransferRecord<'_>,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO ledger_transfers (id, network_id, idempotency_key, kind, memo, job_id, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(t.id)
    .bind(t.network.to_string())
    .bind(t.idempotency_key)
    .bind(t.kind)
    .bind(t.memo)
    .bind(t.job.map(|j| j.to_string()))
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Duplicate("a transfer with this idempotency key")
        }
        _ => StoreError::Database(e),
    })?;
    for (account, amount) in [(t.from, -t.amount), (t.to, t.amount)] {
        sqlx::query("INSERT INTO ledger_entries (transfer_id, account_id, amount, created_at) VALUES ($1, $2, $3, $4)")
            .bind(t.id)
            .bind(account)
            .bind(amount)
            .bind(now)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// The newest `limit` entries of account `id`, with their transfers.
pub async fn history(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    id: &str,
    limit: i64,
) -> Result<Vec<LedgerEntryInfo>, StoreError> {
    let rows = sqlx::query(
        "SELECT t.id, t.kind, t.memo, t.job_id, e.amount, e.created_at FROM ledger_entries e \
         JOIN ledger_transfers t ON t.id = e.transfer_id WHERE e.account_id = $1 \
         ORDER BY e.created_at DESC, t.id LIMIT $2",
    )
    .bind(id)
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(LedgerEntryInfo {
                transfer: row.try_get("id")?,
                kind: row.try_get("kind")?,
                memo: row.try_get("memo")?,
                amount: row.try_get("amount")?,
                job: row
                    .try_get::<Option<String>, _>("job_id")?
                    .map(|j| parse_column("ledger_transfers.job_id", &j))
                    .transpose()?,
                created_at_ms: row.try_get("created_at")?,
            })
        })
        .collect()
}

/// The sum of every account's balance in `network`, and of every entry of its accounts.
pub async fn sums(db: &super::Db, network: &NetworkId) -> Result<(i64, i64), StoreError> {
    let balances: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(balance), 0) AS BIGINT) FROM accounts WHERE network_id = $1",
    )
    .bind(network.to_string())
    .fetch_one(&db.pool)
    .await?;
    let entries: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(e.amount), 0) AS BIGINT) FROM ledger_entries e JOIN accounts a ON a.id = e.account_id \
         WHERE a.network_id = $1",
    )
    .bind(network.to_string())
    .fetch_one(&db.pool)
    .await?;
    Ok((balances, entries))
}
