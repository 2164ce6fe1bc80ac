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
	// AnnotationContainer names the one container of a pod the checkpoint
	// is for (its name in the pod spec): a pod's annotations reach all of
	// its containers, init containers and sidecars included, and the others
	// then start cold without trying.
	AnnotationContainer = "snapboot.dev/container"
)

// Annotations Kubernetes and containerd's CRI put in a container's spec.
const (
	// criContainerName is the container's name in its pod (containerd's
	// CRI sets it in every container's spec).
	criContainerName = "io.kubernetes.cri.container-name"
	// criSandboxNamespace is the Kubernetes namespace of the container's
	// pod (containerd's CRI sets it; a pod's own annotations cannot, since
	// only snapboot.dev/* pass through pod_annotations).
	criSandboxNamespace = "io.kubernetes.cri.sandbox-namespace"
	// kubeletRestartCount is how many times the kubelet has restarted the
	// container: the kubelet sets it in the CRI container's annotations,
	// and containerd copies it into the spec if the runtime's
	// container_annotations allow it (snapboot's drop-in does).
	kubeletRestartCount = "io.kubernetes.container.restartCount"
)
