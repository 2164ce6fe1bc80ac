package restore

import (
	"bytes"
	"context"
	"fmt"
	"io"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/snapboot/snapboot/oci"
	"github.com/snapboot/snapboot/unpack"
	"oras.land/oras-go/v2/content"
)

// layerSource is where layer l's bytes come from: the manifest itself when
// it carries the layer (descriptor data, which oci.DecodeManifest checked
// against the digest and size), or src. With head set (a streamed CRIU
// layer whose first frame the manifest carries, oci.AnnotationHead), the
// download is asked for at once but the first frame is read from head: the
// images before the page images unpack without waiting for the registry.
func layerSource(src content.Fetcher, l ocispec.Descriptor, head []byte) content.Fetcher {
	switch {
	case l.Data != nil:
		return embedded{}
	case len(head) > 0:
		return headFirst{src: src, head: head}
	}
	return src
}

// embedded serves a descriptor's embedded data.
type embedded struct{}

func (embedded) Fetch(_ context.Context, d ocispec.Descriptor) (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(d.Data)), nil
}

// headFirst serves the first len(head) bytes of a blob from head while its
// download begins, and the rest from the download.
type headFirst struct {
	src  content.Fetcher
	head []byte
}

func (h headFirst) Fetch(ctx context.Context, d ocispec.Descriptor) (io.ReadCloser, error) {
	b := &headBody{head: h.head, want: h.head, arrived: make(chan struct{})}
	go func() {
		b.rc, b.err = h.src.Fetch(ctx, d)
		close(b.arrived)
	}()
	return b, nil
}

// headBody is headFirst's reader. What is read from head was checked
// against the first frame's digest, and the rest of the stream is checked
// frame by frame; the download's own copy of the head must be the same
// bytes, or the layer the manifest names is not the content restored.
type headBody struct {
	head    []byte        // not read yet
	want    []byte        // the download's first bytes, not yet compared
	arrived chan struct{} // the download's response (rc or err)
	rc      io.ReadCloser
	err     error
}

func (b *headBody) Read(p []byte) (int, error) {
	if len(b.head) > 0 {
		n := copy(p, b.head)
		b.head = b.head[n:]
		return n, nil
	}
	<-b.arrived
	if b.err != nil {
		return 0, b.err
	}
	if len(b.want) > 0 {
		got := make([]byte, min(len(b.want), 64<<10))
		for len(b.want) > 0 {
			n, err := io.ReadFull(b.rc, got[:min(len(got), len(b.want))])
			if !bytes.Equal(got[:n], b.want[:n]) {
				return 0, fmt.Errorf("the layer's download differs from the first frame the manifest carries (%s): %w", oci.AnnotationHead, unpack.ErrCorrupt)
			}
			b.want = b.want[n:]
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			if err != nil {
				return 0, err
			}
		}
	}
	return b.rc.Read(p)
}

// Close closes the download, once it has answered if it has not yet (its
// context ends it otherwise).
func (b *headBody) Close() error {
	select {
	case <-b.arrived:
		if b.rc != nil {
			return b.rc.Close()
		}
		return nil
	default:
		go func() {
			<-b.arrived
			if b.rc != nil {
				b.rc.Close()
			}
		}()
		return nil
	}
}
