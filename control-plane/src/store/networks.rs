//! The `networks` table and their `memberships`: the only code that reads or writes them.

use super::{StoreError, Tx, parse_column};
use mesh_proto::api::{MemberInfo, NetworkInfo, NetworkPolicy, Role};
use mesh_proto::{NetworkId, PersonId};
use sqlx::Row;

fn role(text: String) -> Result<Role, StoreError> {
    Role::parse(&text).ok_or(StoreError::Corrupt {
        column: "memberships.role",
        value: text,
    })
}

/// Create a network with `policy`, created by `creator` (who is not a member yet).
pub async fn insert(
    tx: &mut Tx,
    network: &NetworkId,
    name: &str,
    creator: &PersonId,
    policy: &NetworkPolicy,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO networks (id, name, created_by, require_device_approval, initial_grant, allow_credit, credit_limit, \
         job_price, admins_grant_themselves, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(network.to_string())
    .bind(name)
    .bind(creator.to_string())
    .bind(i64::from(policy.require_device_approval))
    .bind(policy.initial_grant)
    .bind(i64::from(policy.allow_credit))
    .bind(policy.credit_limit)
    .bind(policy.job_price)
    .bind(i64::from(policy.admins_grant_themselves))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Replace the policy of `network`.
pub async fn set_policy(
    tx: &mut Tx,
    network: &NetworkId,
    policy: &NetworkPolicy,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE networks SET require_device_approval = $1, initial_grant = $2, allow_credit = $3, credit_limit = $4, \
         job_price = $5, admins_grant_themselves = $6 WHERE id = $7",
    )
    .bind(i64::from(policy.require_device_approval))
    .bind(policy.initial_grant)
    .bind(i64::from(policy.allow_credit))
    .bind(policy.credit_limit)
    .bind(policy.job_price)
    .bind(i64::from(policy.admins_grant_themselves))
    .bind(network.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The policy of `network`.
pub async fn policy(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    network: &NetworkId,
) -> Result<Option<NetworkPolicy>, StoreError> {
    let row = sqlx::query(
        "SELECT require_device_approval, initial_grant, allow_credit, credit_limit, job_price, admins_grant_themselves \
         FROM networks WHERE id = $1",
    )
    .bind(network.to_string())
    .fetch_optional(db)
    .await?;
    row.map(|row| policy_of(&row)).transpose()
}

/// The policy columns of a `networks` row.
fn policy_of(row: &sqlx::any::AnyRow) -> Result<NetworkPolicy, StoreError> {
    Ok(NetworkPolicy {
        require_device_approval: row.try_get::<i64, _>("require_device_approval")? != 0,
        initial_grant: row.try_get("initial_grant")?,
        allow_credit: row.try_get::<i64, _>("allow_credit")? != 0,
        credit_limit: row.try_get("credit_limit")?,
        job_price: row.try_get("job_price")?,
        admins_grant_themselves: row.try_get::<i64, _>("admins_grant_themselves")? != 0,
    })
}

/// `network` as its member `person` sees it (`None` when they are not a member).
pub async fn info_for(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    network: &NetworkId,
    person: &PersonId,
) -> Result<Option<NetworkInfo>, StoreError> {
    let row = sqlx::query(
        "SELECT n.name, n.require_device_approval, n.initial_grant, n.allow_credit, n.credit_limit, n.job_price, \
         n.admins_grant_themselves, n.created_at, m.role FROM networks n JOIN memberships m ON m.network_id = n.id \
         WHERE n.id = $1 AND m.person_id = $2",
    )
    .bind(network.to_string())
    .bind(person.to_string())
    .fetch_optional(db)
    .await?;
    row.map(|row| {
        Ok(NetworkInfo {
            id: *network,
            name: row.try_get("name")?,
            role: role(row.try_get("role")?)?,
            policy: policy_of(&row)?,
            created_at_ms: row.try_get("created_at")?,
        })
    })
    .transpose()
}

/// The networks `person` belongs to, in the order they joined.
pub async fn of_person(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    person: &PersonId,
) -> Result<Vec<NetworkId>, StoreError> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT network_id FROM memberships WHERE person_id = $1 ORDER BY created_at",
    )
    .bind(person.to_string())
    .fetch_all(db)
    .await?;
    ids.iter()
        .map(|id| parse_column("memberships.network_id", id))
        .collect()
}

/// Add `person` to `network` as `role`; returns whether they were not a member yet.
pub async fn add_member(
    tx: &mut Tx,
    network: &NetworkId,
    person: &PersonId,
    role: Role,
    now: i64,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO memberships (network_id, person_id, role, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (network_id, person_id) DO NOTHING",
    )
    .bind(network.to_string())
    .bind(person.to_string())
    .bind(role.as_str())
    .bind(now)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// The role of `person` in `network`, if they are a member.
pub async fn role_of(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    network: &NetworkId,
    person: &PersonId,
) -> Result<Option<Role>, StoreError> {
    let text: Option<String> =
        sqlx::query_scalar("SELECT role FROM memberships WHERE network_id = $1 AND person_id = $2")
            .bind(network.to_string())
            .bind(person.to_string())
            .fetch_optional(db)
            .await?;
    text.map(role).transpose()
}

/// Take `network`'s row lock for the rest of `tx`: a no-op write, so membership changes of one
/// network run one after the other on PostgreSQL (a row lock held to commit) as on SQLite
/// (one writer). Checks such as "another owner remains" then see every change committed
/// before them.
pub async fn lock(tx: &mut Tx, network: &NetworkId) -> Result<(), StoreError> {
    sqlx::query("UPDATE networks SET name = name WHERE id = $1")
        .bind(network.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Give the member `person` of `network` the role `role`.
pub async fn set_role(
    tx: &mut Tx,
    network: &NetworkId,
    person: &PersonId,
    role: Role,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE memberships SET role = $1 WHERE network_id = $2 AND person_id = $3")
        .bind(role.as_str())
        .bind(network.to_string())
        .bind(person.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Remove `person` from `network`.
pub async fn remove_member(
    tx: &mut Tx,
    network: &NetworkId,
    person: &PersonId,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM memberships WHERE network_id = $1 AND person_id = $2")
        .bind(network.to_string())
        .bind(person.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// How many owners `network` has besides `person`.
pub async fn other_owners(
    tx: &mut Tx,
    network: &NetworkId,
    person: &PersonId,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT COUNT(*) FROM memberships WHERE network_id = $1 AND role = 'owner' AND person_id <> $2",
    )
    .bind(network.to_string())
    .bind(person.to_string())
    .fetch_one(&mut **tx)
    .await?)
}

/// Members of `network` with their names, in the order they joined.
pub async fn members(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    network: &NetworkId,
) -> Result<Vec<MemberInfo>, StoreError> {
    let rows = sqlx::query(
        "SELECT m.person_id, p.name, m.role, m.created_at FROM memberships m JOIN people p ON p.id = m.person_id \
         WHERE m.network_id = $1 ORDER BY m.created_at",
    )
    .bind(network.to_string())
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .map(|row| {
            let person: String = row.try_get("person_id")?;
            Ok(MemberInfo {
                person: parse_column("memberships.person_id", &person)?,
                name: row.try_get("name")?,
                role: role(row.try_get("role")?)?,
                joined_at_ms: row.try_get("created_at")?,
            })
        })
        .collect()
}
