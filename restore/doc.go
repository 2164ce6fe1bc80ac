// Package restore decides whether and how a container is restored from a
// checkpoint, and prepares everything runc's restore needs: it reads the
// request from the spec's annotations, applies the node's policy, resolves
// and pulls the artifact into the node cache, checks it can run here,
// unpacks it, writes the CRIU config into the bundle and stacks the
// checkpoint's rootfs changes on the container's rootfs. Every failure is
// returned as an *Error, and the caller cold-starts the container.
package restore
