//go:build !linux

package unpack

// LowerPriority does nothing here.
func LowerPriority(int) (restore func()) { return func() {} }
