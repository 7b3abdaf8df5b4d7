-- Root's crypt(3) password hash and SSH public keys (a JSON array of authorized_keys lines)
-- written into the node's installed system.
ALTER TABLE nodes ADD COLUMN root_password_hash TEXT;
ALTER TABLE nodes ADD COLUMN ssh_authorized_keys TEXT;
