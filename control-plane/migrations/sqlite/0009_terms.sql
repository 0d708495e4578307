-- A device's terms: the ones written in its own config (reported by its heartbeats), and the
-- ones its owner and the network's admins set for it here. A job must pass all three. JSON
-- of `mesh_proto::terms::DeviceTerms`; '{}' allows everything.
ALTER TABLE devices ADD COLUMN host_terms TEXT NOT NULL DEFAULT '{}';
ALTER TABLE devices ADD COLUMN owner_terms TEXT NOT NULL DEFAULT '{}';
ALTER TABLE devices ADD COLUMN admin_terms TEXT NOT NULL DEFAULT '{}';
-- Percent of its CPU the device's other processes used, in its last heartbeat (NULL: unknown).
ALTER TABLE devices ADD COLUMN load_others_busy INTEGER;
