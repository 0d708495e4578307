//! Request and response bodies of the control plane's REST API (JSON).

use crate::device::{Capabilities, DeviceCert, DeviceLoad};
use crate::identity::{PublicKey, Signature};
use crate::signed::Signed;
use crate::verification::{CheckPolicy, CheckRecord, RingerPolicy, Selection};
use crate::vrf::VrfPublicKey;
use crate::{
    Blake3Hash, Comparison, DeviceId, InviteId, JobId, NetworkId, PersonId, RunReceipt, TokenId,
};
use serde::{Deserialize, Serialize};
use std::fmt;

#[cfg(feature = "openapi")]
use utoipa::ToSchema;

/// Fewest characters a shared secret (the relays' secret, the metrics token) may have: 32
/// characters of a random hex or base64 string carry at least 128 bits.
pub const MIN_SHARED_SECRET_CHARS: usize = 32;

/// Check a shared secret an operator configured (`what` names it in the error): at least
/// [`MIN_SHARED_SECRET_CHARS`] printable ASCII characters, no whitespace.
pub fn check_shared_secret(what: &str, secret: &str) -> Result<(), String> {
    if secret.len() < MIN_SHARED_SECRET_CHARS || !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "the {what} must be at least {MIN_SHARED_SECRET_CHARS} printable ASCII characters \
             without spaces (e.g. `openssl rand -hex 32`)"
        ));
    }
    Ok(())
}

/// A person's role in a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Can read the network and use it.
    Member,
    /// Can also invite, approve and revoke devices, manage workloads and grant credits.
    Admin,
    /// Can also change roles and policy.
    Owner,
}

impl Role {
    /// The role's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    /// Parse a stored role name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "member" => Some(Role::Member),
            "admin" => Some(Role::Admin),
            "owner" => Some(Role::Owner),
            _ => None,
        }
    }
}

/// A person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct PersonInfo {
    /// Their id.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: PersonId,
    /// Display name.
    pub name: String,
}

/// The caller and the networks they belong to (`GET /v1/me`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Me {
    /// The caller.
    pub person: PersonInfo,
    /// Their networks.
    pub networks: Vec<NetworkInfo>,
}

/// Create an API token for yourself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CreateTokenRequest {
    /// What the token is for.
    pub label: String,
    /// Lifetime in seconds; none means until revoked.
    #[serde(default)]
    pub expires_in_s: Option<u64>,
}

/// A new token. The secret is shown only here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CreatedToken {
    /// Token id (for listing and revoking).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: TokenId,
    /// The bearer secret.
    pub token: String,
    /// Expiry, if any.
    pub expires_at_ms: Option<i64>,
}

/// A token, without its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct TokenInfo {
    /// Token id.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: TokenId,
    /// Label.
    pub label: String,
    /// Creation time.
    pub created_at_ms: i64,
    /// Expiry, if any.
    pub expires_at_ms: Option<i64>,
    /// Whether it was revoked.
    pub revoked: bool,
    /// The token it was made with, if any: it expires no later and is revoked with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub parent: Option<TokenId>,
}

/// A network's rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(default)]
pub struct NetworkPolicy {
    /// New devices wait for an admin's approval.
    pub require_device_approval: bool,
    /// Credits granted to each new member.
    pub initial_grant: i64,
    /// Whether balances may go below zero (down to `-credit_limit`).
    pub allow_credit: bool,
    /// How far below zero a balance may go when credit is allowed.
    pub credit_limit: i64,
    /// Credits one job costs the requester.
    pub job_price: i64,
    /// Whether admins (the owner included) may grant credits to themselves. Off by default:
    /// a grant creates credits, and a self-grant is otherwise a quiet way to pay oneself.
    #[serde(default)]
    pub admins_grant_themselves: bool,
}

impl Default for NetworkPolicy {
    fn default() -> Self {
        NetworkPolicy {
            require_device_approval: true,
            initial_grant: 1000,
            allow_credit: false,
            credit_limit: 0,
            job_price: 1,
            admins_grant_themselves: false,
        }
    }
}

/// Create a network; the caller becomes its owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CreateNetworkRequest {
    /// Display name.
    pub name: String,
    /// Rules; defaults apply to omitted fields.
    #[serde(default)]
    pub policy: NetworkPolicy,
}

