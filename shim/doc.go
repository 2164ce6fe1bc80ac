// Package shim is snapboot's ttrpc task service. It wraps containerd's runc
// task service: a container whose spec carries the snapboot.dev/checkpoint
// annotation is created from a CRIU checkpoint (runc's restore path), and any
// failure before the restored process runs turns into an ordinary cold start.
// Everything else is handled by the runc task service unchanged.
package shim
