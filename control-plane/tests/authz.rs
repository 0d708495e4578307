//! Walks every route of the OpenAPI document as five callers (no token, another network's
//! admin, this network's device, member and admin) and checks the status each one gets.
//! Every documented route must have an expectation here, and every expectation a route.

mod common;

use common::*;
use mesh_proto::api::*;
use mesh_proto::device::{DeviceLoad, RegistrationProof};
use mesh_proto::{Blake3Hash, SignDomain, SigningKey};
use std::collections::BTreeSet;

const CALLERS: [&str; 6] = [
    "none",
    "other-admin",
    "device",
    "member",
    "admin",
    "pending-device",
];

/// Expected status per caller, in the order of [`CALLERS`].
const EXPECTATIONS: &[(&str, &str, [u16; 6])] = &[
    ("get", "/healthz", [200, 200, 200, 200, 200, 200]),
    // Off without a metrics token (and with one, for the scraper's token only: tests/api.rs).
    ("get", "/metrics", [404, 404, 404, 404, 404, 404]),
    ("get", "/openapi.json", [200, 200, 200, 200, 200, 200]),
    (
        "get",
        "/v1/control-plane/key",
        [200, 200, 200, 200, 200, 200],
    ),
    ("get", "/v1/me", [401, 200, 403, 200, 200, 403]),
    ("post", "/v1/tokens", [401, 201, 403, 201, 201, 403]),
    ("get", "/v1/tokens", [401, 200, 403, 200, 200, 403]),
    (
        "delete",
        "/v1/tokens/{token}",
        [401, 404, 403, 404, 204, 403],
    ),
    ("post", "/v1/invites/accept", [200, 200, 403, 409, 409, 403]),
    ("post", "/v1/networks", [401, 201, 403, 201, 201, 403]),
    ("get", "/v1/networks", [401, 200, 403, 200, 200, 403]),
    (
        "get",
        "/v1/networks/{network}",
        [401, 404, 403, 200, 200, 403],
    ),
    (
        "put",
        "/v1/networks/{network}/policy",
        [401, 404, 403, 403, 200, 403],
    ),
    (
        "get",
        "/v1/networks/{network}/members",
        [401, 404, 200, 200, 200, 403],
    ),
    (
        "get",
        "/v1/networks/{network}/audit",
        [401, 404, 403, 403, 200, 403],
    ),
    (
        "put",
        "/v1/networks/{network}/members/{person}",
        [401, 404, 403, 403, 200, 403],
    ),
    (
        "delete",
        "/v1/networks/{network}/members/{person}",
        [401, 404, 403, 403, 204, 403],
    ),
    (
        "post",
        "/v1/networks/{network}/invites",
        [401, 404, 403, 403, 201, 403],
    ),
    (
        "get",
        "/v1/networks/{network}/invites",
        [401, 404, 403, 403, 200, 403],
    ),
    (
        "delete",
        "/v1/networks/{network}/invites/{invite}",
        [401, 404, 403, 403, 204, 403],
    ),
    (
        "post",
        "/v1/devices/challenge",
        [200, 200, 200, 200, 200, 200],
    ),
    (
        "post",
        "/v1/devices/register",
        [201, 201, 201, 201, 201, 201],
    ),
    (
        "get",
        "/v1/networks/{network}/devices",
        [401, 404, 200, 200, 200, 403],
    ),
    (
        "get",
        "/v1/networks/{network}/peers",
        [401, 404, 200, 200, 200, 403],
    ),
    // Creating a batch needs its workload named in the query: callers past the role check
    // get 400 for the query this walk leaves out (tests/e2e/tests/batches.rs makes them).
    (
        "post",
        "/v1/networks/{network}/batches",
        [401, 404, 403, 400, 400, 403],
    ),
    (
        "get",
        "/v1/networks/{network}/batches",
        [401, 404, 200, 200, 200, 403],
    ),
    // The walk names a batch that does not exist.
    (
        "get",
        "/v1/networks/{network}/batches/{batch}",
        [401, 404, 404, 404, 404, 403],
    ),
    (
        "post",
        "/v1/networks/{network}/batches/{batch}/cancel",
        [401, 404, 403, 404, 404, 403],
    ),
    (
        "get",
        "/v1/networks/{network}/batches/{batch}/results",
        [401, 404, 403, 404, 404, 403],
    ),
    (
        "post",
        "/v1/networks/{network}/devices/{device}/approve",
        [401, 404, 403, 403, 200, 403],
    ),
    // The walk's device is not quarantined.
    (
        "post",
        "/v1/networks/{network}/devices/{device}/release",
        [401, 404, 403, 403, 409, 403],
    ),
    (
        "post",
        "/v1/networks/{network}/devices/{device}/revoke",
        [401, 404, 403, 403, 200, 403],
    ),
    (
        "put",
        "/v1/networks/{network}/devices/{device}/terms",
        [401, 404, 403, 403, 200, 403],
    ),
    (
        "get",
        "/v1/devices/{device}/certificate",
        [401, 403, 200, 403, 403, 403],
    ),
    (
        "post",
        "/v1/devices/{device}/heartbeat",
        [401, 403, 200, 403, 403, 403],
    ),
    (
        "post",
        "/v1/networks/{network}/workloads",
        [401, 404, 403, 403, 201, 403],
    ),
    (
        "get",
        "/v1/networks/{network}/workloads",
        [401, 404, 200, 200, 200, 403],
    ),
    (
        "get",
        "/v1/networks/{network}/workloads/{hash}",
        [401, 404, 200, 200, 200, 403],
    ),
    (
        "get",
        "/v1/networks/{network}/workloads/{hash}/component",
        [401, 404, 200, 200, 200, 403],
    ),
    (
        "post",
        "/v1/networks/{network}/workloads/{hash}/yank",
        [401, 404, 403, 403, 200, 403],
    ),
    (
        "get",
        "/v1/networks/{network}/credits/balance",
        [401, 404, 403, 200, 200, 403],
    ),
    (
        "get",
        "/v1/networks/{network}/credits/history",
        [401, 404, 403, 200, 200, 403],
    ),
    (
        "post",
        "/v1/networks/{network}/credits/grant",
        [401, 404, 403, 403, 200, 403],
    ),
    (
        "post",
        "/v1/networks/{network}/jobs",
        [401, 404, 201, 201, 201, 403],
    ),
    // Without relays the control plane has no gateway: members get 503, not a job.
    (
        "post",
        "/v1/networks/{network}/jobs/run",
        [401, 404, 403, 503, 503, 403],
    ),
    // Only the requester (here the admin) may reassign or report a receipt.
    (
        "post",
        "/v1/networks/{network}/jobs/{job}/reassign",
        [401, 404, 403, 403, 200, 403],
    ),
    (
        "post",
        "/v1/networks/{network}/jobs/{job}/receipt",
        [401, 404, 403, 403, 200, 403],
    ),
    // The network is the caller's only one: the outsider's has no such model (404), the
    // admin belongs to many (400), the member's has no gateway (503).
    ("post", "/v1/embeddings", [401, 404, 403, 503, 400, 403]),
    (
        "post",
        "/v1/chat/completions",
        [401, 404, 403, 503, 400, 403],
    ),
    // The outsider and the member see their only network's models; the admin belongs to
    // many and must name one.
    ("get", "/v1/models", [401, 200, 403, 200, 400, 403]),
    // No relay secret configured: the feed does not exist.
    (
        "get",
        "/v1/relay/allow-list",
        [404, 404, 404, 404, 404, 404],
    ),
    (
        "get",
        "/v1/networks/{network}/jobs",
        [401, 404, 200, 200, 200, 403],
    ),
    (
        "get",
        "/v1/networks/{network}/jobs/{job}",
        [401, 404, 200, 200, 200, 403],
    ),
    (
        "post",
        "/v1/jobs/{job}/start",
        [401, 403, 200, 403, 403, 403],
    ),
    (
        "post",
        "/v1/jobs/{job}/complete",
        [401, 403, 200, 403, 403, 403],
    ),
    (
        "post",
        "/v1/jobs/{job}/fail",
        [401, 403, 200, 403, 403, 403],
    ),
    ("get", "/v1/vrf", [200, 200, 200, 200, 200, 200]),
    // The fixture's job has not settled: readers learn that (404 not_settled); payloads are
    // the requester's (the admin) alone, and only once the receipt names them.
    (
        "get",
        "/v1/networks/{network}/jobs/{job}/check",
        [401, 404, 404, 404, 404, 403],
    ),
    (
        "put",
        "/v1/networks/{network}/jobs/{job}/payloads/{hash}",
        [401, 404, 403, 403, 409, 403],
    ),
    (
        "get",
        "/v1/networks/{network}/jobs/{job}/payloads/{hash}",
        [401, 404, 403, 403, 404, 403],
    ),
];