/// A network as its members see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct NetworkInfo {
    /// Network id.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: NetworkId,
    /// Display name.
    pub name: String,
    /// The caller's role.
    pub role: Role,
    /// Rules.
    pub policy: NetworkPolicy,
    /// Creation time.
    pub created_at_ms: i64,
}

/// An entry of a network's audit log (admin actions, failed checks, quarantines).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct AuditEntry {
    /// The entry's id: with `at_ms`, the cursor of the next page (`?before=<at_ms>:<id>`).
    #[serde(default)]
    pub id: String,
    /// Who or what acted (a person, a device, the control plane).
    pub actor: String,
    /// What happened (e.g. `device.revoked`, `check_failed`, `device_quarantined`).
    pub action: String,
    /// Details.
    pub detail: String,
    /// When.
    pub at_ms: i64,
}

/// Which page of the audit log: entries older than `before` (`<at_ms>:<id>` of the last entry
/// of the previous page; the newest when absent), at most `limit` (1-500, default 100).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "openapi",
    derive(ToSchema, utoipa::IntoParams),
    into_params(parameter_in = Query)
)]
pub struct AuditQuery {
    /// The cursor: `<at_ms>:<id>` of the last entry already seen.
    #[serde(default)]
    pub before: Option<String>,
    /// Entries per page.
    #[serde(default)]
    pub limit: Option<u32>,
}

impl AuditEntry {
    /// The cursor for the page after this entry.
    pub fn cursor(&self) -> String {
        format!("{}:{}", self.at_ms, self.id)
    }
}

/// A member of a network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct MemberInfo {
    /// The person.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub person: PersonId,
    /// Their name.
    pub name: String,
    /// Their role.
    pub role: Role,
    /// When they joined.
    pub joined_at_ms: i64,
}

/// Change a member's role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct UpdateMemberRequest {
    /// The new role.
    pub role: Role,
}

/// What an invite admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum InviteKind {
    /// A person.
    Person,
    /// A device.
    Device,
}

/// Create an invite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CreateInviteRequest {
    /// Person or device.
    pub kind: InviteKind,
    /// Role for a person invite (member unless admin is asked for).
    #[serde(default)]
    pub role: Option<Role>,
    /// Lifetime in seconds (default one day).
    #[serde(default)]
    pub expires_in_s: Option<u64>,
}

/// A new invite. The code is shown only here; it works once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CreatedInvite {
    /// Invite id.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: InviteId,
    /// The single-use code.
    pub code: String,
    /// Person or device.
    pub kind: InviteKind,
    /// Expiry.
    pub expires_at_ms: i64,
}

/// An open invite (neither used, expired nor revoked), as admins list it. The code is not
/// shown again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct InviteInfo {
    /// Invite id.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: InviteId,
    /// Person or device.
    pub kind: InviteKind,
    /// The role a person gets.
    pub role: Role,
    /// Who made it.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub created_by: PersonId,
    /// When.
    pub created_at_ms: i64,
    /// Expiry.
    pub expires_at_ms: i64,
}

/// Accept a person invite. Without a bearer token a new person is created and given a token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct AcceptInviteRequest {
    /// The invite code.
    pub code: String,
    /// Name of the new person (ignored when the caller is authenticated).
    #[serde(default)]
    pub name: Option<String>,
}

/// The result of accepting an invite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct AcceptedInvite {
    /// The network joined.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub network: NetworkId,
    /// The member.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub person: PersonId,
    /// A token for a newly created person.
    pub token: Option<String>,
}

/// Ask for a registration challenge with a device invite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ChallengeRequest {
    /// The device invite code.
    pub invite: String,
}

/// A one-time challenge the device signs to prove it holds its key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Challenge {
    /// The challenge (hex).
    pub challenge: String,
    /// The network the invite is for (part of what is signed).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub network: NetworkId,
    /// Expiry.
    pub expires_at_ms: i64,
}

