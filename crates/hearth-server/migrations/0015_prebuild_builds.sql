-- Prebuilds of configurations that build their image (build.dockerfile, features): `up`
-- starts from the prebuild's image instead of building, so it needs what the features
-- added to the settings. `config_hash` then covers the build's inputs instead of the
-- image id, and `image` is the built image (kept from removal while the row lives).
-- JSON: the features' lifecycle commands, labelled, in installation order; NULL (as in
-- rows from before) when no feature was installed.
ALTER TABLE prebuilds ADD COLUMN feature_lifecycle TEXT;
