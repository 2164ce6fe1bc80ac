package oci

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/errdef"
)

// Target is where a checkpoint is pushed: a registry repository, or an OCI
// layout in tests.
type Target interface {
	Exists(ctx context.Context, target ocispec.Descriptor) (bool, error)
	Push(ctx context.Context, expected ocispec.Descriptor, content io.Reader) error
	Tag(ctx context.Context, desc ocispec.Descriptor, reference string) error
}

// LayerFile is a packed layer on disk.
type LayerFile struct {
	MediaType string
	Path      string
	// Annotations go on the layer's descriptor (a CRIU images layer's
	// stream index).
	Annotations map[string]string
}

// PushOptions are the optional parts of a push.
type PushOptions struct {
	// Subject makes the checkpoint an OCI 1.1 referrer of this manifest
	// (the container's image), so it can be found from the image.
	Subject *ocispec.Descriptor
	// Annotations are added to the manifest.
	Annotations map[string]string
	// Progress wraps each upload's reader, for a progress display.
	Progress func(name string, size int64, r io.Reader) io.Reader
}

// Push uploads a checkpoint (metadata and layer files) in format v1 and
// tags it. Blobs the target already has are not uploaded again.
func Push(ctx context.Context, dst Target, tag string, meta *Metadata, layers []LayerFile, opts PushOptions) (ocispec.Descriptor, error) {
	cfgData, err := json.Marshal(meta)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	cfg := ocispec.Descriptor{MediaType: MediaTypeConfig, Digest: digest.FromBytes(cfgData), Size: int64(len(cfgData))}
	if len(cfgData) <= MaxEmbedded {
		// In the manifest too (OCI 1.1 descriptor data): a node reads it
		// with the manifest, one round trip to the registry less before
		// the pre-flight. The blob is pushed all the same.
		cfg.Data = cfgData
	}
	if err := pushBytes(ctx, dst, cfg, cfgData); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("push metadata: %w", err)
	}
	var descs []ocispec.Descriptor
	for _, l := range layers {
		d, err := pushFile(ctx, dst, l, opts.Progress)
		if err != nil {
			return ocispec.Descriptor{}, err
		}
		descs = append(descs, d)
	}
	ann := map[string]string{ocispec.AnnotationCreated: meta.Created.UTC().Format(time.RFC3339)}
	for k, v := range opts.Annotations {
		ann[k] = v
	}
	mdesc, err := oras.PackManifest(ctx, dst, oras.PackManifestVersion1_1, ArtifactType, oras.PackManifestOptions{
		Subject:             opts.Subject,
		Layers:              descs,
		ConfigDescriptor:    &cfg,
		ManifestAnnotations: ann,
	})
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("push manifest: %w", err)
	}
	if err := dst.Tag(ctx, mdesc, tag); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("tag %s: %w", tag, err)
	}
	return mdesc, nil
}

func pushBytes(ctx context.Context, dst Target, d ocispec.Descriptor, data []byte) error {
	if ok, err := dst.Exists(ctx, d); err == nil && ok {
		return nil
	}
	err := dst.Push(ctx, d, bytes.NewReader(data))
	if errors.Is(err, errdef.ErrAlreadyExists) {
		return nil
	}
	return err
}

func pushFile(ctx context.Context, dst Target, l LayerFile, progress func(string, int64, io.Reader) io.Reader) (ocispec.Descriptor, error) {
	f, err := os.Open(l.Path)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	d := ocispec.Descriptor{MediaType: l.MediaType, Size: fi.Size(), Annotations: l.Annotations}
	if d.Size <= MaxEmbedded {
		// In the manifest too, as the metadata: a node unpacks it without
		// a round trip to the registry (the rootfs changes of an app that
		// wrote a few small files, or none).
		if d.Data, err = io.ReadAll(f); err != nil {
			return ocispec.Descriptor{}, err
		}
		d.Digest, d.Size = digest.SHA256.FromBytes(d.Data), int64(len(d.Data))
	} else if d.Digest, err = digest.SHA256.FromReader(f); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("digest %s: %w", l.Path, err)
	}
	if ok, err := dst.Exists(ctx, d); err == nil && ok {
		return d, nil
	}
	var r io.Reader = bytes.NewReader(d.Data)
	if d.Data == nil {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return ocispec.Descriptor{}, err
		}
		r = f
	}
	if progress != nil {
		r = progress(l.MediaType, d.Size, r)
	}
	if err := dst.Push(ctx, d, r); err != nil && !errors.Is(err, errdef.ErrAlreadyExists) {
		return ocispec.Descriptor{}, fmt.Errorf("push layer %s: %w", l.MediaType, err)
	}
	return d, nil
}

// CheckPush reports whether dst takes uploads, before there is anything to
// upload: it pushes the OCI empty JSON blob ("{}", which an artifact's
// config may be, so a registry keeps it as any other blob), without first
// asking whether dst has it (that takes only pull access).
func CheckPush(ctx context.Context, dst Target) error {
	d := ocispec.DescriptorEmptyJSON
	err := dst.Push(ctx, d, bytes.NewReader(d.Data))
	if errors.Is(err, errdef.ErrAlreadyExists) {
		return nil
	}
	return err
}
