//! The double-entry credit ledger.
//!
//! Every movement of credits is a transfer: a row in `ledger_transfers` plus balanced rows in
//! `ledger_entries` (they sum to zero), written in one transaction together with the cached
//! `accounts.balance` of each account touched. Balances never change without their entries.
//! Each network has an issuer account (the source of grants, which goes negative), an escrow
//! account (credits reserved for running jobs) and one account per member. Transfers carry an
//! idempotency key unique per network: repeating a transfer is a no-op.
//!
//! Overdraft protection is a conditional update (`... WHERE balance - amount >= floor`),
//! atomic on SQLite and PostgreSQL alike, so concurrent spends can never overdraw.

use crate::error::{ApiError, ApiResult};
use crate::store::{now_ms, random_id};
use mesh_proto::{JobId, NetworkId, PersonId};
use sqlx::{Any, Transaction};

/// Kind of the transfer that claws a job's credits back from a device owner who failed its
/// check. It may take the owner's balance below its floor: the credits were never theirs.
pub const CLAWBACK: &str = "job_clawback";

/// Kinds of account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Account {
    /// Where grants come from; may go negative without limit.
    Issuer,
    /// Credits reserved for jobs in flight.
    Escrow,
    /// A member's credits.
    Person(PersonId),
}

impl Account {
    /// The account's id in `network`.
    pub fn id(self, network: &NetworkId) -> String {
        match self {
            Account::Issuer => format!("acct_{network}_issuer"),
            Account::Escrow => format!("acct_{network}_escrow"),
            Account::Person(person) => format!("acct_{network}_{person}"),
        }
    }
}

/// Create the issuer and escrow accounts of a new network.
pub async fn create_network_accounts(
    tx: &mut Transaction<'static, Any>,
    network: &NetworkId,
) -> ApiResult<()> {
    for (account, kind) in [(Account::Issuer, "issuer"), (Account::Escrow, "escrow")] {
        sqlx::query("INSERT INTO accounts (id, network_id, kind, person_id, balance) VALUES ($1, $2, $3, NULL, 0)")
            .bind(account.id(network))
            .bind(network.to_string())
            .bind(kind)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Create a member's account (no-op if it exists).
pub async fn create_person_account(
    tx: &mut Transaction<'static, Any>,
    network: &NetworkId,
    person: &PersonId,
) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO accounts (id, network_id, kind, person_id, balance) VALUES ($1, $2, 'person', $3, 0) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(Account::Person(*person).id(network))
    .bind(network.to_string())
    .bind(person.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// One transfer of `amount` credits from one account to another.
#[derive(Debug, Clone)]
pub struct Transfer<'a> {
    /// The network.
    pub network: NetworkId,
    /// Unique per network: repeating the transfer does nothing.
    pub idempotency_key: &'a str,
    /// Kind (`grant`, `job_reserve`, ...).
    pub kind: &'a str,
    /// Description.
    pub memo: &'a str,
    /// The job it is for, if any.
    pub job: Option<JobId>,
    /// Debited account.
    pub from: Account,
    /// Credited account.
    pub to: Account,
    /// Credits (positive).
    pub amount: i64,
}

/// Whether a transfer was made now or already existed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferOutcome {
    /// Made by this call.
    Created(String),
    /// An earlier call with the same key made it.
    Existing(String),
}

impl TransferOutcome {
    /// The transfer id.
    pub fn id(&self) -> &str {
        match self {
            TransferOutcome::Created(id) | TransferOutcome::Existing(id) => id,
        }
    }
}

/// Lowest balance `account` may reach in a network with the given credit policy.
fn floor(account: Account, allow_credit: bool, credit_limit: i64) -> Option<i64> {
    match account {
        Account::Issuer => None,
        Account::Escrow => Some(0),
        Account::Person(_) if allow_credit => Some(-credit_limit.max(0)),
        Account::Person(_) => Some(0),
    }
}

/// Make a transfer inside `tx`. Fails with 402 if the debited account would go below its
/// floor; the caller's transaction must then be dropped (rolled back).
pub async fn transfer(
    tx: &mut Transaction<'static, Any>,
    t: &Transfer<'_>,
) -> ApiResult<TransferOutcome> {
    if t.amount <= 0 {
        return Err(ApiError::bad_request("amount must be positive"));
    }
    let network = t.network.to_string();
    let existing: Option<String> = sqlx::query_scalar(
        "SELECT id FROM ledger_transfers WHERE network_id = $1 AND idempotency_key = $2",
    )
    .bind(&network)
    .bind(t.idempotency_key)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(id) = existing {
        return Ok(TransferOutcome::Existing(id));
    }
    let (allow_credit, credit_limit): (i64, i64) =
        sqlx::query_as("SELECT allow_credit, credit_limit FROM networks WHERE id = $1")
            .bind(&network)
            .fetch_one(&mut **tx)
            .await?;
    let from = t.from.id(&t.network);
    let to = t.to.id(&t.network);
    let floor = match t.kind {
        CLAWBACK => None,
        _ => floor(t.from, allow_credit != 0, credit_limit),
    };
    let debited = match floor {
        None => sqlx::query("UPDATE accounts SET balance = balance - $1 WHERE id = $2")
            .bind(t.amount)
            .bind(&from)
            .execute(&mut **tx)
            .await?
            .rows_affected(),
        Some(floor) => sqlx::query(
            "UPDATE accounts SET balance = balance - $1 WHERE id = $2 AND balance - $1 >= $3",
        )
        .bind(t.amount)
        .bind(&from)
        .bind(floor)
        .execute(&mut **tx)
        .await?
        .rows_affected(),
    };
    if debited != 1 {
        return Err(ApiError::insufficient_credits(format!(
            "not enough credits for {} ({} credits)",
            t.kind, t.amount
        )));
    }
    let credited = sqlx::query("UPDATE accounts SET balance = balance + $1 WHERE id = $2")
        .bind(t.amount)
        .bind(&to)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    if credited != 1 {
        return Err(ApiError::internal(format!("account {to} does not exist")));
    }
    let id = random_id(|b| {
        format!(
            "xfer_{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        )
    });
    let now = now_ms();
    // The unique (network, idempotency_key) constraint settles races between processes: the
    // loser's transaction fails here and is rolled back whole.
    sqlx::query(
        "INSERT INTO ledger_transfers (id, network_id, idempotency_key, kind, memo, job_id, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(&network)
    .bind(t.idempotency_key)
    .bind(t.kind)
    .bind(t.memo)
    .bind(t.job.map(|j| j.to_string()))
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => ApiError::conflict(
            "concurrent_transfer",
            "a transfer with this idempotency key is being made concurrently; retry",
        ),
        _ => ApiError::from(e),
    })?;
    for (account, amount) in [(&from, -t.amount), (&to, t.amount)] {
        sqlx::query("INSERT INTO ledger_entries (transfer_id, account_id, amount, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&id)
            .bind(account)
            .bind(amount)
            .bind(now)
            .execute(&mut **tx)
            .await?;
    }
    Ok(TransferOutcome::Created(id))
}
