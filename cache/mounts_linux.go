//go:build linux

package cache

import (
	"errors"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// isMountPoint reports whether path is on another file system than its
// parent directory: a streamed restore's mount (see package streamfs), in
// use.
func isMountPoint(path string) bool {
	var st, parent unix.Stat_t
	if unix.Lstat(path, &st) != nil || unix.Stat(filepath.Dir(path), &parent) != nil {
		return false
	}
	return st.Dev != parent.Dev
}

// unmountDead unmounts and removes path if statting it failed with
// ENOTCONN: a streamed restore's mount whose shim died. It reports whether
// path was such a mount.
func unmountDead(path string, statErr error) bool {
	if !errors.Is(statErr, unix.ENOTCONN) {
		return false
	}
	if unix.Unmount(path, unix.MNT_FORCE|unix.MNT_DETACH) == nil { // FORCE ends the FUSE connection
		os.Remove(path)
	}
	return true
}
