-- The disk layout assigned to a node (a file name in the layouts directory, without .toml),
-- and the block tree its agent last reported (metalcast_proto::layout::BlockTree as JSON).
ALTER TABLE nodes ADD COLUMN layout TEXT;
ALTER TABLE nodes ADD COLUMN block_tree TEXT;
