//! Migrations carry existing data forward: a database at an older version, with rows in it,
//! is migrated by the real migration files, on SQLite and on PostgreSQL.

mod common;

use common::{Store, TestDb, stores};
use sqlx::Connection;

/// The migration files of `store` up to and including `last`, in order.
fn migrations(store: Store, last: &str) -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(match store {
        Store::Sqlite => "migrations/sqlite",
        Store::Postgres => "migrations/postgres",
    });
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap() <= last)
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

async fn connect(db: &TestDb) -> sqlx::AnyConnection {
    sqlx::any::install_default_drivers();
    let url = match &db.config.database_url {
        Some(url) => url.clone(),
        None => format!(
            "sqlite://{}?mode=rwc",
            db.config.data_dir.join("mesh.db").display()
        ),
    };
    sqlx::AnyConnection::connect(&url).await.unwrap()
}

async fn run(conn: &mut sqlx::AnyConnection, sql: &str) {
    sqlx::raw_sql(sql).execute(&mut *conn).await.unwrap();
}

#[tokio::test]
async fn tried_devices_become_rows_of_job_tries() {
    for store in stores() {
        let db = TestDb::new(store).await;
        let mut conn = connect(&db).await;
        for sql in migrations(store, "0003_verification.sql") {
            run(&mut conn, &sql).await;
        }
        run(
            &mut conn,
            "INSERT INTO people (id, name, created_at) VALUES ('usr_a', 'a', 0);
             INSERT INTO networks (id, name, created_by, require_device_approval, initial_grant, \
             allow_credit, credit_limit, job_price, created_at) VALUES ('net_a', 'n', 'usr_a', 0, 0, 0, 0, 1, 0);",
        )
        .await;
        for (id, tried) in [
            ("job_two", "dev_x,dev_y,"),
            ("job_none", ""),
            ("job_one", "dev_z,"),
            ("job_again", "dev_x,dev_x,"),
        ] {
            sqlx::query(
                "INSERT INTO jobs (id, network_id, requester_id, workload_hash, input_hash, input_size, price, \
                 state, idempotency_key, tried_devices, created_at, updated_at) \
                 VALUES ($1, 'net_a', 'usr_a', 'b3:w', 'b3:i', 1, 1, 'queued', $1, $2, 0, 0)",
            )
            .bind(id)
            .bind(tried)
            .execute(&mut conn)
            .await
            .unwrap();
        }
        let next = migrations(store, "0004_job_tries.sql").pop().unwrap();
        run(&mut conn, &next).await;
        let mut rows: Vec<(String, String)> =
            sqlx::query_as("SELECT job_id, device_id FROM job_tries")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        rows.sort();
        let expected: Vec<(String, String)> = [
            ("job_again", "dev_x"),
            ("job_one", "dev_z"),
            ("job_two", "dev_x"),
            ("job_two", "dev_y"),
        ]
        .iter()
        .map(|(j, d)| (j.to_string(), d.to_string()))
        .collect();
        assert_eq!(rows, expected, "{store:?}");
        let gone = sqlx::query("SELECT tried_devices FROM jobs")
            .fetch_all(&mut conn)
            .await;
        assert!(gone.is_err(), "{store:?}: the old column is dropped");
    }
}

#[tokio::test]
async fn payloads_become_rows_of_the_checked_jobs_that_name_them() {
    for store in stores() {
        let db = TestDb::new(store).await;
        let mut conn = connect(&db).await;
        for sql in migrations(store, "0005_self_grants.sql") {
            run(&mut conn, &sql).await;
        }
        run(
            &mut conn,
            "INSERT INTO people (id, name, created_at) VALUES ('usr_a', 'a', 0);
             INSERT INTO networks (id, name, created_by, require_device_approval, initial_grant, \
             allow_credit, credit_limit, job_price, created_at) VALUES ('net_a', 'n', 'usr_a', 0, 0, 0, 0, 1, 0);
             INSERT INTO devices (id, network_id, owner_id, name, public_key, peer_id, status, capabilities, \
             created_at) VALUES ('dev_a', 'net_a', 'usr_a', 'd', 'k', 'p', 'approved', '{}', 0);",
        )
        .await;
        // A checked job, and an unchecked one whose receipt names the same hashes (what a
        // forger would make): only the checked job gets the payloads.
        for (id, checked) in [("job_checked", true), ("job_forged", false)] {
            sqlx::query(
                "INSERT INTO jobs (id, network_id, requester_id, workload_hash, input_hash, input_size, price, \
                 state, idempotency_key, receipt, created_at, updated_at) \
                 VALUES ($1, 'net_a', 'usr_a', 'b3:w', 'b3:in', 1, 1, 'done', $1, $2, 0, 0)",
            )
            .bind(id)
            .bind(r#"{"input":"b3:in","output":"b3:out"}"#)
            .execute(&mut conn)
            .await
            .unwrap();
            if checked {
                sqlx::query(
                    "INSERT INTO checks (job_id, network_id, executor_id, rate_ppm, receipt_hash, proof, vrf_output, \
                     selected, state, check_output, created_at, updated_at) \
                     VALUES ($1, 'net_a', 'dev_a', 1, 'r', 'p', 'v', 1, 'disputed', 'b3:again', 0, 0)",
                )
                .bind(id)
                .execute(&mut conn)
                .await
                .unwrap();
            }
        }
        for hash in ["b3:in", "b3:out", "b3:again", "b3:stray"] {
            sqlx::query("INSERT INTO payloads (hash, bytes, created_at) VALUES ($1, $2, 0)")
                .bind(hash)
                .bind(hash.as_bytes().to_vec())
                .execute(&mut conn)
                .await
                .unwrap();
        }
        let next = migrations(store, "0006_job_payloads.sql").pop().unwrap();
        run(&mut conn, &next).await;
        let mut rows: Vec<(String, String, Vec<u8>)> =
            sqlx::query_as("SELECT job_id, hash, bytes FROM job_payloads")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        rows.sort();
        let expected: Vec<(String, String, Vec<u8>)> = ["b3:again", "b3:in", "b3:out"]
            .iter()
            .map(|h| {
                (
                    "job_checked".to_string(),
                    h.to_string(),
                    h.as_bytes().to_vec(),
                )
            })
            .collect();
        assert_eq!(rows, expected, "{store:?}");
        let gone = sqlx::query("SELECT hash FROM payloads")
            .fetch_all(&mut conn)
            .await;
        assert!(gone.is_err(), "{store:?}: the old table is dropped");
    }
}
