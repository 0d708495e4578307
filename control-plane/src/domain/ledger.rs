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

use crate::domain::audit::AuditAction;
use crate::domain::{DomainError, DomainResult};
use crate::state::AppState;
use crate::store::ledger as store;
use crate::store::{StoreError, Tx, networks, now_ms, random_id};
use mesh_proto::api::{GrantRequest, TransferInfo};
use mesh_proto::{JobId, NetworkId, PersonId};

/// Kind of the transfer that claws a job's credits back from a device owner who failed its
/// check. It may take the owner's balance below its floor: the credits were never theirs.
pub const CLAWBACK: &str = "job_clawback";
/// Kind of the transfer that takes an unconfirmed result's pay from the executor's owner back
/// to the network (a dispute nobody could settle).
pub const FORFEIT: &str = "job_forfeit";

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
pub async fn create_network_accounts(tx: &mut Tx, network: &NetworkId) -> DomainResult<()> {
    for (account, kind) in [(Account::Issuer, "issuer"), (Account::Escrow, "escrow")] {
        store::open_account(tx, &account.id(network), network, kind, None).await?;
    }
    Ok(())
}

/// Create a member's account (no-op if it exists).
pub async fn create_person_account(
    tx: &mut Tx,
    network: &NetworkId,
    person: &PersonId,
) -> DomainResult<()> {
    let id = Account::Person(*person).id(network);
    store::open_account(tx, &id, network, "person", Some(person)).await?;
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
pub async fn transfer(tx: &mut Tx, t: &Transfer<'_>) -> DomainResult<TransferOutcome> {
    if t.amount <= 0 {
        return Err(DomainError::bad_request("amount must be positive"));
    }
    let from = t.from.id(&t.network);
    let to = t.to.id(&t.network);
    if let Some(existing) = store::transfer_by_key(tx, &t.network, t.idempotency_key).await? {
        // A retry is the same transfer; the same key for another one is a mistake (or an
        // attempt to hide one behind a key already used), never silently ignored.
        if existing.kind != t.kind
            || existing.from != from
            || existing.to != to
            || existing.amount != t.amount
        {
            return Err(DomainError::conflict(
                "idempotency_key_reused",
                "this idempotency key was already used for a different transfer",
            ));
        }
        return Ok(TransferOutcome::Existing(existing.id));
    }
    let policy = networks::policy(&mut **tx, &t.network)
        .await?
        .ok_or_else(|| DomainError::not_found("network"))?;
    let floor = match t.kind {
        CLAWBACK => None,
        _ => floor(t.from, policy.allow_credit, policy.credit_limit),
    };
    if !store::debit(tx, &from, t.amount, floor).await? {
        return Err(DomainError::insufficient_credits(format!(
            "not enough credits for {} ({} credits)",
            t.kind, t.amount
        )));
    }
    if !store::credit(tx, &to, t.amount).await? {
        return Err(DomainError::internal(format!(
            "account {to} does not exist"
        )));
    }
    let id = random_id(|b| {
        format!(
            "xfer_{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        )
    });
    let record = store::TransferRecord {
        id: &id,
        network: &t.network,
        idempotency_key: t.idempotency_key,
        kind: t.kind,
        memo: t.memo,
        job: t.job,
        from: &from,
        to: &to,
        amount: t.amount,
    };
    store::record_transfer(tx, &record, now_ms())
        .await
        .map_err(|e| match e {
            StoreError::Duplicate(_) => DomainError::conflict(
                "concurrent_transfer",
                "a transfer with this idempotency key is being made concurrently; retry",
            ),
            e => DomainError::from(e),
        })?;
    Ok(TransferOutcome::Created(id))
}

/// Grant `request.amount` new credits to a member of `network`, as `actor` (the admin
/// `granter`): once per idempotency key, with an audit entry. A grant to oneself needs the
/// network's policy to allow it (`admins_grant_themselves`), and its audit entry says so.
pub async fn grant(
    state: &AppState,
    network: &NetworkId,
    actor: &str,
    granter: &PersonId,
    request: &GrantRequest,
) -> DomainResult<TransferInfo> {
    if request.idempotency_key.is_empty() || request.idempotency_key.len() > 200 {
        return Err(DomainError::bad_request(
            "idempotency_key must be 1-200 characters",
        ));
    }
    if request.amount <= 0 || request.amount > 1_000_000_000 {
        return Err(DomainError::bad_request(
            "amount must be between 1 and 10^9",
        ));
    }
    let member = crate::store::networks::role_of(&state.db.pool, network, &request.person).await?;
    if member.is_none() {
        return Err(DomainError::not_found("member"));
    }
    let to_self = request.person == *granter;
    if to_self
        && !networks::policy(&state.db.pool, network)
            .await?
            .ok_or_else(|| DomainError::not_found("network"))?
            .admins_grant_themselves
    {
        return Err(DomainError::forbidden(
            "this network's policy does not let admins grant credits to themselves \
             (the owner can allow it: admins_grant_themselves)",
        ));
    }
    let memo = request.memo.clone().unwrap_or_else(|| "grant".into());
    let mut tx = state.db.pool.begin().await?;
    let outcome = transfer(
        &mut tx,
        &Transfer {
            network: *network,
            idempotency_key: &format!("grant:{}", request.idempotency_key),
            kind: "grant",
            memo: &memo,
            job: None,
            from: Account::Issuer,
            to: Account::Person(request.person),
            amount: request.amount,
        },
    )
    .await?;
    if let TransferOutcome::Created(id) = &outcome {
        crate::domain::audit::record(
            &mut tx,
            Some(network),
            actor,
            AuditAction::CreditsGrant,
            &format!(
                "{} {} {id}{}",
                request.person,
                request.amount,
                if to_self { " (to themselves)" } else { "" }
            ),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(TransferInfo {
        id: outcome.id().to_string(),
        kind: "grant".into(),
        created: matches!(outcome, TransferOutcome::Created(_)),
    })
}