/// A fresh network with one of everything, so each call meets the state it needs.
struct Fixture {
    network: NetworkInfo,
    admin: mesh_client::Client,
    member: mesh_client::Client,
    member_id: mesh_proto::PersonId,
    device: TestDevice,
    pending: mesh_proto::DeviceId,
    pending_device: TestDevice,
    workload: Blake3Hash,
    job: JobInfo,
    admin_token: mesh_proto::TokenId,
    admin_token_secret: String,
    open_invite: mesh_proto::InviteId,
}

async fn fixture(plane: &TestPlane) -> Fixture {
    let network = plane.network(NetworkPolicy::default()).await;
    let (member, member_id) = plane.person(&network.id, Role::Member, "member").await;
    let mut device = register_device(&plane.admin, &network.id, 40, embedding_capabilities()).await;
    plane
        .admin
        .approve_device(&network.id, &device.id)
        .await
        .unwrap();
    device
        .heartbeat(DeviceLoad {
            running: 0,
            queued: 0,
            slots: 8,
            others_busy_percent: None,
        })
        .await;
    let pending_device =
        register_device(&plane.admin, &network.id, 41, embedding_capabilities()).await;
    let pending = pending_device.id;
    let workload = plane
        .admin
        .publish_workload(
            &network.id,
            std::fs::read(mesh_test_artifacts::ECHO).unwrap(),
        )
        .await
        .unwrap()
        .hash;
    let job = plane
        .admin
        .submit_job(
            &network.id,
            &SubmitJobRequest {
                workload,
                input: Blake3Hash::of(b"in"),
                input_size: 2,
                idempotency_key: None,
            },
        )
        .await
        .unwrap()
        .job;
    assert_eq!(job.executor, Some(device.id));
    let token = plane
        .admin
        .create_token(&CreateTokenRequest {
            label: "spare".into(),
            expires_in_s: None,
        })
        .await
        .unwrap();
    let open_invite = plane
        .admin
        .create_invite(
            &network.id,
            &CreateInviteRequest {
                kind: InviteKind::Person,
                role: None,
                expires_in_s: None,
            },
        )
        .await
        .unwrap()
        .id;
    Fixture {
        network,
        admin: plane.admin.clone(),
        member,
        member_id,
        device,
        pending,
        pending_device,
        workload,
        job,
        admin_token: token.id,
        admin_token_secret: token.token,
        open_invite,
    }
}

