package oci

import (
	"encoding/base64"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Annotations of a CRIU images layer that let a node restore from it while
// it still downloads. Both are optional; a layer without them (pushed with
// the oras CLI, say) is downloaded and unpacked whole before the restore.
const (
	// AnnotationFrames lists the layer's frames (zstd or LZ4) in order, each as
	// "SIZE:DIGEST" (compressed size and digest), separated by spaces. They
	// cover the whole layer, so every frame is verified before it is
	// decoded and nothing unverified reaches CRIU.
	AnnotationFrames = "dev.snapboot.stream.frames"
	// AnnotationTail lists the page images that end the layer's tar, in
	// order, each as "NAME:SIZE", separated by spaces. Every other image
	// comes before them.
	AnnotationTail = "dev.snapboot.stream.tail"
	// AnnotationHead is the layer's first frame itself, in standard
	// base64, when it is at most MaxEmbeddedHead bytes. snapboot ends the
	// first frame right after the first page image's header, so it holds
	// every image but the page images: a node unpacks them from the
	// manifest, and the restore begins while the registry has not yet
	// answered the layer's download (which still begins at once, for the
	// page images). The frame is checked against the digest listed first
	// in AnnotationFrames, as the downloaded one would be.
	AnnotationHead = "dev.snapboot.stream.head"
)

// Bounds of a stream index.
const (
	MaxFrameSize = 16 << 20 // compressed bytes in one frame
	maxFrames    = 1 << 20
	// MaxTail bounds the page images a stream index lists (one per
	// process of the checkpoint).
	MaxTail = 1 << 12
	// MaxEmbeddedHead bounds the first frame carried in AnnotationHead.
	MaxEmbeddedHead = 64 << 10
)

// Frame is one compressed frame of a layer: its compressed size and digest.
type Frame struct {
	Size   int64
	Digest digest.Digest
}

// TailFile is a page image at the end of a CRIU images layer.
type TailFile struct {
	Name string
	Size int64
}

// Stream is what a CRIU images layer says about itself for a streamed
// restore.
type Stream struct {
	Frames []Frame
	Tail   []TailFile
	// Head is the first frame's content, when the manifest carries it
	// (AnnotationHead); it matches Frames[0].
	Head []byte
}

// pageImage is the name CRIU gives page images.
var pageImage = regexp.MustCompile(`^pages-[0-9]{1,9}\.img$`)

// IsPageImage reports whether name is a CRIU page image's.
func IsPageImage(name string) bool { return pageImage.MatchString(name) }

// Annotations encodes s as layer annotations.
func (s *Stream) Annotations() map[string]string {
	frames := make([]string, len(s.Frames))
	for i, f := range s.Frames {
		frames[i] = fmt.Sprintf("%d:%s", f.Size, f.Digest)
	}
	tail := make([]string, len(s.Tail))
	for i, t := range s.Tail {
		tail[i] = fmt.Sprintf("%s:%d", t.Name, t.Size)
	}
	ann := map[string]string{AnnotationFrames: strings.Join(frames, " "), AnnotationTail: strings.Join(tail, " ")}
	if len(s.Head) > 0 && len(s.Head) <= MaxEmbeddedHead {
		ann[AnnotationHead] = base64.StdEncoding.EncodeToString(s.Head)
	}
	return ann
}

// StreamOf decodes the stream index of a CRIU images layer. It returns nil
// and no error when the layer has none.
func StreamOf(layer ocispec.Descriptor) (*Stream, error) {
	framesAnn, hasFrames := layer.Annotations[AnnotationFrames]
	tailAnn, hasTail := layer.Annotations[AnnotationTail]
	if !hasFrames && !hasTail {
		return nil, nil
	}
	if !hasFrames || !hasTail {
		return nil, invalid("layer %s has only one of %s and %s", layer.Digest, AnnotationFrames, AnnotationTail)
	}
	s := &Stream{}
	var total int64
	for i, tok := range strings.Fields(framesAnn) {
		if i >= maxFrames {
			return nil, invalid("more than %d frames in %s", maxFrames, AnnotationFrames)
		}
		sz, dg, ok := strings.Cut(tok, ":")
		n, err := strconv.ParseInt(sz, 10, 64)
		if !ok || err != nil || n <= 0 || n > MaxFrameSize {
			return nil, invalid("%s: frame %d: bad size in %q", AnnotationFrames, i, tok)
		}
		d := digest.Digest(dg)
		if err := d.Validate(); err != nil || d.Algorithm() != digest.SHA256 {
			return nil, invalid("%s: frame %d: bad sha256 digest in %q", AnnotationFrames, i, tok)
		}
		total += n
		s.Frames = append(s.Frames, Frame{Size: n, Digest: d})
	}
	if total != layer.Size {
		return nil, invalid("%s: frames cover %d bytes, the layer has %d", AnnotationFrames, total, layer.Size)
	}
	seen := map[string]bool{}
	for i, tok := range strings.Fields(tailAnn) {
		if i >= MaxTail {
			return nil, invalid("more than %d files in %s", MaxTail, AnnotationTail)
		}
		name, sz, ok := strings.Cut(tok, ":")
		n, err := strconv.ParseInt(sz, 10, 64)
		if !ok || err != nil || n < 0 || !IsPageImage(name) || seen[name] {
			return nil, invalid("%s: bad or repeated entry %q", AnnotationTail, tok)
		}
		seen[name] = true
		s.Tail = append(s.Tail, TailFile{Name: name, Size: n})
	}
	if len(s.Tail) == 0 {
		return nil, invalid("%s lists no page image", AnnotationTail)
	}
	if head, ok := layer.Annotations[AnnotationHead]; ok {
		if len(head) > base64.StdEncoding.EncodedLen(MaxEmbeddedHead) {
			return nil, invalid("%s is more than %d bytes", AnnotationHead, MaxEmbeddedHead)
		}
		b, err := base64.StdEncoding.DecodeString(head)
		if err != nil {
			return nil, invalid("%s is not base64: %v", AnnotationHead, err)
		}
		if len(s.Frames) == 0 {
			return nil, invalid("%s with no frames listed", AnnotationHead)
		}
		if f := s.Frames[0]; int64(len(b)) != f.Size || digest.SHA256.FromBytes(b) != f.Digest {
			return nil, invalid("%s does not match the first frame's size and digest", AnnotationHead)
		}
		s.Head = b
	}
	return s, nil
}
