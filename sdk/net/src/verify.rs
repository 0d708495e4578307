//! Offline checks of what the control plane signs, as peers and relays make them: device
//! certificates and job tickets, against the control plane's public key.

use libp2p::PeerId;
use mesh_proto::api::JobTicket;
use mesh_proto::device::DeviceCert;
use mesh_proto::{NetworkId, PublicKey, RunReceipt, SignDomain, Signed};

/// Why a certificate or ticket was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The signature is not the control plane's for this network.
    #[error("not signed by the control plane for this network")]
    BadSignature,
    /// It has expired.
    #[error("expired")]
    Expired,
    /// It is for another network.
    #[error("issued for another network")]
    WrongNetwork,
    /// It names another peer than the one presenting it.
    #[error("issued to another peer")]
    WrongPeer,
    /// It names another executor.
    #[error("issued to another executor")]
    WrongExecutor,
    /// The certificate's peer id does not match its key.
    #[error("peer id does not match the key")]
    Inconsistent,
    /// A receipt does not pin what was asked and what came back.
    #[error("receipt does not match the job: {0}")]
    ReceiptMismatch(&'static str),
}

/// Check a device certificate: the control plane's signature for the network the certificate
/// names (or `network`, when given), unexpired at `now_ms`, and held by `peer` when given.
/// Returns the certificate.
pub fn device_cert(
    cert: &Signed<DeviceCert>,
    control_plane: &PublicKey,
    network: Option<&NetworkId>,
    peer: Option<&PeerId>,
    now_ms: u64,
) -> Result<DeviceCert, VerifyError> {
    let claimed = cert.peek().map_err(|_| VerifyError::BadSignature)?;
    if network.is_some_and(|n| *n != claimed.network) {
        return Err(VerifyError::WrongNetwork);
    }
    let cert = cert
        .verify(control_plane, SignDomain::DeviceCert, &claimed.network)
        .map_err(|_| VerifyError::BadSignature)?;
    if cert.expires_at_ms <= now_ms {
        return Err(VerifyError::Expired);
    }
    if cert.public_key.peer_id() != cert.peer_id {
        return Err(VerifyError::Inconsistent);
    }
    if peer.is_some_and(|p| p.to_string() != cert.peer_id) {
        return Err(VerifyError::WrongPeer);
    }
    Ok(cert)
}

/// Check a job ticket as its executor: signed by the control plane for `network`, naming
/// `executor_peer` as executor, presented by the peer it names as requester, unexpired.
pub fn job_ticket(
    ticket: &Signed<JobTicket>,
    control_plane: &PublicKey,
    network: &NetworkId,
    executor_peer: &PeerId,
    presented_by: &PeerId,
    now_ms: u64,
) -> Result<JobTicket, VerifyError> {
    let ticket = ticket
        .verify(control_plane, SignDomain::JobTicket, network)
        .map_err(|_| VerifyError::BadSignature)?;
    if ticket.network != *network {
        return Err(VerifyError::WrongNetwork);
    }
    if ticket.executor_peer != executor_peer.to_string() {
        return Err(VerifyError::WrongExecutor);
    }
    if ticket.requester_peer != presented_by.to_string() {
        return Err(VerifyError::WrongPeer);
    }
    if ticket.expires_at_ms <= now_ms as i64 {
        return Err(VerifyError::Expired);
    }
    Ok(ticket)
}

/// The Ed25519 key inside an Ed25519 peer id (such peer ids embed their key).
pub fn peer_public_key(peer: &PeerId) -> Option<PublicKey> {
    let key = libp2p::identity::PublicKey::try_decode_protobuf(peer.as_ref().digest()).ok()?;
    let key = key.try_into_ed25519().ok()?;
    PublicKey::from_bytes(key.to_bytes()).ok()
}

/// Check an executor's receipt as the requester: signed by the executor the ticket names, for
/// this job and ticket, pinning the ticket's component and input and the output received.
pub fn receipt(
    receipt: &Signed<RunReceipt>,
    ticket: &Signed<JobTicket>,
    output: &[u8],
) -> Result<RunReceipt, VerifyError> {
    let claims = ticket.peek().map_err(|_| VerifyError::BadSignature)?;
    let executor: PeerId = claims
        .executor_peer
        .parse()
        .map_err(|_| VerifyError::WrongExecutor)?;
    let key = peer_public_key(&executor).ok_or(VerifyError::WrongExecutor)?;
    let receipt = receipt
        .verify(&key, SignDomain::Receipt, &claims.network)
        .map_err(|_| VerifyError::BadSignature)?;
    if receipt.job != Some(claims.job) {
        return Err(VerifyError::ReceiptMismatch("job"));
    }
    if receipt.ticket != Some(ticket.hash()) {
        return Err(VerifyError::ReceiptMismatch("ticket"));
    }
    if receipt.component != claims.workload {
        return Err(VerifyError::ReceiptMismatch("component"));
    }
    if receipt.input != claims.input {
        return Err(VerifyError::ReceiptMismatch("input"));
    }
    if receipt.output != mesh_proto::Blake3Hash::of(output) {
        return Err(VerifyError::ReceiptMismatch("output"));
    }
    Ok(receipt)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::SigningKey;

    fn cert(
        cp: &SigningKey,
        device: &SigningKey,
        network: NetworkId,
        expires: u64,
    ) -> Signed<DeviceCert> {
        let c = DeviceCert {
            version: 1,
            device: mesh_proto::DeviceId::from_bytes([1; 16]),
            network,
            owner: mesh_proto::PersonId::from_bytes([2; 16]),
            public_key: device.public_key(),
            peer_id: device.public_key().peer_id(),
            issued_at_ms: 0,
            expires_at_ms: expires,
        };
        Signed::sign(&c, cp, SignDomain::DeviceCert, &network).unwrap()
    }

    #[test]
    fn peer_ids_agree_with_libp2p() {
        let key = SigningKey::from_seed([7; 32]);
        let libp2p_peer = crate::keypair(&key).public().to_peer_id();
        assert_eq!(libp2p_peer.to_string(), key.public_key().peer_id());
        assert_eq!(peer_public_key(&libp2p_peer), Some(key.public_key()));
    }

    #[test]
    fn certificates_are_checked() {
        let cp = SigningKey::from_seed([1; 32]);
        let other_cp = SigningKey::from_seed([2; 32]);
        let device = SigningKey::from_seed([3; 32]);
        let net = NetworkId::from_bytes([9; 16]);
        let other_net = NetworkId::from_bytes([8; 16]);
        let peer: PeerId = crate::keypair(&device).public().to_peer_id();
        let good = cert(&cp, &device, net, 2_000);
        assert!(device_cert(&good, &cp.public_key(), Some(&net), Some(&peer), 1_000).is_ok());
        assert_eq!(
            device_cert(&good, &cp.public_key(), Some(&net), Some(&peer), 2_000),
            Err(VerifyError::Expired)
        );
        assert_eq!(
            device_cert(&good, &other_cp.public_key(), None, None, 1_000),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            device_cert(&good, &cp.public_key(), Some(&other_net), None, 1_000),
            Err(VerifyError::WrongNetwork)
        );
        let stranger = crate::keypair(&SigningKey::from_seed([4; 32]))
            .public()
            .to_peer_id();
        assert_eq!(
            device_cert(&good, &cp.public_key(), None, Some(&stranger), 1_000),
            Err(VerifyError::WrongPeer)
        );
    }
}
