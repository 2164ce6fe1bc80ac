//go:build !linux

package unpack

// adviseHugePages does nothing here.
func adviseHugePages([]byte) {}
