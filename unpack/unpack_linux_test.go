//go:build linux

package unpack

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// ent is one archive entry for the test builders.
type ent struct {
	tar.Header
	body string
}

func reg(name, body string) ent {
	return ent{Header: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644}, body: body}
}

func dir(name string) ent {
	return ent{Header: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755}}
}

func symlink(name, target string) ent {
	return ent{Header: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}}
}

func hardlink(name, target string) ent {
	return ent{Header: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, Mode: 0o644}}
}

func typed(name string, typ byte) ent {
	return ent{Header: tar.Header{Typeflag: typ, Name: name, Mode: 0o644}}
}

// archive builds a tar stream, with its end-of-archive marker, in memory.
func archive(t testing.TB, ents ...ent) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := tar.NewWriter(&buf)
	for _, e := range ents {
		h := e.Header
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if h.ModTime.IsZero() && h.Typeflag != tar.TypeXGlobalHeader {
			h.ModTime = time.Unix(1700000000, 0)
		}
		if err := w.WriteHeader(&h); err != nil {
			t.Fatalf("WriteHeader(%q): %v", h.Name, err)
		}
		if _, err := io.WriteString(w, e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("extraction sets owners and creates device nodes: needs root")
	}
}

// extract runs Tar on data into tmp/out and returns tmp and out.
func extract(t *testing.T, mode Mode, data []byte) (tmp, out string, err error) {
	t.Helper()
	needRoot(t)
	tmp = t.TempDir()
	out = filepath.Join(tmp, "out")
	if err := os.Mkdir(out, 0o700); err != nil {
		t.Fatal(err)
	}
	_, err = Tar(context.Background(), bytes.NewReader(data), out, Options{Mode: mode})
	return tmp, out, err
}

// onlyOut fails unless tmp holds nothing but the directory "out".
func onlyOut(t testing.TB, tmp string) {
	t.Helper()
	des, err := os.ReadDir(tmp)
	if err != nil {
		t.Fatal(err)
	}
	if len(des) != 1 || des[0].Name() != "out" {
		var names []string
		for _, d := range des {
			names = append(names, d.Name())
		}
		t.Fatalf("extraction wrote outside its directory: %s holds %q", tmp, names)
	}
}

var bothModes = []Mode{CRIUImages, RootfsDiff}