async fn body(
    plane: &TestPlane,
    f: &mut Fixture,
    method: &str,
    path: &str,
) -> Option<(String, Vec<u8>)> {
    let json = |v: serde_json::Value| {
        Some((
            "application/json".to_string(),
            serde_json::to_vec(&v).unwrap(),
        ))
    };
    match (method, path) {
        ("post", "/v1/tokens") => json(serde_json::json!({"label": "x"})),
        ("post", "/v1/invites/accept") => {
            let invite = invite(f, InviteKind::Person).await;
            json(serde_json::json!({"code": invite.code, "name": "newcomer"}))
        }
        ("post", "/v1/networks") => json(serde_json::json!({"name": "another"})),
        ("put", "/v1/networks/{network}/policy") => {
            json(serde_json::to_value(NetworkPolicy::default()).unwrap())
        }
        ("put", "/v1/networks/{network}/members/{person}") => {
            json(serde_json::json!({"role": "admin"}))
        }
        ("post", "/v1/networks/{network}/invites") => json(serde_json::json!({"kind": "person"})),
        ("post", "/v1/devices/challenge") => {
            let invite = invite(f, InviteKind::Device).await;
            json(serde_json::json!({"invite": invite.code}))
        }
        ("post", "/v1/devices/register") => {
            let invite = invite(f, InviteKind::Device).await;
            let challenge = plane.anonymous().challenge(&invite.code).await.unwrap();
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).unwrap();
            let key = SigningKey::from_seed(seed);
            let proof = RegistrationProof {
                challenge: challenge.challenge.clone(),
                public_key: key.public_key(),
            };
            let request = RegisterDeviceRequest {
                invite: invite.code,
                challenge: challenge.challenge,
                name: "walker".into(),
                public_key: key.public_key(),
                proof: key.sign(
                    SignDomain::Registration,
                    &f.network.id,
                    &mesh_proto::cbor::to_vec(&proof).unwrap(),
                ),
                capabilities: embedding_capabilities(),
            };
            json(serde_json::to_value(request).unwrap())
        }
        ("post", "/v1/devices/{device}/heartbeat") => {
            json(serde_json::to_value(f.device.heartbeat_payload(DeviceLoad::default())).unwrap())
        }
        ("post", "/v1/networks/{network}/workloads") => Some((
            "application/wasm".into(),
            std::fs::read(mesh_test_artifacts::HOSTILE).unwrap(),
        )),
        ("post", "/v1/networks/{network}/credits/grant") => json(
            serde_json::json!({"person": f.member_id, "amount": 1, "idempotency_key": mesh_control_plane::store::random_secret()}),
        ),
        ("post", "/v1/networks/{network}/jobs") => json(
            serde_json::json!({"workload": f.workload, "input": Blake3Hash::of(b"x"), "input_size": 1}),
        ),
        ("post", "/v1/jobs/{job}/complete") => {
            let signed = signed_receipt(&f.device.key, &f.network.id, &f.job, b"out");
            json(serde_json::json!({"receipt": signed}))
        }
        ("post", "/v1/networks/{network}/jobs/run") => {
            json(serde_json::json!({"workload": f.workload, "input": {"texts": ["x"]}}))
        }
        ("post", "/v1/networks/{network}/jobs/{job}/reassign") => {
            json(serde_json::json!({"reason": "busy", "retryable": true}))
        }
        ("post", "/v1/networks/{network}/jobs/{job}/receipt") => {
            let signed = signed_receipt(&f.device.key, &f.network.id, &f.job, b"out");
            json(serde_json::json!({"receipt": signed}))
        }
        ("post", "/v1/embeddings") => json(serde_json::json!({"model": "echo", "input": "hi"})),
        ("post", "/v1/chat/completions") => json(serde_json::json!({
            "model": "echo",
            "messages": [{"role": "user", "content": "hi"}]
        })),
        ("put", "/v1/networks/{network}/devices/{device}/terms") => {
            json(serde_json::json!({"terms": {}}))
        }
        ("post", "/v1/jobs/{job}/fail") => {
            json(serde_json::json!({"reason": "walked", "retryable": true}))
        }
        _ => None,
    }
}