/// Register a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RegisterDeviceRequest {
    /// The device invite code.
    pub invite: String,
    /// The challenge that was signed.
    pub challenge: String,
    /// Display name.
    pub name: String,
    /// The device's Ed25519 key.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub public_key: PublicKey,
    /// Signature over `RegistrationProof { challenge, public_key }` (domain `registration`,
    /// the invite's network).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub proof: Signature,
    /// What the device can run.
    pub capabilities: Capabilities,
}

/// A device's approval state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    /// Waiting for an admin.
    Pending,
    /// Approved: has a certificate, can run jobs.
    Approved,
    /// Revoked.
    Revoked,
}

impl DeviceStatus {
    /// The status's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Pending => "pending",
            DeviceStatus::Approved => "approved",
            DeviceStatus::Revoked => "revoked",
        }
    }

    /// Parse a stored status.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(DeviceStatus::Pending),
            "approved" => Some(DeviceStatus::Approved),
            "revoked" => Some(DeviceStatus::Revoked),
            _ => None,
        }
    }
}

/// A registered device and its credentials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RegisteredDevice {
    /// Device id.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub device: DeviceId,
    /// Its network.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub network: NetworkId,
    /// Approval state.
    pub status: DeviceStatus,
    /// The device's bearer token for the API.
    pub token: String,
    /// Its certificate, when approved.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub certificate: Option<Signed<DeviceCert>>,
    /// The control plane's public key, to check certificates and tickets.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub control_plane_key: PublicKey,
}

/// A device as members see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct DeviceInfo {
    /// Device id.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: DeviceId,
    /// Its network.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub network: NetworkId,
    /// Its owner.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub owner: PersonId,
    /// Display name.
    pub name: String,
    /// Its key.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub public_key: PublicKey,
    /// Its libp2p peer id.
    pub peer_id: String,
    /// Approval state.
    pub status: DeviceStatus,
    /// What it can run.
    pub capabilities: Capabilities,
    /// Whether it is sending heartbeats.
    pub online: bool,
    /// Last heartbeat.
    pub last_seen_at_ms: Option<i64>,
    /// Load in the last heartbeat.
    pub load: DeviceLoad,
    /// Trust score in [0, 1] (see [`CheckRecord::trust`]).
    pub trust: f64,
    /// Checks of its results passed and failed.
    #[serde(default)]
    pub checks: CheckRecord,
    /// When it was quarantined for failing checks (it gets no jobs until an admin other than
    /// its owner releases it).
    #[serde(default)]
    pub quarantined_at_ms: Option<i64>,
    /// The terms it works on: its own, its owner's and the admins' in this network.
    #[serde(default)]
    pub terms: crate::terms::TermsLayers,
    /// How the control plane last reached it with a job, if it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<ConnectionPath>,
}

/// How the control plane's gateway reached a device with a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ConnectionPath {
    /// Through a relay circuit (else over a direct connection, hole-punched or not).
    pub relayed: bool,
    /// When.
    pub at_ms: i64,
}

/// Answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct HeartbeatResponse {
    /// The device's approval state (a revoked device stops).
    pub status: DeviceStatus,
    /// Seconds until the next heartbeat is due.
    pub interval_s: u64,
    /// The terms set for the device in the network (its owner's and the admins'), which it
    /// enforces along with its own.
    #[serde(default)]
    pub terms: crate::terms::TermsLayers,
}

/// Set one layer of a device's terms in the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SetTermsRequest {
    /// The layer: `owner` (the device's owner only) or `admins` (admins only). When left
    /// out, the owner's layer for the device's owner, the admins' for anyone else.
    #[serde(default)]
    pub layer: Option<crate::terms::TermsLayer>,
    /// The terms (replacing the layer's; the default terms clear it).
    pub terms: crate::terms::DeviceTerms,
}

/// A device's current certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CertificateResponse {
    /// The certificate.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub certificate: Signed<DeviceCert>,
    /// The control plane's public key.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub control_plane_key: PublicKey,
}

/// The control plane's public signing key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ControlPlaneKey {
    /// The key.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub public_key: PublicKey,
    /// The control plane's libp2p peer id (derived from the key), which presents the tickets
    /// of jobs it dispatches as gateway.
    #[serde(default)]
    pub peer_id: String,
    /// Relay multiaddrs devices should reserve a slot on (ending in `/p2p/<relay peer id>`).
    #[serde(default)]
    pub relays: Vec<String>,
}

