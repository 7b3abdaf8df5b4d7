-- The version of each image that nodes following "latest" get. Versions themselves live in
-- the chunk store (data_dir/images/manifests); rollback is pointing this back.
CREATE TABLE image_latest (
    name TEXT PRIMARY KEY NOT NULL,
    version TEXT NOT NULL
);
