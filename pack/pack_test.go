package pack

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snapboot/snapboot/unpack"
)

func TestRoundTrip(t *testing.T) {
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "inventory.img"), []byte("inventory"), 0o600)
	os.Mkdir(filepath.Join(src, "sub"), 0o700)
	os.WriteFile(filepath.Join(src, "sub", "pages-1.img"), bytes.Repeat([]byte("page"), 100000), 0o600)

	var buf bytes.Buffer
	sz, err := TarZstdDir(context.Background(), src, &buf)
	if err != nil {
		t.Fatal(err)
	}
	if sz.Compressed != int64(buf.Len()) || sz.Raw <= 400000 || sz.Compressed >= sz.Raw/10 {
		t.Fatalf("sizes %+v for %d bytes written", sz, buf.Len())
	}
	dst := t.TempDir()
	if _, err := unpack.TarZstd(context.Background(), &buf, dst, unpack.Options{Mode: unpack.CRIUImages}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"inventory.img", "sub/pages-1.img"} {
		a, _ := os.ReadFile(filepath.Join(src, f))
		b, err := os.ReadFile(filepath.Join(dst, f))
		if err != nil || !bytes.Equal(a, b) {
			t.Fatalf("%s differs after the round trip: %v", f, err)
		}
	}
}

func TestRefusesLinks(t *testing.T) {
	src := t.TempDir()
	os.Symlink("/etc/passwd", filepath.Join(src, "link"))
	_, err := TarZstdDir(context.Background(), src, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "only regular files") {
		t.Fatalf("got %v", err)
	}
}

func TestZstd(t *testing.T) {
	var buf bytes.Buffer
	sz, err := Zstd(context.Background(), strings.NewReader(strings.Repeat("x", 10000)), &buf)
	if err != nil || sz.Raw != 10000 || sz.Compressed != int64(buf.Len()) {
		t.Fatalf("%+v %v", sz, err)
	}
}