/// Who may connect to a network's hosts: its approved devices and the gateway, as libp2p
/// peer ids. Hosts poll it and refuse connections from anyone else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct NetworkPeers {
    /// When the list was made, milliseconds since the Unix epoch.
    pub issued_at_ms: i64,
    /// The control plane's libp2p peer id (the gateway).
    pub gateway_peer: String,
    /// Peer ids of the network's approved devices.
    pub peers: Vec<String>,
}

/// What relays poll to learn whom to serve: a fresh certificate of every approved device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RelayAllowList {
    /// When the list was made, milliseconds since the Unix epoch.
    pub issued_at_ms: i64,
    /// The control plane's libp2p peer id (the gateway), always allowed.
    pub gateway_peer: String,
    /// One certificate per approved device, each signed for its network.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub certificates: Vec<Signed<DeviceCert>>,
}

/// A published workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct WorkloadInfo {
    /// Its network.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub network: NetworkId,
    /// BLAKE3 of the component.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub hash: Blake3Hash,
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Models it loads by name.
    pub models: Vec<String>,
    /// How its results are compared.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub comparison: Comparison,
    /// Who published it.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub publisher: PersonId,
    /// Component size in bytes.
    pub size: u64,
    /// Publication time.
    pub published_at_ms: i64,
    /// Whether it was yanked (no new jobs).
    pub yanked: bool,
}

/// A credit balance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Balance {
    /// The account's owner.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub person: PersonId,
    /// Credits.
    pub balance: i64,
}

/// One ledger entry of an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct LedgerEntryInfo {
    /// The transfer it belongs to.
    pub transfer: String,
    /// Transfer kind (`grant`, `job_reserve`, `job_settle`, `job_refund`, ...).
    pub kind: String,
    /// Description.
    pub memo: String,
    /// Signed amount for this account.
    pub amount: i64,
    /// The job, for job transfers.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub job: Option<JobId>,
    /// When.
    pub created_at_ms: i64,
}

/// Grant credits to a member (from the network's issuer account).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct GrantRequest {
    /// Who receives them.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub person: PersonId,
    /// How many (positive).
    pub amount: i64,
    /// Retrying with the same key grants once.
    pub idempotency_key: String,
    /// Description.
    #[serde(default)]
    pub memo: Option<String>,
}

/// The result of a transfer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct TransferInfo {
    /// Transfer id.
    pub id: String,
    /// Kind.
    pub kind: String,
    /// Whether this call created it (false: an earlier call with the same key did).
    pub created: bool,
}

/// The control plane's VRF key and check policy, to verify check selections offline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct VrfKeyInfo {
    /// The RFC 9381 suite (`ECVRF-EDWARDS25519-SHA512-TAI`).
    pub suite: String,
    /// The VRF public key (hex).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub public_key: VrfPublicKey,
    /// How check rates adapt per device.
    pub policy: CheckPolicy,
    /// How many ringers batched jobs carry.
    pub ringers: RingerPolicy,
}

/// Where the check of a settled job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CheckState {
    /// The VRF did not select it.
    NotSelected,
    /// Selected; waiting for its payload or a device to re-execute it.
    Selected,
    /// Being re-executed.
    Running,
    /// The re-execution disagreed; a third device breaks the tie.
    Disputed,
    /// The result was confirmed.
    Passed,
    /// The executor's result was wrong (re-executions or a ringer say so).
    Failed,
    /// The results disagreed and no majority of owners who may judge formed (three different
    /// results, or no third owner to break the tie); nobody was penalised or paid, and the
    /// devices involved are checked like new ones again.
    Inconclusive,
    /// It could not be checked (no payload or no device in time); nobody was penalised.
    Unverifiable,
}

