-- How the control plane's gateway last reached the device: 1 through a relay, 0 directly
-- (NULL: it never has), and when.
ALTER TABLE devices ADD COLUMN path_relayed INTEGER;
ALTER TABLE devices ADD COLUMN path_at INTEGER;
