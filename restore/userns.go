package restore

import (
	"fmt"
	"os"
	"path/filepath"
)

// shareWithUserNamespace lets CRIU read the images in imagesDir from inside
// the spec's user namespace. CRIU opens most images in the restored tasks,
// which are then the namespace's root: a user the node maps to another id,
// whose capabilities count only for files owned by ids the namespace maps.
// The images are root's, mode 600, as CRIU dumped them, so each one (a hard
// link of the cache's, whose files keep the mode, or a file confine
// rewrote) becomes readable by all, and imagesDir and scratch (the
// restore's directory in the cache's tmp/, which a streamed page image's
// relative link goes up through) searchable by all: the cache root above
// them is root's alone (see cache.Open), so only a holder of CRIU's
// descriptor of imagesDir reaches them. CRIU closes it before the restored
// tasks run. While they restore, they run as the node's id of the
// namespace's root, and a process of that id that sees them could open
// the descriptor through /proc/<pid>/fd: no one else may have that id (a
// range of it delegated to a user in /etc/subuid, say), as for any
// container in a user namespace, whose files and processes it owns.
func shareWithUserNamespace(imagesDir, scratch string) error {
	for _, dir := range []string{scratch, imagesDir} {
		if err := os.Chmod(dir, 0o711); err != nil {
			return fmt.Errorf("images for a user namespace: %w", err)
		}
	}
	entries, err := os.ReadDir(imagesDir)
	if err != nil {
		return fmt.Errorf("images for a user namespace: %w", err)
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue // a streamed page image's link: the stream serves anyone
		}
		if err := os.Chmod(filepath.Join(imagesDir, e.Name()), 0o644); err != nil {
			return fmt.Errorf("images for a user namespace: %w", err)
		}
	}
	return nil
}
