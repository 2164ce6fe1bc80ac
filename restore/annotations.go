package restore

// RuntimeName is the containerd runtime type of the snapboot shim.
const RuntimeName = "io.containerd.snapboot.v1"

// Annotations read from the container's OCI spec.
const (
	// AnnotationCheckpoint names the checkpoint to restore: an OCI reference
	// by tag or digest, REGISTRY/REPOSITORY:TAG or REGISTRY/REPOSITORY@sha256:...
	AnnotationCheckpoint = "snapboot.dev/checkpoint"
	// AnnotationCRIUOptions adds allowlisted CRIU options to the restore,
	// comma-separated (see criuconf.Allowlist).
	AnnotationCRIUOptions = "snapboot.dev/criu-options"
)
