//! A typed client for the Mesh control plane's REST API; what the `mesh` CLI and the device
//! agent use. One method per route, request and response types from `mesh_proto::api`.

use mesh_proto::api::*;
use mesh_proto::device::Heartbeat;
use mesh_proto::{Blake3Hash, DeviceId, InviteId, JobId, NetworkId, PersonId, Signed, TokenId};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Time a request may take before it fails.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
mod tls;

/// Timeout of calls that move a large body (a batch's input or results).
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(3600);

/// Timeout of calls that wait for a job to run (`run_job`).
pub const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{message} ({status}, {code})")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// Stable error code.
        code: String,
        /// Human message.
        message: String,
    },
    /// The server could not be reached or the connection failed.
    #[error("cannot reach the control plane: {0}")]
    Transport(#[source] reqwest::Error),
    /// The answer was not what the API promises.
    #[error("unexpected response: {0}")]
    Decode(String),
    /// The control plane is not the one an invite code or the configuration pins: a
    /// substitute, or a man in the middle.
    #[error("the control plane's {what} is {found}, not the pinned {pinned}: refusing it")]
    PinMismatch {
        /// What was pinned (`key`).
        what: &'static str,
        /// The pin.
        pinned: mesh_proto::pin::Fingerprint,
        /// What the server presented.
        found: mesh_proto::pin::Fingerprint,
    },
}

/// How a streamed chat answer ended ([`Client::chat_stream`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamedChat {
    /// The completion's id (`chatcmpl-` and the job's id).
    pub id: String,
    /// The whole text.
    pub text: String,
    /// `stop` or `length`.
    pub finish_reason: String,
    /// Token counts, when asked for.
    pub usage: Option<serde_json::Value>,
}

/// Splits a `text/event-stream` into the data of its events.
#[derive(Default)]
struct SseReader {
    buffer: Vec<u8>,
}

impl SseReader {
    /// The data of every event `bytes` completes.
    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.buffer.drain(..end + 2).collect();
            let event = String::from_utf8_lossy(&event);
            let data: Vec<&str> = event
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if !data.is_empty() {
                events.push(data.join("\n"));
            }
        }
        events
    }
}

impl ClientError {
    /// The HTTP status, for API errors.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The error code, for API errors.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Result of a client call.
pub type Result<T> = std::result::Result<T, ClientError>;

/// A control-plane client, optionally authenticated with a bearer token.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client for the control plane at `base` (e.g. `https://mesh.example:7420`), whose
    /// certificate a certificate authority the system trusts vouches for (or plain `http://`
    /// on loopback).
    pub fn new(base: &str, token: Option<String>) -> Result<Self> {
        Client::pinned(base, token, None)
    }

