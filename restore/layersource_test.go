package restore

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/snapboot/snapboot/unpack"
)

// blobFetcher serves one blob, or an error, after an optional wait.
type blobFetcher struct {
	blob   []byte
	err    error
	wait   chan struct{}
	closed chan struct{}
}

func (b *blobFetcher) Fetch(ctx context.Context, d ocispec.Descriptor) (io.ReadCloser, error) {
	if b.wait != nil {
		<-b.wait
	}
	if b.err != nil {
		return nil, b.err
	}
	return &closeSignal{Reader: bytes.NewReader(b.blob), closed: b.closed}, nil
}

type closeSignal struct {
	io.Reader
	closed chan struct{}
}

func (c *closeSignal) Close() error {
	if c.closed != nil {
		close(c.closed)
	}
	return nil
}

func TestLayerSource(t *testing.T) {
	ctx := context.Background()
	blob := []byte("first frame|the rest of the layer")
	head := blob[:12]
	desc := ocispec.Descriptor{Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	readAll := func(src *blobFetcher, d ocispec.Descriptor, head []byte) ([]byte, error) {
		rc, err := layerSource(src, d, head).Fetch(ctx, d)
		if err != nil {
			return nil, err
		}
		defer rc.Close()
		return io.ReadAll(rc)
	}

	t.Run("embedded data, no download", func(t *testing.T) {
		d := desc
		d.Data = blob
		got, err := readAll(&blobFetcher{err: errors.New("downloaded")}, d, nil)
		if err != nil || !bytes.Equal(got, blob) {
			t.Fatalf("got %q, %v", got, err)
		}
	})
	t.Run("head first, then the download past it", func(t *testing.T) {
		src := &blobFetcher{blob: blob, wait: make(chan struct{})}
		rc, err := layerSource(src, desc, head).Fetch(ctx, desc)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		first := make([]byte, len(head))
		if _, err := io.ReadFull(rc, first); err != nil || !bytes.Equal(first, head) {
			t.Fatalf("head read before the download answered: %q, %v", first, err)
		}
		close(src.wait)
		rest, err := io.ReadAll(rc)
		if err != nil || string(rest) != string(blob[12:]) {
			t.Fatalf("rest: %q, %v", rest, err)
		}
	})
	t.Run("a download whose first frame is not the manifest's", func(t *testing.T) {
		// The restore would run what the manifest carries, the blob the
		// manifest names holding something else.
		other := append([]byte("FIRST FRAME|"), blob[12:]...)
		got, err := readAll(&blobFetcher{blob: other}, desc, head)
		if !errors.Is(err, unpack.ErrCorrupt) || !bytes.Equal(got, head) {
			t.Fatalf("got %q, %v; want the head, then ErrCorrupt", got, err)
		}
	})
	t.Run("download shorter than the head", func(t *testing.T) {
		if _, err := readAll(&blobFetcher{blob: blob[:5]}, desc, head); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("got %v, want unexpected EOF", err)
		}
	})
	t.Run("download fails after the head", func(t *testing.T) {
		boom := errors.New("blob unknown to registry")
		got, err := readAll(&blobFetcher{err: boom}, desc, head)
		if !errors.Is(err, boom) || !bytes.Equal(got, head) {
			t.Fatalf("got %q, %v", got, err)
		}
	})
	t.Run("closed before the download answered", func(t *testing.T) {
		src := &blobFetcher{blob: blob, wait: make(chan struct{}), closed: make(chan struct{})}
		rc, err := layerSource(src, desc, head).Fetch(ctx, desc)
		if err != nil {
			t.Fatal(err)
		}
		rc.Close()
		close(src.wait)
		select {
		case <-src.closed:
		case <-time.After(5 * time.Second):
			t.Fatal("the download that answered after Close was never closed")
		}
	})
	t.Run("no head, no data: the source itself", func(t *testing.T) {
		got, err := readAll(&blobFetcher{blob: blob}, desc, nil)
		if err != nil || !bytes.Equal(got, blob) {
			t.Fatalf("got %q, %v", got, err)
		}
	})
}
