//! The audit log: what admins and the control plane did to a network, one typed action per
//! entry, written in the same transaction as the change it records.

use crate::domain::DomainResult;
use crate::store::{Tx, now_ms};
use mesh_proto::NetworkId;

/// What an audit entry records. The text (`as_str`) is what the log stores and shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuditAction {
    /// A network was created.
    NetworkCreate,
    /// Its policy changed.
    NetworkPolicy,
    /// A member's role changed.
    MemberRole,
    /// A member was removed (and their devices revoked).
    MemberRemove,
    /// An invite was made.
    InviteCreate,
    /// A person invite was accepted.
    InviteAccept,
    /// An invite was revoked.
    InviteRevoke,
    /// A device registered.
    DeviceRegister,
    /// An admin approved a device.
    DeviceApprove,
    /// An admin revoked a device.
    DeviceRevoke,
    /// A device failed enough checks to get no more jobs.
    DeviceQuarantine,
    /// An admin lifted a device's quarantine.
    DeviceRelease,
    /// A device's terms were set in the network.
    DeviceTerms,
    /// An admin granted credits.
    CreditsGrant,
    /// A workload was published.
    WorkloadPublish,
    /// A workload was yanked.
    WorkloadYank,
    /// A device failed a check.
    CheckFailed,
    /// A check could not decide.
    CheckInconclusive,
    /// An executor reported a receipt that contradicts the one on record.
    ConflictingReceipt,
    /// A batch was cancelled.
    BatchCancelled,
}

impl AuditAction {
    /// The action's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::NetworkCreate => "network.create",
            AuditAction::NetworkPolicy => "network.policy",
            AuditAction::MemberRole => "member.role",
            AuditAction::MemberRemove => "member.remove",
            AuditAction::InviteCreate => "invite.create",
            AuditAction::InviteRevoke => "invite.revoke",
            AuditAction::InviteAccept => "invite.accept",
            AuditAction::DeviceRegister => "device.register",
            AuditAction::DeviceApprove => "device.approved",
            AuditAction::DeviceRevoke => "device.revoked",
            AuditAction::DeviceQuarantine => "device_quarantined",
            AuditAction::DeviceRelease => "device.released",
            AuditAction::DeviceTerms => "device.terms",
            AuditAction::CreditsGrant => "credits.grant",
            AuditAction::WorkloadPublish => "workload.publish",
            AuditAction::WorkloadYank => "workload.yank",
            AuditAction::CheckFailed => "check_failed",
            AuditAction::CheckInconclusive => "check_inconclusive",
            AuditAction::ConflictingReceipt => "conflicting_receipt",
            AuditAction::BatchCancelled => "batch.cancel",
        }
    }
}

/// Like [`record`], but once per `key` and action: for what a caller can provoke again and
/// again (a conflicting receipt for one job), which would otherwise flood the log.
pub async fn record_once(
    tx: &mut Tx,
    key: &str,
    network: Option<&NetworkId>,
    actor: &str,
    action: AuditAction,
    detail: &str,
) -> DomainResult<()> {
    let id = format!("audit_{}_{key}", action.as_str());
    crate::store::audit::append_with_id(tx, &id, network, actor, action.as_str(), detail, now_ms())
        .await?;
    Ok(())
}

/// Append an entry to `network`'s audit log (or the control plane's, for `None`) inside `tx`.
pub async fn record(
    tx: &mut Tx,
    network: Option<&NetworkId>,
    actor: &str,
    action: AuditAction,
    detail: &str,
) -> DomainResult<()> {
    crate::store::audit::append(tx, network, actor, action.as_str(), detail, now_ms()).await?;
    Ok(())
}
