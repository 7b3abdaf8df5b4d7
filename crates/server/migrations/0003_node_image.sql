-- The image a node installs: NAME (follows latest) or NAME@VERSION (pinned).
ALTER TABLE nodes ADD COLUMN image TEXT;
