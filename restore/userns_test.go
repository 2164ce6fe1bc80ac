package restore

import (
	"os"
	"path/filepath"
	"testing"
)

// The images a restore into a user namespace reads become readable, and
// their directories searchable, by the namespace's root; a streamed page
// image's link is left alone.
func TestShareWithUserNamespace(t *testing.T) {
	scratch := filepath.Join(t.TempDir(), "scratch")
	images := filepath.Join(scratch, "images")
	if err := os.MkdirAll(images, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(scratch, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(images, "core-1.img"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../mnt/pages-1.img", filepath.Join(images, "pages-1.img")); err != nil {
		t.Fatal(err)
	}
	if err := shareWithUserNamespace(images, scratch); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]os.FileMode{scratch: 0o711, images: 0o711, filepath.Join(images, "core-1.img"): 0o644} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %o, want %o", path, fi.Mode().Perm(), want)
		}
	}
	if fi, err := os.Lstat(filepath.Join(images, "pages-1.img")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the page image's link: %v, %v", fi, err)
	}
}
