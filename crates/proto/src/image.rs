//! Image manifests: an image version as an ordered list of content-addressed chunks.
