-- Peer-to-peer job paths: which libp2p peer may present a job's ticket (the requesting
-- device, or the control plane as gateway), and which devices already had a go at it.
ALTER TABLE jobs ADD COLUMN requester_peer TEXT;
ALTER TABLE jobs ADD COLUMN tried_devices TEXT NOT NULL DEFAULT '';
