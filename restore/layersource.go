package restore

import (
	"bytes"
	"context"
	"io"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
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
	b := &headBody{head: h.head, skip: int64(len(h.head)), arrived: make(chan struct{})}
	go func() {
		b.rc, b.err = h.src.Fetch(ctx, d)
		close(b.arrived)
	}()
	return b, nil
}

// headBody is headFirst's reader. The download's own copy of the head is
// read and dropped: what is read from head was checked against the first
// frame's digest, and the rest of the stream is checked frame by frame.
type headBody struct {
	head    []byte
	skip    int64
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
	if b.skip > 0 {
		n, err := io.CopyN(io.Discard, b.rc, b.skip)
		b.skip -= n
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			return 0, err
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