impl CheckState {
    /// The state's name as stored and sent.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckState::NotSelected => "not_selected",
            CheckState::Selected => "selected",
            CheckState::Running => "running",
            CheckState::Disputed => "disputed",
            CheckState::Passed => "passed",
            CheckState::Failed => "failed",
            CheckState::Inconclusive => "inconclusive",
            CheckState::Unverifiable => "unverifiable",
        }
    }

    /// Parse a stored state.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "not_selected" => CheckState::NotSelected,
            "selected" => CheckState::Selected,
            "running" => CheckState::Running,
            "disputed" => CheckState::Disputed,
            "passed" => CheckState::Passed,
            "failed" => CheckState::Failed,
            "inconclusive" => CheckState::Inconclusive,
            "unverifiable" => CheckState::Unverifiable,
            _ => return None,
        })
    }
}

/// The check of a settled job: the VRF decision with its proof, and what came of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CheckInfo {
    /// The job.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub job: JobId,
    /// Its executor.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub executor: DeviceId,
    /// The VRF selection (verify with [`Selection::verify`]).
    pub selection: Selection,
    /// Where the check stands.
    pub state: CheckState,
    /// Why it is checked: `vrf`, or `ringer` when a known-answer item failed.
    pub reason: CheckReason,
    /// The re-execution job (its receipt says what ran where).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub check_job: Option<JobId>,
    /// The device that re-executed it.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub verifier: Option<DeviceId>,
    /// The tie-break job, if there was one.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub tiebreak_job: Option<JobId>,
    /// The device that broke a tie.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub tiebreaker: Option<DeviceId>,
    /// When the executor's result was wrong: the hash of the verified result (download it
    /// from the job's payloads).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub verified_output: Option<Blake3Hash>,
    /// What happened, in words.
    pub detail: Option<String>,
    /// The control plane's own check of `selection` against its VRF key and the job's
    /// receipt, as [`Selection::verify`] makes it, for clients that cannot run the VRF (the
    /// web console). A client that can should verify for itself (`mesh job verify`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection_check: Option<SelectionCheck>,
}

/// Whether a published VRF selection holds up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SelectionCheck {
    /// The proof verifies, its output is the stated one, and the decision follows from it.
    pub holds: bool,
    /// Why it does not hold (empty when it does).
    #[serde(default)]
    pub detail: String,
}

/// Why a job runs: for a requester, or as the control plane's re-execution of another job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum JobPurpose {
    /// A requester's job.
    #[default]
    Job,
    /// The first re-execution of a selected job, on another owner's device.
    Check,
    /// The third run that breaks a tie when the first two disagree.
    Tiebreak,
}

impl JobPurpose {
    /// The purpose's name as stored and sent.
    pub fn as_str(self) -> &'static str {
        match self {
            JobPurpose::Job => "job",
            JobPurpose::Check => "check",
            JobPurpose::Tiebreak => "tiebreak",
        }
    }

    /// Parse a stored purpose.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "job" => JobPurpose::Job,
            "check" => JobPurpose::Check,
            "tiebreak" => JobPurpose::Tiebreak,
            _ => return None,
        })
    }
}

impl fmt::Display for JobPurpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a settled job is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum CheckReason {
    /// The control plane's VRF selected it for re-execution.
    #[default]
    Vrf,
    /// A known-answer item mixed into it came back wrong.
    Ringer,
}

impl CheckReason {
    /// The reason's name as stored and sent.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckReason::Vrf => "vrf",
            CheckReason::Ringer => "ringer",
        }
    }

    /// Parse a stored reason.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "vrf" => CheckReason::Vrf,
            "ringer" => CheckReason::Ringer,
            _ => return None,
        })
    }
}

impl fmt::Display for CheckReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for a device.
    Queued,
    /// A device was chosen and holds a lease.
    Assigned,
    /// The device started it.
    Running,
    /// Finished with a receipt.
    Done,
    /// Gave up.
    Failed,
}

impl JobState {
    /// The state's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Assigned => "assigned",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
        }
    }

    /// Parse a stored state.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "queued" => Some(JobState::Queued),
            "assigned" => Some(JobState::Assigned),
            "running" => Some(JobState::Running),
            "done" => Some(JobState::Done),
            "failed" => Some(JobState::Failed),
            _ => None,
        }
    }
}

