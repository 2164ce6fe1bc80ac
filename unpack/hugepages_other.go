//go:build !linux

package unpack

// hugePagesWhileAlive does nothing here.
func hugePagesWhileAlive(alloc, b []byte) {}
