// Package oci owns snapboot's checkpoint artifact: the reference that names
// it, its format (media types, manifest rules, the metadata config blob), and
// the connection to the registry that stores it.
//
// Format v1 is an OCI image manifest (schemaVersion 2) with
//   - artifactType application/vnd.snapboot.checkpoint.v1 (or, as oras push
//     writes it with --config, no artifactType and a config of the type below);
//   - a config blob application/vnd.snapboot.checkpoint.config.v1+json holding
//     Metadata;
//   - exactly one layer application/vnd.snapboot.criu.images.v1.tar+zstd: the
//     CRIU image directory as a zstd-compressed tar of regular files;
//   - at most one layer application/vnd.snapboot.rootfs.diff.v1.tar+zstd: the
//     container's rootfs changes, a zstd-compressed tar in containerd's diff
//     (OCI layer) format, whiteouts included.
package oci