fn fill(path: &str, f: &Fixture) -> String {
    path.replace("{network}", &f.network.id.to_string())
        .replace("{person}", &f.member_id.to_string())
        .replace(
            "{device}",
            &if path.contains("approve") {
                f.pending.to_string()
            } else {
                f.device.id.to_string()
            },
        )
        .replace("{hash}", &f.workload.to_string())
        .replace("{job}", &f.job.id.to_string())
        .replace("{token}", &f.admin_token.to_string())
        .replace("{invite}", &f.open_invite.to_string())
        .replace("{batch}", "bat_00000000000000000000000000000000")
}

#[tokio::test]
async fn every_route_enforces_its_authorization() {
    let plane = TestPlane::spawn(Store::Sqlite).await;
    let doc: serde_json::Value = reqwest::get(format!("{}/openapi.json", plane.server.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.clone(), path.clone()));
        }
    }
    let expected: BTreeSet<(String, String)> = EXPECTATIONS
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        documented, expected,
        "the OpenAPI document and this test must list the same routes"
    );

    let http = reqwest::Client::new();
    let mut failures = Vec::new();
    for (method, path, statuses) in EXPECTATIONS {
        for (caller, expected) in CALLERS.iter().zip(statuses) {
            let mut f = fixture(&plane).await;
            // The other network's admin is an outsider to this fixture's network.
            let outsider = plane
                .admin
                .create_network(&CreateNetworkRequest {
                    name: "outsider's".into(),
                    policy: NetworkPolicy::default(),
                })
                .await
                .unwrap();
            let (outsider_client, _) = plane.person(&outsider.id, Role::Admin, "outsider").await;
            let token = match *caller {
                "none" => None,
                "other-admin" => fresh_token(&outsider_client).await,
                "device" => Some(f.device.registered.token.clone()),
                "pending-device" => Some(f.pending_device.registered.token.clone()),
                "member" => fresh_token(&f.member).await,
                _ => Some(f.admin_token_secret.clone()),
            };
            let url = format!("{}{}", plane.server.url(), fill(path, &f));
            let mut request = http.request(method.to_uppercase().parse().unwrap(), &url);
            if let Some(token) = &token {
                request = request.bearer_auth(token);
            }
            if let Some((content_type, bytes)) = body(&plane, &mut f, method, path).await {
                request = request.header("content-type", content_type).body(bytes);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            // Every status a route answers is in its OpenAPI responses.
            if doc["paths"][*path][*method]["responses"]
                .get(status.to_string())
                .is_none()
            {
                failures.push(format!(
                    "{method} {path} as {caller}: {status} is not among its documented responses"
                ));
            }
            if status != *expected {
                let text = response.text().await.unwrap_or_default();
                failures.push(format!(
                    "{method} {path} as {caller}: expected {expected}, got {status}: {text}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

async fn invite(f: &Fixture, kind: InviteKind) -> CreatedInvite {
    f.admin
        .create_invite(
            &f.network.id,
            &CreateInviteRequest {
                kind,
                role: None,
                expires_in_s: None,
            },
        )
        .await
        .unwrap()
}

/// A fresh token for the person behind `client`.
async fn fresh_token(client: &mesh_client::Client) -> Option<String> {
    let created = client
        .create_token(&CreateTokenRequest {
            label: "walk".into(),
            expires_in_s: None,
        })
        .await
        .unwrap();
    Some(created.token)
}