func TestNames(t *testing.T) {
	tests := []struct {
		name   string
		ents   []ent
		unsafe bool
		want   string // a file that must exist afterwards
	}{
		{name: "absolute", ents: []ent{reg("/etc/evil", "x")}, unsafe: true},
		{name: "dotdot", ents: []ent{reg("../evil", "x")}, unsafe: true},
		{name: "inner dotdot", ents: []ent{reg("a/../../evil", "x")}, unsafe: true},
		{name: "harmless dotdot", ents: []ent{reg("a/../b", "x")}, unsafe: true},
		{name: "trailing dotdot", ents: []ent{dir("a/..")}, unsafe: true},
		{name: "file named dot", ents: []ent{reg(".", "x")}, unsafe: true},
		{name: "symlink named dot", ents: []ent{symlink(".", "x")}, unsafe: true},
		{name: "root dir entry skipped", ents: []ent{dir("./"), reg("./f", "x")}, want: "f"},
		{name: "dot components cleaned", ents: []ent{reg("./a/./b", "x")}, want: "a/b"},
		{name: "missing parents created", ents: []ent{reg("p/q/r", "x")}, want: "p/q/r"},
	}
	for _, mode := range bothModes {
		for _, tt := range tests {
			t.Run(mode.String()+"/"+tt.name, func(t *testing.T) {
				tmp, out, err := extract(t, mode, archive(t, tt.ents...))
				onlyOut(t, tmp)
				if tt.unsafe {
					if !errors.Is(err, ErrUnsafe) {
						t.Fatalf("err = %v, want ErrUnsafe", err)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if _, err := os.Lstat(filepath.Join(out, tt.want)); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
	// Parents made for an entry get mode 0755.
	t.Run("parent mode", func(t *testing.T) {
		_, out, err := extract(t, CRIUImages, archive(t, reg("p/f", "x")))
		if err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Stat(filepath.Join(out, "p")); err != nil || fi.Mode().Perm() != 0o755 {
			t.Fatalf("parent: %v %v, want mode 0755", fi, err)
		}
	})
}

// archive/tar never returns names with NUL bytes, so the check is tested on
// cleanName and the entry handler directly.
func TestNamesNUL(t *testing.T) {
	needRoot(t)
	for _, name := range []string{"a\x00b", "\x00", "d/\x00/../x"} {
		if _, problem := cleanName(name); problem == "" {
			t.Errorf("cleanName(%q) accepted", name)
		}
		x, err := newExtractor(t.TempDir(), Options{Mode: RootfsDiff})
		if err != nil {
			t.Fatal(err)
		}
		hdrs := []*tar.Header{
			{Typeflag: tar.TypeReg, Name: name},
			{Typeflag: tar.TypeLink, Name: "l", Linkname: name},
			{Typeflag: tar.TypeSymlink, Name: "s", Linkname: name},
		}
		for _, hdr := range hdrs {
			if err := x.entry(hdr, strings.NewReader("")); !errors.Is(err, ErrUnsafe) {
				t.Errorf("entry %q -> %q: err = %v, want ErrUnsafe", hdr.Name, hdr.Linkname, err)
			}
		}
		x.root.Close()
	}
	if _, problem := cleanName(""); problem == "" {
		t.Error(`cleanName("") accepted`)
	}
}

func TestEntryTypes(t *testing.T) {
	global := ent{Header: tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "g", PAXRecords: map[string]string{"comment": "hi"}}}
	char := typed("c", tar.TypeChar)
	char.Devmajor, char.Devminor = 1, 3
	tests := []struct {
		name string
		ents []ent
		// unsafe lists the modes that must reject the archive.
		unsafe []Mode
	}{
		{name: "char device", ents: []ent{char}, unsafe: bothModes},
		{name: "whiteout-like char device", ents: []ent{typed("w", tar.TypeChar)}, unsafe: bothModes},
		{name: "block device", ents: []ent{typed("b", tar.TypeBlock)}, unsafe: bothModes},
		{name: "fifo", ents: []ent{typed("p", tar.TypeFifo)}, unsafe: bothModes},
		{name: "contiguous file", ents: []ent{typed("c", tar.TypeCont)}, unsafe: bothModes},
		{name: "unknown type", ents: []ent{typed("z", 'Z')}, unsafe: bothModes},
		{name: "symlink", ents: []ent{symlink("s", "target")}, unsafe: []Mode{CRIUImages}},
		{name: "hard link", ents: []ent{reg("f", "x"), hardlink("h", "f")}, unsafe: []Mode{CRIUImages}},
		{name: "whiteout", ents: []ent{reg(".wh.f", "")}, unsafe: []Mode{CRIUImages}},
		{name: "opaque whiteout", ents: []ent{dir("d"), reg("d/.wh..wh..opq", "")}, unsafe: []Mode{CRIUImages}},
		{name: "whiteout dir component", ents: []ent{reg(".wh.d/f", "")}, unsafe: bothModes},
		{name: "regular file and dir", ents: []ent{dir("d"), reg("d/f", "x")}},
		{name: "PAX global header skipped", ents: []ent{global, reg("f", "x")}},
	}
	for _, mode := range bothModes {
		for _, tt := range tests {
			t.Run(mode.String()+"/"+tt.name, func(t *testing.T) {
				tmp, _, err := extract(t, mode, archive(t, tt.ents...))
				onlyOut(t, tmp)
				wantUnsafe := false
				for _, m := range tt.unsafe {
					wantUnsafe = wantUnsafe || m == mode
				}
				if wantUnsafe && !errors.Is(err, ErrUnsafe) {
					t.Fatalf("err = %v, want ErrUnsafe", err)
				}
				if !wantUnsafe && err != nil {
					t.Fatalf("err = %v, want success", err)
				}
			})
		}
	}
}

func TestErrorNamesEntry(t *testing.T) {
	_, _, err := extract(t, CRIUImages, archive(t, reg("ok", "x"), symlink("bad-link", "ok")))
	if err == nil || !strings.Contains(err.Error(), `entry "bad-link"`) {
		t.Fatalf("err = %v, want it to name the entry", err)
	}
}

func TestSymlinks(t *testing.T) {
	tests := []struct {
		name, link, target string
		unsafe             bool
	}{
		{name: "absolute", link: "usr/bin/x", target: "/etc/alternatives/x"},
		{name: "absolute root", link: "a", target: "/"},
		{name: "relative sibling", link: "a/b", target: "c"},
		{name: "relative up inside", link: "a/b/c", target: "../../d"},
		{name: "relative to root", link: "a/b", target: ".."},
		{name: "climbs out", link: "a", target: "../x"},
		{name: "climbs out from subdir", link: "a/b", target: "../../x"},
		{name: "climbs out then back", link: "a/b", target: "../../out/x"},
		{name: "climbs out mid-path", link: "a", target: "b/../../x"},
		{name: "just dotdot", link: "a", target: ".."},
		{name: "empty target", link: "a", target: "", unsafe: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			unsafe := tt.unsafe || strings.Contains(tt.name, "climbs") || tt.name == "just dotdot"
			e := symlink(tt.link, tt.target)
			e.Uid, e.Gid = 1234, 5678
			tmp, out, err := extract(t, RootfsDiff, archive(t, e))
			onlyOut(t, tmp)
			if unsafe {
				if !errors.Is(err, ErrUnsafe) {
					t.Fatalf("err = %v, want ErrUnsafe", err)
				}
				if _, err := os.Lstat(filepath.Join(out, tt.link)); err == nil {
					t.Fatal("rejected symlink was created")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(out, tt.link)
			got, err := os.Readlink(p)
			if err != nil || got != tt.target {
				t.Fatalf("Readlink = %q, %v; want %q", got, err, tt.target)
			}
			var st syscall.Stat_t
			if err := syscall.Lstat(p, &st); err != nil || st.Uid != 1234 || st.Gid != 5678 {
				t.Fatalf("owner = %d:%d (%v), want 1234:5678", st.Uid, st.Gid, err)
			}
		})
	}
}

// TestNoEscape checks that entries written through symlinks, hard links and
// whiteouts never reach outside the extraction directory, whatever os.Root
// has to stop at run time.
func TestNoEscape(t *testing.T) {
	needRoot(t)
	outside := t.TempDir()
	secret := filepath.Join(outside, "secret")
	if err := os.WriteFile(secret, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(outside, "d"), 0o700); err != nil {
		t.Fatal(err)
	}
	evilRoot := "snapboot-unpack-evil-" + filepath.Base(outside)
	t.Cleanup(func() { os.Remove("/" + evilRoot) })

	tests := []struct {
		name string
		ents []ent
		ok   bool // extraction may succeed (writing inside only)
	}{
		{name: "file through link to /", ents: []ent{symlink("a", "/"), reg("a/"+evilRoot, "x")}},
		{name: "file through link to outside", ents: []ent{symlink("a", outside), reg("a/evil", "x")}},
		{name: "dir through link to outside", ents: []ent{symlink("a", outside), dir("a/evil")}},
		{name: "overwrite through link", ents: []ent{symlink("a", outside), reg("a/secret", "pwned")}},
		{name: "symlink through link", ents: []ent{symlink("a", outside), symlink("a/evil", "/etc")}},
		{name: "chain escapes at resolution", ents: []ent{dir("d"), symlink("d/l", ".."), symlink("x", "d/l/.."), reg("x/evil", "x")}},
		{name: "dotdot traversal", ents: []ent{reg("../evil", "x")}},
		{name: "dotdot through dir", ents: []ent{dir("d"), reg("d/../../evil", "x")}},
		{name: "hard link to outside file", ents: []ent{symlink("a", outside), hardlink("h", "a/secret")}},
		{name: "hard link absolute", ents: []ent{hardlink("h", secret)}},
		{name: "hard link dotdot", ents: []ent{hardlink("h", "../secret")}},
		{name: "whiteout through link", ents: []ent{symlink("a", outside), reg("a/.wh.secret", "")}},
		{name: "opaque through link", ents: []ent{symlink("a", outside), reg("a/d/.wh..wh..opq", "")}},
		{name: "replace link to outside file", ents: []ent{symlink("a", secret), reg("a", "mine")}, ok: true},
		{name: "replace link to outside dir", ents: []ent{symlink("a", outside), dir("a"), reg("a/f", "mine")}, ok: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmp, out, err := extract(t, RootfsDiff, archive(t, tt.ents...))
			if tt.ok && err != nil {
				t.Fatal(err)
			}
			if !tt.ok && err == nil {
				t.Fatal("extraction succeeded")
			}
			onlyOut(t, tmp)
			des, _ := os.ReadDir(outside)
			if len(des) != 2 {
				t.Fatalf("outside dir changed: %v", des)
			}
			if b, err := os.ReadFile(secret); err != nil || string(b) != "secret" {
				t.Fatalf("secret = %q, %v", b, err)
			}
			var st syscall.Stat_t
			if err := syscall.Stat(secret, &st); err != nil || st.Nlink != 1 {
				t.Fatalf("secret has %d links (%v)", st.Nlink, err)
			}
			if _, err := unix.Lgetxattr(filepath.Join(outside, "d"), opaqueXattr, nil); err == nil {
				t.Fatal("opaque xattr set outside")
			}
			if _, err := os.Lstat("/" + evilRoot); err == nil {
				t.Fatal("wrote to /")
			}
			if tt.ok {
				if fi, err := os.Lstat(filepath.Join(out, "a")); err != nil || fi.Mode()&fs.ModeSymlink != 0 {
					t.Fatalf("a: %v %v, want the symlink replaced", fi, err)
				}
			}
		})
	}
}

func TestHardlinks(t *testing.T) {
	tests := []struct {
		name   string
		ents   []ent
		unsafe bool // else any error is accepted when !ok
		ok     bool
	}{
		{name: "file", ents: []ent{reg("f", "x"), hardlink("h", "f")}, ok: true},
		{name: "dot prefix", ents: []ent{reg("d/f", "x"), hardlink("d/h", "./d/f")}, ok: true},
		{name: "symlink", ents: []ent{symlink("s", "/etc/passwd"), hardlink("h", "s")}, ok: true},
		{name: "relative symlink same dir", ents: []ent{symlink("d/s", "../f"), hardlink("e/h", "d/s")}, ok: true},
		{name: "relative symlink moved up", ents: []ent{symlink("d/s", "../f"), hardlink("h", "d/s")}, unsafe: true},
		{name: "absolute", ents: []ent{reg("f", "x"), hardlink("h", "/f")}, unsafe: true},
		{name: "dotdot", ents: []ent{reg("f", "x"), hardlink("h", "d/../f")}, unsafe: true},
		{name: "empty", ents: []ent{hardlink("h", "")}, unsafe: true},
		{name: "root", ents: []ent{hardlink("h", ".")}, unsafe: true},
		{name: "itself", ents: []ent{reg("h", "x"), hardlink("h", "h")}, unsafe: true},
		{name: "directory", ents: []ent{dir("d"), hardlink("h", "d")}, unsafe: true},
		{name: "whiteout device", ents: []ent{reg(".wh.w", ""), hardlink("h", "w")}, unsafe: true},
		{name: "missing", ents: []ent{hardlink("h", "nope")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmp, out, err := extract(t, RootfsDiff, archive(t, tt.ents...))
			onlyOut(t, tmp)
			switch {
			case tt.ok:
				if err != nil {
					t.Fatal(err)
				}
				last := tt.ents[len(tt.ents)-1]
				a, err1 := os.Lstat(filepath.Join(out, last.Name))
				b, err2 := os.Lstat(filepath.Join(out, last.Linkname))
				if err1 != nil || err2 != nil || !os.SameFile(a, b) {
					t.Fatalf("not the same file: %v %v", err1, err2)
				}
			case tt.unsafe:
				if !errors.Is(err, ErrUnsafe) {
					t.Fatalf("err = %v, want ErrUnsafe", err)
				}
			default:
				if err == nil {
					t.Fatal("extraction succeeded")
				}
			}
		})
	}
}

func TestWhiteouts(t *testing.T) {
	tests := []struct {
		name   string
		ents   []ent
		unsafe bool
		dev    string // a whiteout device that must exist
		opaque string // a directory that must be opaque
		gone   string // a path that must not exist
	}{
		{name: "new", ents: []ent{reg(".wh.f", "")}, dev: "f"},
		{name: "in subdir", ents: []ent{reg("a/b/.wh.f", "")}, dev: "a/b/f"},
		{name: "replaces file", ents: []ent{reg("f", "x"), reg(".wh.f", "")}, dev: "f"},
		{name: "replaces tree", ents: []ent{reg("d/e/f", "x"), reg(".wh.d", "")}, dev: "d", gone: "d/e"},
		{name: "replaces symlink", ents: []ent{symlink("l", "/"), reg(".wh.l", "")}, dev: "l"},
		{name: "file replaces whiteout", ents: []ent{reg(".wh.f", ""), reg("f", "x")}},
		{name: "opaque", ents: []ent{dir("d"), reg("d/f", "x"), reg("d/.wh..wh..opq", "")}, opaque: "d"},
		{name: "opaque new dir", ents: []ent{reg("a/d/.wh..wh..opq", "")}, opaque: "a/d"},
		{name: "opaque root", ents: []ent{reg(".wh..wh..opq", "")}, opaque: "."},
		{name: "empty name", ents: []ent{reg(".wh.", "")}, unsafe: true},
		{name: "dot", ents: []ent{reg(".wh..", "")}, unsafe: true},
		{name: "dotdot", ents: []ent{reg("a/.wh...", "")}, unsafe: true},
		{name: "other meta", ents: []ent{reg(".wh..wh.plnk", "")}, unsafe: true},
		{name: "meta dir", ents: []ent{reg(".wh..wh.plnk/1.2", "")}, unsafe: true},
		{name: "slash after prefix", ents: []ent{reg(".wh.a/b", "")}, unsafe: true},
		{name: "symlink type", ents: []ent{symlink(".wh.f", "x")}, unsafe: true},
		{name: "dir type", ents: []ent{dir(".wh.f")}, unsafe: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmp, out, err := extract(t, RootfsDiff, archive(t, tt.ents...))
			onlyOut(t, tmp)
			if tt.unsafe {
				if !errors.Is(err, ErrUnsafe) {
					t.Fatalf("err = %v, want ErrUnsafe", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.dev != "" {
				var st unix.Stat_t
				if err := unix.Lstat(filepath.Join(out, tt.dev), &st); err != nil {
					t.Fatal(err)
				}
				if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
					t.Fatalf("%s: mode %o rdev %d, want a 0/0 char device", tt.dev, st.Mode, st.Rdev)
				}
			}
			if tt.opaque != "" {
				buf := make([]byte, 8)
				n, err := unix.Lgetxattr(filepath.Join(out, tt.opaque), opaqueXattr, buf)
				if err != nil || string(buf[:n]) != "y" {
					t.Fatalf("opaque xattr = %q, %v", buf[:n], err)
				}
			}
			if tt.gone != "" {
				if _, err := os.Lstat(filepath.Join(out, tt.gone)); err == nil {
					t.Fatalf("%s still exists", tt.gone)
				}
			}
			// No whiteout entry is ever written under its own name.
			filepath.WalkDir(out, func(p string, d fs.DirEntry, err error) error {
				if err == nil && strings.HasPrefix(d.Name(), whiteoutPrefix) {
					t.Errorf("%s written", p)
				}
				return nil
			})
		})
	}
}

func TestRegularFiles(t *testing.T) {
	mtime := time.Unix(1600000000, 0)
	atime := time.Unix(1650000000, 0)
	withMeta := func(e ent, mode int64) ent {
		e.Mode, e.Uid, e.Gid, e.ModTime, e.AccessTime, e.Format = mode, 1000, 2000, mtime, atime, tar.FormatPAX
		return e
	}
	tests := []struct {
		name     string
		mode     Mode
		ents     []ent
		path     string
		body     string
		perm     fs.FileMode
		typ      fs.FileMode // expected type bits of path
		checkOwn bool
	}{
		{name: "plain", mode: CRIUImages, ents: []ent{withMeta(reg("f", "hello"), 0o640)}, path: "f", body: "hello", perm: 0o640, checkOwn: true},
		{name: "setuid dropped from a rootfs file", mode: RootfsDiff, ents: []ent{withMeta(reg("su", "x"), 0o4755)}, path: "su", body: "x", perm: 0o755, checkOwn: true},
		{name: "setgid dropped, sticky kept", mode: RootfsDiff, ents: []ent{withMeta(reg("sg", "x"), 0o3755)}, path: "sg", body: "x", perm: 0o755 | fs.ModeSticky},
		{name: "setgid directory kept", mode: RootfsDiff, ents: []ent{withMeta(dir("shared"), 0o2775)}, path: "shared", typ: fs.ModeDir, perm: 0o775 | fs.ModeSetgid},
		{name: "setuid dropped", mode: CRIUImages, ents: []ent{withMeta(reg("su", "x"), 0o6755)}, path: "su", body: "x", perm: 0o755},
		{name: "empty", mode: CRIUImages, ents: []ent{reg("e", "")}, path: "e", perm: 0o644},
		{name: "replaces file", mode: CRIUImages, ents: []ent{reg("f", "old content"), reg("f", "new")}, path: "f", body: "new", perm: 0o644},
		{name: "replaces dir", mode: CRIUImages, ents: []ent{reg("d/x", "x"), reg("d", "file")}, path: "d", body: "file", perm: 0o644},
		{name: "replaces symlink", mode: RootfsDiff, ents: []ent{reg("t", "target"), symlink("l", "t"), reg("l", "mine")}, path: "l", body: "mine", perm: 0o644},
		{name: "dir replaces file", mode: CRIUImages, ents: []ent{reg("d", "x"), dir("d"), reg("d/f", "y")}, path: "d", typ: fs.ModeDir, perm: 0o755},
		{name: "dir over dir updates mode", mode: CRIUImages, ents: []ent{reg("d/f", "x"), withMeta(dir("d"), 0o700)}, path: "d", typ: fs.ModeDir, perm: 0o700, checkOwn: true},
		{name: "read-only dir written into", mode: CRIUImages, ents: []ent{withMeta(dir("ro"), 0o500), reg("ro/f", "x"), reg("ro/sub/g", "y")}, path: "ro", typ: fs.ModeDir, perm: 0o500},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, out, err := extract(t, tt.mode, archive(t, tt.ents...))
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(out, tt.path)
			fi, err := os.Lstat(p)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Type() != tt.typ || fi.Mode()&^fs.ModeType != tt.perm {
				t.Fatalf("mode = %v, want %v", fi.Mode(), tt.typ|tt.perm)
			}
			if tt.typ == 0 {
				if b, err := os.ReadFile(p); err != nil || string(b) != tt.body {
					t.Fatalf("content = %q, %v; want %q", b, err, tt.body)
				}
			}
			if tt.checkOwn {
				// CRIU images are root's, whatever their headers say.
				st := fi.Sys().(*syscall.Stat_t)
				wantUID, wantGID := uint32(1000), uint32(2000)
				if tt.mode == CRIUImages {
					wantUID, wantGID = 0, 0
				}
				if st.Uid != wantUID || st.Gid != wantGID {
					t.Fatalf("owner = %d:%d, want %d:%d", st.Uid, st.Gid, wantUID, wantGID)
				}
				if !fi.ModTime().Equal(mtime) || time.Unix(st.Atim.Unix()) != atime {
					t.Fatalf("times = %v / %v, want %v / %v", fi.ModTime(), time.Unix(st.Atim.Unix()), mtime, atime)
				}
			}
		})
	}
	// A file that was hard-linked keeps its content under the other name
	// when replaced.
	t.Run("replace hard-linked", func(t *testing.T) {
		_, out, err := extract(t, RootfsDiff, archive(t, reg("a", "one"), hardlink("b", "a"), reg("a", "two")))
		if err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(filepath.Join(out, "b")); string(b) != "one" {
			t.Fatalf("b = %q, want one", b)
		}
	})
	// Directory times are set after the entries inside are written.
	t.Run("dir times", func(t *testing.T) {
		d := dir("d")
		d.ModTime = mtime
		_, out, err := extract(t, CRIUImages, archive(t, d, reg("d/f", "x"), reg("d/g", "y")))
		if err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Stat(filepath.Join(out, "d")); err != nil || !fi.ModTime().Equal(mtime) {
			t.Fatalf("d mtime = %v (%v), want %v", fi.ModTime(), err, mtime)
		}
	})
}

func TestLimits(t *testing.T) {
	big := strings.Repeat("x", 1000)
	tests := []struct {
		name     string
		opts     Options
		ents     []ent
		tooLarge bool
	}{
		{name: "bytes at limit", opts: Options{MaxBytes: 2000}, ents: []ent{reg("a", big), reg("b", big)}},
		{name: "bytes over limit", opts: Options{MaxBytes: 1999}, ents: []ent{reg("a", big), reg("b", big)}, tooLarge: true},
		{name: "single file over limit", opts: Options{MaxBytes: 10}, ents: []ent{reg("a", big)}, tooLarge: true},
		{name: "entries at limit", opts: Options{MaxEntries: 3}, ents: []ent{dir("d"), reg("d/a", ""), reg("d/b", "")}},
		{name: "entries over limit", opts: Options{MaxEntries: 2}, ents: []ent{dir("d"), reg("d/a", ""), reg("d/b", "")}, tooLarge: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			needRoot(t)
			out := t.TempDir()
			st, err := Tar(context.Background(), bytes.NewReader(archive(t, tt.ents...)), out, tt.opts)
			if !tt.tooLarge {
				if err != nil {
					t.Fatal(err)
				}
				if st.Entries != len(tt.ents) {
					t.Fatalf("Entries = %d, want %d", st.Entries, len(tt.ents))
				}
				return
			}
			if !errors.Is(err, ErrTooLarge) {
				t.Fatalf("err = %v, want ErrTooLarge", err)
			}
			if tt.opts.MaxBytes > 0 && st.Bytes > tt.opts.MaxBytes {
				t.Fatalf("wrote %d bytes, limit %d", st.Bytes, tt.opts.MaxBytes)
			}
			var total int64
			filepath.WalkDir(out, func(p string, d fs.DirEntry, err error) error {
				if err == nil && d.Type().IsRegular() {
					fi, _ := d.Info()
					total += fi.Size()
				}
				return nil
			})
			if total != st.Bytes || (tt.opts.MaxBytes > 0 && total > tt.opts.MaxBytes) {
				t.Fatalf("%d bytes on disk, Stats.Bytes %d, limit %d", total, st.Bytes, tt.opts.MaxBytes)
			}
		})
	}
}

func TestOptions(t *testing.T) {
	data := archive(t, reg("f", "x"))
	tests := []struct {
		name string
		dir  string
		opts Options
	}{
		{name: "unknown mode", opts: Options{Mode: 7}},
		{name: "negative bytes", opts: Options{MaxBytes: -1}},
		{name: "negative entries", opts: Options{MaxEntries: -1}},
		{name: "missing dir", dir: "missing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := t.TempDir()
			if _, err := Tar(context.Background(), bytes.NewReader(data), filepath.Join(out, tt.dir), tt.opts); err == nil {
				t.Fatal("no error")
			}
		})
	}
}

// cancelAfter cancels its context once n bytes have been read.
type cancelAfter struct {
	r      io.Reader
	n      int
	cancel context.CancelFunc
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	if len(p) > 512 {
		p = p[:512]
	}
	n, err := c.r.Read(p)
	if c.n -= n; c.n <= 0 {
		c.cancel()
	}
	return n, err
}

func TestCancel(t *testing.T) {
	needRoot(t)
	data := archive(t, reg("a", "x"), reg("b", "y"), reg("c", "z"))
	t.Run("before", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		out := t.TempDir()
		if _, err := Tar(ctx, bytes.NewReader(data), out, Options{}); !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		if des, _ := os.ReadDir(out); len(des) != 0 {
			t.Fatalf("wrote %v", des)
		}
	})
	t.Run("between entries", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		out := t.TempDir()
		r := &cancelAfter{r: bytes.NewReader(data), n: 1024, cancel: cancel}
		st, err := Tar(ctx, r, out, Options{})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		if st.Entries != 1 {
			t.Fatalf("Entries = %d, want 1", st.Entries)
		}
	})
}