    /// A client for the control plane at `base` whose TLS certificate is the one `pin` names
    /// (a self-signed certificate, pinned by invite codes); without a pin, like [`Client::new`].
    /// A certificate that is not the pinned one fails every call with a transport error.
    pub fn pinned(
        base: &str,
        token: Option<String>,
        pin: Option<mesh_proto::pin::Fingerprint>,
    ) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .use_preconfigured_tls(tls::config(pin))
            .build()
            .map_err(ClientError::Transport)?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    /// The same server with another token.
    pub fn with_token(&self, token: Option<String>) -> Client {
        Client {
            base: self.base.clone(),
            token,
            http: self.http.clone(),
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    async fn send<T: DeserializeOwned>(builder: reqwest::RequestBuilder) -> Result<T> {
        let response = builder.send().await.map_err(ClientError::Transport)?;
        Self::decode(response).await
    }

    async fn decode<T: DeserializeOwned>(response: reqwest::Response) -> Result<T> {
        let status = response.status();
        let bytes = response.bytes().await.map_err(ClientError::Transport)?;
        if !status.is_success() {
            let (code, message) = match serde_json::from_slice::<serde_json::Value>(&bytes) {
                Ok(v) => (
                    v["error"]["code"].as_str().unwrap_or("unknown").to_string(),
                    v["error"]["message"].as_str().unwrap_or("").to_string(),
                ),
                Err(_) => (
                    "unknown".into(),
                    String::from_utf8_lossy(&bytes).chars().take(200).collect(),
                ),
            };
            return Err(ClientError::Api {
                status,
                code,
                message,
            });
        }
        let bytes = if bytes.is_empty() {
            &b"null"[..]
        } else {
            &bytes[..]
        };
        serde_json::from_slice(bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        Self::send(self.request(Method::GET, path)).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        Self::send(self.request(Method::POST, path).json(body)).await
    }

    // --- system ---

    /// `GET /healthz`.
    pub async fn health(&self) -> Result<Health> {
        self.get("/healthz").await
    }

    /// `GET /v1/control-plane/key`.
    pub async fn control_plane_key(&self) -> Result<ControlPlaneKey> {
        self.get("/v1/control-plane/key").await
    }

    /// The control plane's key, refused unless it is the one `pin` names (when given): what
    /// `join` and `login` check before trusting anything else the control plane says.
    pub async fn pinned_control_plane_key(
        &self,
        pin: Option<mesh_proto::pin::Fingerprint>,
    ) -> Result<ControlPlaneKey> {
        let key = self.control_plane_key().await?;
        if let Some(pinned) = pin {
            let found = mesh_proto::pin::Fingerprint::of_key(&key.public_key);
            if found != pinned {
                return Err(ClientError::PinMismatch {
                    what: "key",
                    pinned,
                    found,
                });
            }
        }
        Ok(key)
    }

    // --- people ---

    /// `GET /v1/me`.
    pub async fn me(&self) -> Result<Me> {
        self.get("/v1/me").await
    }

    /// `POST /v1/tokens`.
    pub async fn create_token(&self, request: &CreateTokenRequest) -> Result<CreatedToken> {
        self.post("/v1/tokens", request).await
    }

    /// `GET /v1/tokens`.
    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>> {
        self.get("/v1/tokens").await
    }

    /// `DELETE /v1/tokens/{token}`.
    pub async fn revoke_token(&self, token: &TokenId) -> Result<()> {
        Self::send(self.request(Method::DELETE, &format!("/v1/tokens/{token}"))).await
    }

    /// `POST /v1/invites/accept`.
    pub async fn accept_invite(&self, request: &AcceptInviteRequest) -> Result<AcceptedInvite> {
        self.post("/v1/invites/accept", request).await
    }

    // --- networks ---

    /// `POST /v1/networks`.
    pub async fn create_network(&self, request: &CreateNetworkRequest) -> Result<NetworkInfo> {
        self.post("/v1/networks", request).await
    }

    /// `GET /v1/networks`.
    pub async fn list_networks(&self) -> Result<Vec<NetworkInfo>> {
        self.get("/v1/networks").await
    }

    /// `GET /v1/networks/{network}`.
    pub async fn network(&self, network: &NetworkId) -> Result<NetworkInfo> {
        self.get(&format!("/v1/networks/{network}")).await
    }

    /// `PUT /v1/networks/{network}/policy`.
    pub async fn update_policy(
        &self,
        network: &NetworkId,
        policy: &NetworkPolicy,
    ) -> Result<NetworkInfo> {
        Self::send(
            self.request(Method::PUT, &format!("/v1/networks/{network}/policy"))
                .json(policy),
        )
        .await
    }

    /// `GET /v1/networks/{network}/members`.
    pub async fn members(&self, network: &NetworkId) -> Result<Vec<MemberInfo>> {
        self.get(&format!("/v1/networks/{network}/members")).await
    }

    /// `PUT /v1/networks/{network}/members/{person}`.
    pub async fn update_member(
        &self,
        network: &NetworkId,
        person: &PersonId,
        role: Role,
    ) -> Result<MemberInfo> {
        Self::send(
            self.request(
                Method::PUT,
                &format!("/v1/networks/{network}/members/{person}"),
            )
            .json(&UpdateMemberRequest { role }),
        )
        .await
    }

    /// `DELETE /v1/networks/{network}/members/{person}`.
    pub async fn remove_member(&self, network: &NetworkId, person: &PersonId) -> Result<()> {
        Self::send(self.request(
            Method::DELETE,
            &format!("/v1/networks/{network}/members/{person}"),
        ))
        .await
    }

    /// `POST /v1/networks/{network}/invites`.
    pub async fn create_invite(
        &self,
        network: &NetworkId,
        request: &CreateInviteRequest,
    ) -> Result<CreatedInvite> {
        self.post(&format!("/v1/networks/{network}/invites"), request)
            .await
    }

    /// `GET /v1/networks/{network}/invites`: the open invites.
    pub async fn invites(&self, network: &NetworkId) -> Result<Vec<InviteInfo>> {
        self.get(&format!("/v1/networks/{network}/invites")).await
    }

    /// `DELETE /v1/networks/{network}/invites/{invite}`.
    pub async fn revoke_invite(&self, network: &NetworkId, invite: &InviteId) -> Result<()> {
        Self::send(self.request(
            Method::DELETE,
            &format!("/v1/networks/{network}/invites/{invite}"),
        ))
        .await
    }

    // --- devices ---

    /// `POST /v1/devices/challenge`.
    pub async fn challenge(&self, invite: &str) -> Result<Challenge> {
        self.post(
            "/v1/devices/challenge",
            &ChallengeRequest {
                invite: invite.to_string(),
            },
        )
        .await
    }

    /// `POST /v1/devices/register`.
    pub async fn register_device(
        &self,
        request: &RegisterDeviceRequest,
    ) -> Result<RegisteredDevice> {
        self.post("/v1/devices/register", request).await
    }

    /// `GET /v1/networks/{network}/devices`.
    pub async fn devices(&self, network: &NetworkId) -> Result<Vec<DeviceInfo>> {
        self.get(&format!("/v1/networks/{network}/devices")).await
    }

    /// `GET /v1/networks/{network}/peers`: whom the network's hosts let connect.
    pub async fn network_peers(
        &self,
        network: &NetworkId,
    ) -> Result<mesh_proto::api::NetworkPeers> {
        self.get(&format!("/v1/networks/{network}/peers")).await
    }

    /// `POST /v1/networks/{network}/devices/{device}/approve`.
    pub async fn approve_device(
        &self,
        network: &NetworkId,
        device: &DeviceId,
    ) -> Result<DeviceInfo> {
        self.post(
            &format!("/v1/networks/{network}/devices/{device}/approve"),
            &(),
        )
        .await
    }

    /// `PUT /v1/networks/{network}/devices/{device}/terms`: set the owner's or the admins'
    /// layer of a device's terms.
    pub async fn set_device_terms(
        &self,
        network: &NetworkId,
        device: &DeviceId,
        request: &mesh_proto::api::SetTermsRequest,
    ) -> Result<DeviceInfo> {
        Self::send(
            self.request(
                Method::PUT,
                &format!("/v1/networks/{network}/devices/{device}/terms"),
            )
            .json(request),
        )
        .await
    }

    /// `POST /v1/networks/{network}/devices/{device}/revoke`.
    pub async fn revoke_device(
        &self,
        network: &NetworkId,
        device: &DeviceId,
    ) -> Result<DeviceInfo> {
        self.post(
            &format!("/v1/networks/{network}/devices/{device}/revoke"),
            &(),
        )
        .await
    }

    /// `POST /v1/networks/{network}/devices/{device}/release`: lift a quarantine (an admin
    /// other than the device's owner).
    pub async fn release_device(
        &self,
        network: &NetworkId,
        device: &DeviceId,
    ) -> Result<DeviceInfo> {
        self.post(
            &format!("/v1/networks/{network}/devices/{device}/release"),
            &(),
        )
        .await
    }

    /// `GET /v1/devices/{device}/certificate` (as the device).
    pub async fn certificate(&self, device: &DeviceId) -> Result<CertificateResponse> {
        self.get(&format!("/v1/devices/{device}/certificate")).await
    }

    /// `POST /v1/devices/{device}/heartbeat` (as the device).
    pub async fn heartbeat(
        &self,
        device: &DeviceId,
        heartbeat: &Signed<Heartbeat>,
    ) -> Result<HeartbeatResponse> {
        self.post(&format!("/v1/devices/{device}/heartbeat"), heartbeat)
            .await
    }

    // --- batches ---

    /// `POST /v1/networks/{network}/batches`: create a batch of `workload` (hash or name)
    /// whose input is `body`, streamed (one text a line, or JSON Lines).
    pub async fn create_batch(
        &self,
        network: &NetworkId,
        workload: &str,
        format: mesh_proto::batch::InputFormat,
        idempotency_key: Option<&str>,
        body: reqwest::Body,
    ) -> Result<mesh_proto::batch::BatchInfo> {
        let format = match format {
            mesh_proto::batch::InputFormat::Lines => "lines",
            mesh_proto::batch::InputFormat::Jsonl => "jsonl",
        };
        let mut query = vec![("workload", workload), ("format", format)];
        if let Some(key) = idempotency_key {
            query.push(("idempotency_key", key));
        }
        Self::send(
            self.request(Method::POST, &format!("/v1/networks/{network}/batches"))
                .query(&query)
                .header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .timeout(TRANSFER_TIMEOUT)
                .body(body),
        )
        .await
    }

    /// `GET /v1/networks/{network}/batches`.
    pub async fn batches(&self, network: &NetworkId) -> Result<Vec<mesh_proto::batch::BatchInfo>> {
        self.get(&format!("/v1/networks/{network}/batches")).await
    }

    /// `GET /v1/networks/{network}/batches/{batch}`.
    pub async fn batch(
        &self,
        network: &NetworkId,
        batch: &mesh_proto::BatchId,
    ) -> Result<mesh_proto::batch::BatchInfo> {
        self.get(&format!("/v1/networks/{network}/batches/{batch}"))
            .await
    }

    /// `POST /v1/networks/{network}/batches/{batch}/cancel`.
    pub async fn cancel_batch(
        &self,
        network: &NetworkId,
        batch: &mesh_proto::BatchId,
    ) -> Result<mesh_proto::batch::BatchInfo> {
        self.post(
            &format!("/v1/networks/{network}/batches/{batch}/cancel"),
            &serde_json::json!({}),
        )
        .await
    }

    /// `GET /v1/networks/{network}/batches/{batch}/results`: the response, to be read as it
    /// streams (`chunk()`), once the status said yes.
    pub async fn batch_results(
        &self,
        network: &NetworkId,
        batch: &mesh_proto::BatchId,
        format: mesh_proto::batch::ResultFormat,
    ) -> Result<reqwest::Response> {
        let format = match format {
            mesh_proto::batch::ResultFormat::Jsonl => "jsonl",
            mesh_proto::batch::ResultFormat::Npy => "npy",
        };
        let response = self
            .request(
                Method::GET,
                &format!("/v1/networks/{network}/batches/{batch}/results"),
            )
            .query(&[("format", format)])
            .timeout(TRANSFER_TIMEOUT)
            .send()
            .await
            .map_err(ClientError::Transport)?;
        if response.status().is_success() {
            return Ok(response);
        }
        // The error body, decoded as any other.
        let status = response.status();
        let bytes = response.bytes().await.map_err(ClientError::Transport)?;
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        Err(ClientError::Api {
            status,
            code: value["error"]["code"]
                .as_str()
                .unwrap_or("unknown")
                .to_string(),
            message: value["error"]["message"].as_str().unwrap_or("").to_string(),
        })
    }

    // --- workloads ---

    /// `POST /v1/networks/{network}/workloads` with the component bytes.
    pub async fn publish_workload(
        &self,
        network: &NetworkId,
        component: Vec<u8>,
    ) -> Result<WorkloadInfo> {
        Self::send(
            self.request(Method::POST, &format!("/v1/networks/{network}/workloads"))
                .header(reqwest::header::CONTENT_TYPE, "application/wasm")
                .body(component),
        )
        .await
    }

    /// `POST /v1/networks/{network}/workloads` streaming `body` (for progress reporting).
    pub async fn publish_workload_stream(
        &self,
        network: &NetworkId,
        body: reqwest::Body,
        len: u64,
    ) -> Result<WorkloadInfo> {
        Self::send(
            self.request(Method::POST, &format!("/v1/networks/{network}/workloads"))
                .header(reqwest::header::CONTENT_TYPE, "application/wasm")
                .header(reqwest::header::CONTENT_LENGTH, len)
                .body(body),
        )
        .await
    }

    /// `GET /v1/networks/{network}/workloads`.
    pub async fn workloads(&self, network: &NetworkId) -> Result<Vec<WorkloadInfo>> {
        self.get(&format!("/v1/networks/{network}/workloads")).await
    }

    /// `GET /v1/networks/{network}/workloads/{hash}`.
    pub async fn workload(&self, network: &NetworkId, hash: &Blake3Hash) -> Result<WorkloadInfo> {
        self.get(&format!("/v1/networks/{network}/workloads/{hash}"))
            .await
    }

    /// `GET /v1/networks/{network}/workloads/{hash}/component`, verified against `hash`.
    pub async fn download_component(
        &self,
        network: &NetworkId,
        hash: &Blake3Hash,
    ) -> Result<Vec<u8>> {
        let response = self
            .request(
                Method::GET,
                &format!("/v1/networks/{network}/workloads/{hash}/component"),
            )
            .send()
            .await
            .map_err(ClientError::Transport)?;
        if !response.status().is_success() {
            return Self::send::<()>(self.request(
                Method::GET,
                &format!("/v1/networks/{network}/workloads/{hash}"),
            ))
            .await
            .and(Err(ClientError::Decode(format!(
                "download failed: {}",
                response.status()
            ))));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(ClientError::Transport)?
            .to_vec();
        if Blake3Hash::of(&bytes) != *hash {
            return Err(ClientError::Decode(format!(
                "downloaded component does not hash to {hash}"
            )));
        }
        Ok(bytes)
    }

    /// `POST /v1/networks/{network}/workloads/{hash}/yank`.
    pub async fn yank_workload(
        &self,
        network: &NetworkId,
        hash: &Blake3Hash,
    ) -> Result<WorkloadInfo> {
        self.post(
            &format!("/v1/networks/{network}/workloads/{hash}/yank"),
            &(),
        )
        .await
    }

    // --- credits ---

    /// `GET /v1/networks/{network}/credits/balance` (yours, or `person`'s as an admin).
    pub async fn balance(&self, network: &NetworkId, person: Option<&PersonId>) -> Result<Balance> {
        let query = person.map(|p| format!("?person={p}")).unwrap_or_default();
        self.get(&format!("/v1/networks/{network}/credits/balance{query}"))
            .await
    }

    /// `GET /v1/networks/{network}/credits/history`.
    pub async fn history(
        &self,
        network: &NetworkId,
        person: Option<&PersonId>,
    ) -> Result<Vec<LedgerEntryInfo>> {
        let query = person.map(|p| format!("?person={p}")).unwrap_or_default();
        self.get(&format!("/v1/networks/{network}/credits/history{query}"))
            .await
    }

    /// `POST /v1/networks/{network}/credits/grant`.
    pub async fn grant(&self, network: &NetworkId, request: &GrantRequest) -> Result<TransferInfo> {
        self.post(&format!("/v1/networks/{network}/credits/grant"), request)
            .await
    }

    // --- jobs ---

    /// `POST /v1/networks/{network}/jobs`.
    pub async fn submit_job(
        &self,
        network: &NetworkId,
        request: &SubmitJobRequest,
    ) -> Result<JobAssignment> {
        self.post(&format!("/v1/networks/{network}/jobs"), request)
            .await
    }

    /// `GET /v1/networks/{network}/jobs`.
    pub async fn jobs(&self, network: &NetworkId) -> Result<Vec<JobInfo>> {
        self.get(&format!("/v1/networks/{network}/jobs")).await
    }

    /// `GET /v1/networks/{network}/jobs/{job}`.
    pub async fn job(&self, network: &NetworkId, job: &JobId) -> Result<JobAssignment> {
        self.get(&format!("/v1/networks/{network}/jobs/{job}"))
            .await
    }

    /// `POST /v1/jobs/{job}/start` (as the executor).
    pub async fn start_job(&self, job: &JobId) -> Result<JobInfo> {
        self.post(&format!("/v1/jobs/{job}/start"), &()).await
    }

    /// `POST /v1/jobs/{job}/complete` (as the executor).
    pub async fn complete_job(&self, job: &JobId, request: &CompleteJobRequest) -> Result<JobInfo> {
        self.post(&format!("/v1/jobs/{job}/complete"), request)
            .await
    }

    /// `POST /v1/jobs/{job}/fail` (as the executor).
    pub async fn fail_job(&self, job: &JobId, request: &FailJobRequest) -> Result<JobInfo> {
        self.post(&format!("/v1/jobs/{job}/fail"), request).await
    }

    /// `POST /v1/networks/{network}/jobs/{job}/reassign` (as the requester).
    pub async fn reassign_job(
        &self,
        network: &NetworkId,
        job: &JobId,
        request: &FailJobRequest,
    ) -> Result<JobAssignment> {
        self.post(
            &format!("/v1/networks/{network}/jobs/{job}/reassign"),
            request,
        )
        .await
    }

    /// `POST /v1/networks/{network}/jobs/{job}/receipt` (as the requester).
    pub async fn report_receipt(
        &self,
        network: &NetworkId,
        job: &JobId,
        request: &CompleteJobRequest,
    ) -> Result<JobInfo> {
        self.post(
            &format!("/v1/networks/{network}/jobs/{job}/receipt"),
            request,
        )
        .await
    }

    /// `POST /v1/networks/{network}/jobs/run`: run a job through the gateway and wait.
    pub async fn run_job(
        &self,
        network: &NetworkId,
        request: &mesh_proto::api::RunJobRequest,
    ) -> Result<mesh_proto::api::RunJobResponse> {
        // The call lasts as long as the job: allow more than the default timeout.
        let builder = self
            .request(Method::POST, &format!("/v1/networks/{network}/jobs/run"))
            .timeout(RUN_TIMEOUT)
            .json(request);
        Self::send(builder).await
    }

    /// `POST /v1/chat/completions` with `"stream": true` in `network`: `on_text` gets the
    /// answer's text as it is generated; the end says how it finished and, when the request
    /// asked (`stream_options.include_usage`), the token counts. An error the server sends
    /// after the stream began is a [`ClientError::Api`] like any other.
    pub async fn chat_stream(
        &self,
        network: &NetworkId,
        request: &serde_json::Value,
        mut on_text: impl FnMut(&str),
    ) -> Result<StreamedChat> {
        let mut request = request.clone();
        request["stream"] = serde_json::Value::Bool(true);
        let response = self
            .request(Method::POST, "/v1/chat/completions")
            .header("Mesh-Network", network.to_string())
            .timeout(RUN_TIMEOUT)
            .json(&request)
            .send()
            .await
            .map_err(ClientError::Transport)?;
        if !response.status().is_success() {
            let _: serde_json::Value = Self::decode(response).await?;
            return Err(ClientError::Decode(
                "an error status without an error".into(),
            ));
        }
        let mut response = response;
        let mut events = SseReader::default();
        let mut end = StreamedChat::default();
        while let Some(bytes) = response.chunk().await.map_err(ClientError::Transport)? {
            for data in events.push(&bytes) {
                if data == "[DONE]" {
                    return Ok(end);
                }
                let chunk: serde_json::Value = serde_json::from_str(&data)
                    .map_err(|e| ClientError::Decode(format!("a chunk that is not JSON: {e}")))?;
                if let Some(error) = chunk.get("error") {
                    return Err(ClientError::Api {
                        status: StatusCode::BAD_GATEWAY,
                        code: error["code"].as_str().unwrap_or("unknown").to_string(),
                        message: error["message"].as_str().unwrap_or("").to_string(),
                    });
                }
                end.id = chunk["id"].as_str().unwrap_or_default().to_string();
                if let Some(choice) = chunk["choices"].get(0) {
                    if let Some(text) = choice["delta"]["content"].as_str() {
                        end.text.push_str(text);
                        on_text(text);
                    }
                    if let Some(reason) = choice["finish_reason"].as_str() {
                        end.finish_reason = reason.to_string();
                    }
                }
                if chunk["usage"].is_object() {
                    end.usage = Some(chunk["usage"].clone());
                }
            }
        }
        Err(ClientError::Decode(
            "the stream ended before data: [DONE]".into(),
        ))
    }

    /// `GET /v1/networks/{network}/audit` (admins): the newest page (100 entries).
    pub async fn audit_log(&self, network: &NetworkId) -> Result<Vec<mesh_proto::api::AuditEntry>> {
        self.audit_page(network, None, None).await
    }

    /// `GET /v1/networks/{network}/audit?before=…&limit=…` (admins): entries older than
    /// the cursor ([`mesh_proto::api::AuditEntry::cursor`] of the last one seen).
    pub async fn audit_page(
        &self,
        network: &NetworkId,
        before: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Vec<mesh_proto::api::AuditEntry>> {
        let mut query = Vec::new();
        if let Some(before) = before {
            query.push(format!("before={before}"));
        }
        if let Some(limit) = limit {
            query.push(format!("limit={limit}"));
        }
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{}", query.join("&"))
        };
        self.get(&format!("/v1/networks/{network}/audit{query}"))
            .await
    }

    // --- verification ---

    /// `GET /v1/vrf`: the VRF public key and check policy.
    pub async fn vrf_key(&self) -> Result<mesh_proto::api::VrfKeyInfo> {
        self.get("/v1/vrf").await
    }

    /// `GET /v1/networks/{network}/jobs/{job}/check`.
    pub async fn job_check(
        &self,
        network: &NetworkId,
        job: &JobId,
    ) -> Result<mesh_proto::api::CheckInfo> {
        self.get(&format!("/v1/networks/{network}/jobs/{job}/check"))
            .await
    }

    /// `PUT /v1/networks/{network}/jobs/{job}/payloads/{hash}`: hand over the input or output
    /// of a job selected for re-execution.
    pub async fn upload_payload(
        &self,
        network: &NetworkId,
        job: &JobId,
        bytes: Vec<u8>,
    ) -> Result<()> {
        let hash = Blake3Hash::of(&bytes);
        let builder = self
            .request(
                Method::PUT,
                &format!("/v1/networks/{network}/jobs/{job}/payloads/{hash}"),
            )
            .timeout(RUN_TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes);
        Self::send(builder).await
    }

    /// `GET /v1/networks/{network}/jobs/{job}/payloads/{hash}`, verified against `hash`.
    pub async fn download_payload(
        &self,
        network: &NetworkId,
        job: &JobId,
        hash: &Blake3Hash,
    ) -> Result<Vec<u8>> {
        let response = self
            .request(
                Method::GET,
                &format!("/v1/networks/{network}/jobs/{job}/payloads/{hash}"),
            )
            .send()
            .await
            .map_err(ClientError::Transport)?;
        if !response.status().is_success() {
            let status = response.status();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            return Err(ClientError::Api {
                status,
                code: body["error"]["code"].as_str().unwrap_or("unknown").into(),
                message: body["error"]["message"].as_str().unwrap_or("").into(),
            });
        }
        let bytes = response
            .bytes()
            .await
            .map_err(ClientError::Transport)?
            .to_vec();
        if Blake3Hash::of(&bytes) != *hash {
            return Err(ClientError::Decode(format!(
                "the payload does not hash to {hash}"
            )));
        }
        Ok(bytes)
    }

    // --- relays ---

    /// `GET /v1/relay/allow-list` (as a relay: the client's token is the relay secret).
    pub async fn relay_allow_list(&self) -> Result<mesh_proto::api::RelayAllowList> {
        self.get("/v1/relay/allow-list").await
    }
}
