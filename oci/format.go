package oci

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Media types of format v1.
const (
	ArtifactType        = "application/vnd.snapboot.checkpoint.v1"
	MediaTypeConfig     = "application/vnd.snapboot.checkpoint.config.v1+json"
	MediaTypeCRIUImages = "application/vnd.snapboot.criu.images.v1.tar+zstd"
	// MediaTypeCRIUImagesLZ4 is a CRIU images layer compressed with LZ4
	// frames instead (snapboot checkpoint --compression lz4).
	MediaTypeCRIUImagesLZ4 = "application/vnd.snapboot.criu.images.v1.tar+lz4"
	MediaTypeRootfsDiff    = "application/vnd.snapboot.rootfs.diff.v1.tar+zstd"
)

// Size bounds of the small documents read before any layer is downloaded.
const (
	MaxManifestSize = 4 << 20
	MaxConfigSize   = 1 << 20
	// MaxEmbedded is the largest blob Push also embeds in the manifest
	// (OCI 1.1 descriptor data): the metadata (a few kilobytes is usual)
	// and a small layer (rootfs changes of a few files).
	MaxEmbedded = 16 << 10
)

// ErrInvalidArtifact is wrapped by every error about an artifact that is not
// a well-formed snapboot checkpoint.
var ErrInvalidArtifact = errors.New("not a valid snapboot checkpoint")

// Checkpoint is a decoded, validated checkpoint manifest.
type Checkpoint struct {
	Manifest ocispec.Manifest
	Config   ocispec.Descriptor
	CRIU     ocispec.Descriptor
	// Rootfs is the rootfs-changes layer; nil when the checkpoint has none.
	Rootfs *ocispec.Descriptor
	// Stream is the CRIU layer's stream index; nil when it has none, and
	// then it can't be restored while it downloads.
	Stream *Stream
}

// Layers are the descriptors to download, CRIU images first.
func (c *Checkpoint) Layers() []ocispec.Descriptor {
	l := []ocispec.Descriptor{c.CRIU}
	if c.Rootfs != nil {
		l = append(l, *c.Rootfs)
	}
	return l
}

// Size is the sum of the layers' (compressed) sizes, math.MaxInt64 when
// the sum is larger (sizes the manifest makes up must not wrap around and
// pass a limit).
func (c *Checkpoint) Size() int64 {
	var n int64
	for _, l := range c.Layers() {
		if l.Size > math.MaxInt64-n {
			return math.MaxInt64
		}
		n += l.Size
	}
	return n
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidArtifact, fmt.Sprintf(format, args...))
}

// DecodeManifest parses and validates a checkpoint manifest.
func DecodeManifest(data []byte) (*Checkpoint, error) {
	if len(data) > MaxManifestSize {
		return nil, invalid("manifest is %d bytes, more than %d", len(data), MaxManifestSize)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, invalid("manifest is not valid JSON: %v", err)
	}
	if m.SchemaVersion != 2 {
		return nil, invalid("manifest schemaVersion %d, want 2", m.SchemaVersion)
	}
	if m.MediaType != "" && m.MediaType != ocispec.MediaTypeImageManifest {
		return nil, invalid("manifest mediaType %q, want %q", m.MediaType, ocispec.MediaTypeImageManifest)
	}
	switch {
	case m.ArtifactType == ArtifactType:
	case m.ArtifactType == "" && m.Config.MediaType == MediaTypeConfig:
	case m.ArtifactType == "":
		return nil, invalid("no artifactType and config mediaType %q: not a snapboot checkpoint", m.Config.MediaType)
	default:
		return nil, invalid("artifactType %q, want %q", m.ArtifactType, ArtifactType)
	}
	if m.Config.MediaType != MediaTypeConfig {
		return nil, invalid("config mediaType %q, want %q", m.Config.MediaType, MediaTypeConfig)
	}
	if err := checkDescriptor("config", m.Config, MaxConfigSize); err != nil {
		return nil, err
	}
	if err := checkData("config", m.Config); err != nil {
		return nil, err
	}
	c := &Checkpoint{Manifest: m, Config: m.Config}
	var criu int
	for i, l := range m.Layers {
		if err := checkDescriptor(fmt.Sprintf("layer %d", i), l, 0); err != nil {
			return nil, err
		}
		if err := checkData(fmt.Sprintf("layer %d", i), l); err != nil {
			return nil, err
		}
		switch l.MediaType {
		case MediaTypeCRIUImages, MediaTypeCRIUImagesLZ4:
			criu++
			c.CRIU = l
		case MediaTypeRootfsDiff:
			if c.Rootfs != nil {
				return nil, invalid("more than one rootfs-changes layer")
			}
			l := l
			c.Rootfs = &l
		default:
			return nil, invalid("layer %d has unknown mediaType %q", i, l.MediaType)
		}
	}
	if criu != 1 {
		return nil, invalid("%d CRIU image layers, want exactly 1", criu)
	}
	st, err := StreamOf(c.CRIU)
	if err != nil {
		return nil, err
	}
	c.Stream = st
	return c, nil
}

func checkDescriptor(what string, d ocispec.Descriptor, max int64) error {
	if err := d.Digest.Validate(); err != nil {
		return invalid("%s digest %q: %v", what, d.Digest, err)
	}
	if d.Digest.Algorithm() != digest.SHA256 && d.Digest.Algorithm() != digest.SHA512 {
		return invalid("%s digest algorithm %q is not allowed", what, d.Digest.Algorithm())
	}
	if d.Size < 0 || (max > 0 && d.Size > max) {
		return invalid("%s size %d out of range", what, d.Size)
	}
	if len(d.URLs) > 0 {
		return invalid("%s has external URLs; they are not followed", what)
	}
	return nil
}

// checkData checks a blob embedded in the manifest (OCI 1.1 descriptor
// "data"): it must be the blob the descriptor names, as the blob would be
// checked when downloaded.
func checkData(what string, d ocispec.Descriptor) error {
	if d.Data != nil && (int64(len(d.Data)) != d.Size || d.Digest.Algorithm().FromBytes(d.Data) != d.Digest) {
		return invalid("%s data does not match the %s's digest and size", what, what)
	}
	return nil
}

// strictJSON decodes data into v, refusing trailing data.
func strictJSON(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after the JSON document")
	}
	return nil
}