func TestTruncated(t *testing.T) {
	data := archive(t, reg("a", strings.Repeat("x", 1000)), reg("b", "y"))
	// data: header a (512), content a (1024), header b (512), content b
	// (512), end marker (1024).
	for _, n := range []int{0, 100, 512, 1000, 1536, 2048, 2560, 3000, 3072, 3328, 3584 - 512} {
		t.Run("", func(t *testing.T) {
			_, _, err := extract(t, CRIUImages, data[:n])
			if err == nil {
				t.Fatalf("archive cut at %d of %d bytes: no error", n, len(data))
			}
		})
	}
	if _, _, err := extract(t, CRIUImages, data); err != nil {
		t.Fatalf("whole archive: %v", err)
	}
	padded := append(append([]byte{}, data...), make([]byte, 10240)...)
	if _, _, err := extract(t, CRIUImages, padded); err != nil {
		t.Fatalf("padded archive: %v", err)
	}
}

func compress(t testing.TB, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := zstd.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestTarCompressed(t *testing.T) {
	needRoot(t)
	body := bytes.Repeat([]byte("checkpoint pages "), 50000)
	data := archive(t, dir("img"), reg("img/pages-1.img", string(body)), reg("img/inventory.img", "inv"))
	// GNU tar pads the archive to a 10 KiB record.
	data = append(data, make([]byte, 10240-len(data)%10240)...)
	z := compress(t, data)

	out := t.TempDir()
	st, err := TarCompressed(context.Background(), bytes.NewReader(z), out, Options{Mode: CRIUImages})
	if err != nil {
		t.Fatal(err)
	}
	if st.Entries != 3 || st.Bytes != int64(len(body)+3) {
		t.Fatalf("Stats = %+v", st)
	}
	if b, err := os.ReadFile(filepath.Join(out, "img/pages-1.img")); err != nil || !bytes.Equal(b, body) {
		t.Fatalf("pages-1.img: %d bytes, %v", len(b), err)
	}

	// Cut anywhere, including inside the padding after the end marker or
	// just before the frame checksum, the stream must fail.
	for _, n := range []int{0, 1, len(z) / 2, len(z) - 16, len(z) - 4, len(z) - 1} {
		t.Run("truncated", func(t *testing.T) {
			if _, err := TarCompressed(context.Background(), bytes.NewReader(z[:n]), t.TempDir(), Options{Mode: CRIUImages}); err == nil {
				t.Fatalf("stream cut at %d of %d bytes: no error", n, len(z))
			}
		})
	}
	t.Run("corrupt", func(t *testing.T) {
		bad := append([]byte{}, z...)
		bad[len(bad)/2] ^= 0xff
		if _, err := TarCompressed(context.Background(), bytes.NewReader(bad), t.TempDir(), Options{Mode: CRIUImages}); err == nil {
			t.Fatal("no error")
		}
	})
	t.Run("not zstd", func(t *testing.T) {
		if _, err := TarCompressed(context.Background(), bytes.NewReader(data), t.TempDir(), Options{Mode: CRIUImages}); err == nil {
			t.Fatal("no error")
		}
	})
	t.Run("trailing data", func(t *testing.T) {
		long := compress(t, append(archive(t, reg("f", "x")), make([]byte, maxTrailing+blockSize)...))
		_, err := TarCompressed(context.Background(), bytes.NewReader(long), t.TempDir(), Options{Mode: CRIUImages})
		if !errors.Is(err, ErrTooLarge) {
			t.Fatalf("err = %v, want ErrTooLarge", err)
		}
	})
	t.Run("limits apply", func(t *testing.T) {
		_, err := TarCompressed(context.Background(), bytes.NewReader(z), t.TempDir(), Options{Mode: CRIUImages, MaxBytes: 1000})
		if !errors.Is(err, ErrTooLarge) {
			t.Fatalf("err = %v, want ErrTooLarge", err)
		}
	})
}

// Extractions that share a Budget stay within it together, whichever
// comes first; each one alone would fit.
func TestSharedBudget(t *testing.T) {
	a := compress(t, archive(t, reg("a", strings.Repeat("a", 600))))
	b := compress(t, archive(t, dir("d/"), reg("d/b", strings.Repeat("b", 500))))
	for _, c := range []struct {
		limit int64
		fits  bool
	}{{1100, true}, {1099, false}} {
		budget := NewBudget(c.limit)
		var errs []error
		for _, data := range [][]byte{a, b} {
			_, err := TarCompressed(context.Background(), bytes.NewReader(data), t.TempDir(), Options{Mode: CRIUImages, MaxBytes: 1000, Budget: budget})
			errs = append(errs, err)
		}
		switch {
		case c.fits && (errs[0] != nil || errs[1] != nil):
			t.Fatalf("1100 bytes within a shared %d: %v", c.limit, errs)
		case !c.fits && (errs[0] != nil || !errors.Is(errs[1], ErrTooLarge)):
			t.Fatalf("1100 bytes, a shared %d: got %v, want the second to pass the limit", c.limit, errs)
		}
	}
}

// A header alone reserves no disk space past a step ahead of what was
// written: a layer that claims a huge file and stalls holds no more.
func TestClaimedSizeIsNotReservedUpFront(t *testing.T) {
	needRoot(t)
	const claimed, sent = 1 << 30, 2 << 20
	var head bytes.Buffer
	w := tar.NewWriter(&head)
	if err := w.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "pages-1.img", Mode: 0o600, Size: claimed}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(make([]byte, sent)); err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	go func() { _, _ = pw.Write(head.Bytes()) }() // then it stalls
	out := t.TempDir()
	done := make(chan error, 1)
	go func() {
		_, err := Tar(context.Background(), pr, out, Options{Mode: CRIUImages})
		done <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	var st unix.Stat_t
	for {
		if err := unix.Stat(filepath.Join(out, "pages-1.img"), &st); err == nil && st.Blocks*512 >= sent {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the file's first bytes were not written")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // what else a header would reserve
	if err := unix.Stat(filepath.Join(out, "pages-1.img"), &st); err != nil {
		t.Fatal(err)
	}
	pw.CloseWithError(errors.New("stalled"))
	if err := <-done; err == nil {
		t.Fatal("a stream cut short: no error")
	}
	if most := int64(sent + preallocateStep); st.Blocks*512 > most {
		t.Fatalf("%d bytes reserved for %d written, %d claimed: want at most %d", st.Blocks*512, sent, claimed, most)
	}
}

// A file larger than its filesystem's free space is refused before it is
// written.
func TestFileLargerThanTheDiskRefused(t *testing.T) {
	needRoot(t)
	var buf bytes.Buffer
	w := tar.NewWriter(&buf)
	if err := w.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "pages-1.img", Mode: 0o600, Size: 1 << 50}); err != nil {
		t.Fatal(err)
	}
	_, err := Tar(context.Background(), &buf, t.TempDir(), Options{Mode: CRIUImages, MaxBytes: 1 << 62})
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "its filesystem has") {
		t.Fatalf("a 1 PiB file: %v, want ErrTooLarge for the free space", err)
	}
}