/// Ask for a job to be scheduled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SubmitJobRequest {
    /// The workload's component hash.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub workload: Blake3Hash,
    /// BLAKE3 of the input.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub input: Blake3Hash,
    /// Input size in bytes.
    pub input_size: u64,
    /// Retrying with the same key returns the same job (and charges once).
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// A job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct JobInfo {
    /// Job id.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: JobId,
    /// `job`, or the control plane re-executing another job: `check`, `tiebreak`.
    #[serde(default)]
    pub purpose: JobPurpose,
    /// For a `check` or `tiebreak`: the job it re-executes.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub verifies: Option<JobId>,
    /// Its network.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub network: NetworkId,
    /// Who asked for it (and pays).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub requester: PersonId,
    /// The workload.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub workload: Blake3Hash,
    /// The input's hash.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub input: Blake3Hash,
    /// Input size.
    pub input_size: u64,
    /// Credits reserved for it.
    pub price: i64,
    /// State.
    pub state: JobState,
    /// The device holding it.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub executor: Option<DeviceId>,
    /// Assignments so far.
    pub attempts: u32,
    /// When the current lease ends.
    pub lease_expires_at_ms: Option<i64>,
    /// The executor's receipt, when done.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub receipt: Option<RunReceipt>,
    /// Why it failed.
    pub error: Option<String>,
    /// Creation time.
    pub created_at_ms: i64,
    /// Last change.
    pub updated_at_ms: i64,
}

/// What the control plane signs to let one device run one job for one requester.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobTicket {
    /// The job.
    pub job: JobId,
    /// Its network.
    pub network: NetworkId,
    /// Who pays.
    pub requester: PersonId,
    /// The only device that may run it.
    pub executor: DeviceId,
    /// The executor's libp2p peer id.
    pub executor_peer: String,
    /// The libp2p peer id that may present the ticket: the requesting device, or the
    /// control plane when it acts as gateway.
    pub requester_peer: String,
    /// The component.
    pub workload: Blake3Hash,
    /// The input's hash.
    pub input: Blake3Hash,
    /// Price in credits.
    pub price: i64,
    /// Until when the ticket is valid.
    pub expires_at_ms: i64,
    /// The workload's name in the registry (for the executor's terms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_name: Option<String>,
    /// Who published the workload (for the executor's terms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher: Option<PersonId>,
    /// The requester's role in the network (for the executor's terms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester_role: Option<Role>,
}

/// A scheduled job and, when a device was assigned, the ticket to present to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct JobAssignment {
    /// The job.
    pub job: JobInfo,
    /// The signed ticket, when assigned.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub ticket: Option<Signed<JobTicket>>,
    /// The executor's libp2p peer id, when assigned.
    pub executor_peer_id: Option<String>,
    /// While it is queued: why no device has taken it (busy devices, terms that refuse it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

/// The executor reports a finished run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CompleteJobRequest {
    /// The receipt, signed by the executing device (domain `receipt`).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub receipt: Signed<RunReceipt>,
}

/// The executor reports a failed run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct FailJobRequest {
    /// Why.
    pub reason: String,
    /// Whether another device could succeed (the job is requeued) or not (it fails).
    #[serde(default)]
    pub retryable: bool,
    /// For a requester's reassign: the executor (libp2p peer id) that failed. When the job
    /// has meanwhile moved to another device (its lease expired), that assignment is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor_peer: Option<String>,
}

/// Run a job through the control plane as gateway: it schedules the job, sends it to the
/// executor over libp2p and answers with the result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RunJobRequest {
    /// The workload's component hash.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub workload: Blake3Hash,
    /// The input document (sent to the workload as JSON).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub input: serde_json::Value,
    /// Retrying with the same key finds the same job (and charges once).
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// The result of a job run through the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RunJobResponse {
    /// The job, settled.
    pub job: JobInfo,
    /// The output document, as JSON.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub output: serde_json::Value,
    /// The executor's receipt (checked by the gateway).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub receipt: RunReceipt,
    /// The device that ran it.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub executor: DeviceId,
    /// Its libp2p peer id.
    pub executor_peer: String,
    /// Whether the answer came over a relay circuit (false: a direct connection).
    pub relayed: bool,
    /// Executors tried.
    pub attempts: u32,
}

/// The answer to `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// `sqlite` or `postgres`.
    pub database: String,
    /// Wire protocol version.
    pub protocol_version: u32,
}
