//go:build linux

package unpack

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

const (
	fuzzMaxBytes   = 1 << 20
	fuzzMaxEntries = 256
)

// fuzzEscapeName is the name of the file the escaping seeds of FuzzTar try
// to write: an input that gets out of the extraction directory, through a
// symlink to / or with ".." components, leaves it in / or in a directory
// above the extraction's, where noEscape looks for it.
const fuzzEscapeName = "snapboot-unpack-fuzz-escaped"

// FuzzTar feeds arbitrary bytes to Tar in both modes and checks that nothing
// is written outside the extraction directory and that what is written
// inside is of a kind the mode allows.
func FuzzTar(f *testing.F) {
	needRoot(f)
	f.Add(archive(f, symlink("a", "/"), reg("a/"+fuzzEscapeName, "")))
	f.Add(archive(f, reg("../../"+fuzzEscapeName, "")))
	rootBefore := dirNames(f, "/")
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, mode := range bothModes {
			tmp := t.TempDir()
			out := filepath.Join(tmp, "out")
			if err := os.Mkdir(out, 0o700); err != nil {
				t.Fatal(err)
			}
			opts := Options{Mode: mode, MaxBytes: fuzzMaxBytes, MaxEntries: fuzzMaxEntries}
			Tar(context.Background(), bytes.NewReader(data), out, opts)
			onlyOut(t, tmp)
			noEscape(t, out, rootBefore)
			checkTree(t, mode, out)
		}
	})
}

// noEscape fails if the extraction into out left fuzzEscapeName in a
// directory above out, up to /, or added a name to / (whose names were
// rootBefore). onlyOut sees only out's parent: a write through a symlink
// to / lands elsewhere. Both checks stay cheap enough for every input.
func noEscape(t *testing.T, out string, rootBefore map[string]bool) {
	t.Helper()
	for d := filepath.Dir(out); ; d = filepath.Dir(d) {
		p := filepath.Join(d, fuzzEscapeName)
		if _, err := os.Lstat(p); err == nil {
			os.RemoveAll(p) // the next input starts clean
			t.Fatalf("extraction wrote outside its directory: %s", p)
		}
		if d == "/" {
			break
		}
	}
	for name := range dirNames(t, "/") {
		if !rootBefore[name] {
			t.Fatalf("extraction wrote outside its directory: /%s appeared", name)
		}
	}
}

// dirNames is the set of names in directory dir.
func dirNames(t testing.TB, dir string) map[string]bool {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, d := range des {
		names[d.Name()] = true
	}
	return names
}

// checkTree checks every file under out against what mode allows.
func checkTree(t *testing.T, mode Mode, out string) {
	t.Helper()
	var total int64
	seen := map[uint64]bool{}
	err := filepath.WalkDir(out, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(out, p)
		if strings.HasPrefix(d.Name(), whiteoutPrefix) {
			t.Errorf("%s: whiteout name written", rel)
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		m := fi.Mode()
		if mode == CRIUImages && m&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != 0 {
			t.Errorf("%s: special mode bits %v in CRIU images", rel, m)
		}
		if !m.IsDir() && m&(fs.ModeSetuid|fs.ModeSetgid) != 0 {
			t.Errorf("%s: setuid or setgid file %v", rel, m)
		}
		switch {
		case m.IsDir():
		case m.IsRegular():
			if !seen[st.Ino] {
				seen[st.Ino] = true
				total += fi.Size()
			}
		case m&fs.ModeSymlink != 0 && mode == RootfsDiff:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if j := path.Join(path.Dir(filepath.ToSlash(rel)), target); !path.IsAbs(target) && (j == ".." || strings.HasPrefix(j, "../")) {
				t.Errorf("%s: symlink to %q leaves the layer", rel, target)
			}
		case m&fs.ModeCharDevice != 0 && mode == RootfsDiff:
			if st.Rdev != 0 {
				t.Errorf("%s: device %d is not a whiteout", rel, st.Rdev)
			}
		default:
			t.Errorf("%s: %v not allowed in %v", rel, m, mode)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if total > fuzzMaxBytes {
		t.Errorf("%d bytes written, limit %d", total, fuzzMaxBytes)
	}
}

// fuzzSeeds are the archives in testdata/fuzz/FuzzTar. To keep them small
// (the corpus format spells each zero byte in four), each has one or two
// entries and all but "complete" lack the end-of-archive marker: they are
// extracted all the same and then rejected as truncated.
func fuzzSeeds(t testing.TB) map[string][]byte {
	trim := func(b []byte) []byte { return b[:len(b)-2*blockSize] }
	gnu := reg(strings.Repeat("n", 120), "")
	gnu.Format = tar.FormatGNU
	pax := reg("p", "")
	pax.PAXRecords = map[string]string{"SCHILY.xattr.user.a": "b"}
	ro := dir("ro")
	ro.Mode = 0o555
	return map[string][]byte{
		"complete":  archive(t, ro),
		"file":      trim(archive(t, reg("d/f", "hello"))),
		"links":     trim(archive(t, symlink("d/s", "../f"), hardlink("e/h", "d/s"))),
		"whiteouts": trim(archive(t, reg(".wh.x", ""), reg("d/.wh..wh..opq", ""))),
		"escape":    trim(archive(t, symlink("a", "/"), reg("a/evil", ""))),
		"traversal": trim(archive(t, reg("../evil", ""))),
		"device":    trim(archive(t, typed("c", tar.TypeChar))),
		"gnu":       trim(archive(t, gnu)),
		"pax":       trim(archive(t, pax)),
	}
}

// TestWriteFuzzSeeds regenerates the seed corpus when
// UNPACK_WRITE_FUZZ_SEEDS=1 is set.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("UNPACK_WRITE_FUZZ_SEEDS") != "1" {
		t.Skip("set UNPACK_WRITE_FUZZ_SEEDS=1 to regenerate testdata/fuzz/FuzzTar")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzTar")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range fuzzSeeds(t) {
		content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", data)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
