package oci

import (
	"bytes"
	"encoding/base64"
	"errors"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestStreamOf(t *testing.T) {
	d1, d2 := digest.FromString("frame 1"), digest.FromString("frame 2")
	good := map[string]string{
		AnnotationFrames: "100:" + d1.String() + " 50:" + d2.String(),
		AnnotationTail:   "pages-1.img:4096 pages-2.img:0",
	}
	layer := ocispec.Descriptor{Size: 150, Annotations: good}
	s, err := StreamOf(layer)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Frames) != 2 || s.Frames[1] != (Frame{Size: 50, Digest: d2}) || len(s.Tail) != 2 || s.Tail[0] != (TailFile{Name: "pages-1.img", Size: 4096}) {
		t.Fatalf("decoded %+v", s)
	}
	if s, err := StreamOf(ocispec.Descriptor{Size: 150}); s != nil || err != nil {
		t.Fatalf("no annotations: %v %v", s, err)
	}

	with := func(k, v string) map[string]string {
		m := map[string]string{AnnotationFrames: good[AnnotationFrames], AnnotationTail: good[AnnotationTail]}
		if v == "" {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	for name, ann := range map[string]map[string]string{
		"frames only":           with(AnnotationTail, ""),
		"tail only":             with(AnnotationFrames, ""),
		"frames short of layer": with(AnnotationFrames, "100:"+d1.String()),
		"zero-size frame":       with(AnnotationFrames, "0:"+d1.String()+" 150:"+d2.String()),
		"huge frame":            with(AnnotationFrames, "999999999:"+d1.String()),
		"bad digest":            with(AnnotationFrames, "100:sha256:abc 50:"+d2.String()),
		"sha512 frame":          with(AnnotationFrames, "100:"+digest.SHA512.FromString("x").String()+" 50:"+d2.String()),
		"no size":               with(AnnotationFrames, d1.String()+" 50:"+d2.String()),
		"tail not a page image": with(AnnotationTail, "core-1.img:10"),
		"tail path":             with(AnnotationTail, "../pages-1.img:10"),
		"tail repeated":         with(AnnotationTail, "pages-1.img:10 pages-1.img:10"),
		"tail negative":         with(AnnotationTail, "pages-1.img:-1"),
		"tail empty":            with(AnnotationTail, " "),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := StreamOf(ocispec.Descriptor{Size: 150, Annotations: ann})
			if !errors.Is(err, ErrInvalidArtifact) {
				t.Fatalf("got %v", err)
			}
		})
	}
}

// The first frame may come in the manifest; it must be that frame.
func TestStreamOfHead(t *testing.T) {
	first := []byte("the first frame")
	d1, d2 := digest.FromBytes(first), digest.FromString("frame 2")
	s := &Stream{Frames: []Frame{{Size: int64(len(first)), Digest: d1}, {Size: 50, Digest: d2}}, Tail: []TailFile{{Name: "pages-1.img", Size: 10}}, Head: first}
	ann := s.Annotations()
	if ann[AnnotationHead] != base64.StdEncoding.EncodeToString(first) {
		t.Fatalf("head annotation %q", ann[AnnotationHead])
	}
	layer := ocispec.Descriptor{Size: int64(len(first)) + 50, Annotations: ann}
	got, err := StreamOf(layer)
	if err != nil || !bytes.Equal(got.Head, first) {
		t.Fatalf("decoded head %q, %v", got.Head, err)
	}
	delete(ann, AnnotationHead)
	if got, err := StreamOf(layer); err != nil || got.Head != nil {
		t.Fatalf("without the annotation: head %q, %v", got.Head, err)
	}
	if big := (&Stream{Frames: s.Frames, Tail: s.Tail, Head: make([]byte, MaxEmbeddedHead+1)}).Annotations(); big[AnnotationHead] != "" {
		t.Fatal("a first frame over the bound went into the annotations")
	}
	for name, head := range map[string]string{
		"another frame":  base64.StdEncoding.EncodeToString([]byte("the first framE")),
		"short":          base64.StdEncoding.EncodeToString(first[1:]),
		"not base64":     "%%%",
		"over the bound": base64.StdEncoding.EncodeToString(make([]byte, MaxEmbeddedHead+1)),
	} {
		t.Run(name, func(t *testing.T) {
			ann[AnnotationHead] = head
			if _, err := StreamOf(layer); !errors.Is(err, ErrInvalidArtifact) {
				t.Fatalf("got %v", err)
			}
		})
	}
}

func TestIsPageImage(t *testing.T) {
	for name, want := range map[string]bool{"pages-1.img": true, "pages-12.img": true, "pages-.img": false, "pages-1.img.x": false, "pagemap-1.img": false, "x/pages-1.img": false} {
		if IsPageImage(name) != want {
			t.Errorf("IsPageImage(%q) = %v", name, !want)
		}
	}
}
