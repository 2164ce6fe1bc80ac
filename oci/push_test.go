package oci

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/content/memory"
)

func TestPushWritesFormatV1(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	criu := filepath.Join(dir, "criu.tar.zst")
	rootfs := filepath.Join(dir, "rootfs.tar.zst")
	os.WriteFile(criu, []byte("criu layer"), 0o600)
	os.WriteFile(rootfs, []byte("rootfs layer"), 0o600)
	big := filepath.Join(dir, "big.tar.zst")
	os.WriteFile(big, bytes.Repeat([]byte("x"), MaxEmbedded+1), 0o600)
	store := memory.New()
	subject := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("image"), Size: 5}
	meta := &Metadata{FormatVersion: 1, Created: time.Now(), CRIU: Version{Version: "4.2.1"}, Host: Host{Architecture: "amd64"}}

	desc, err := Push(ctx, store, "v1", meta, []LayerFile{
		{MediaType: MediaTypeCRIUImages, Path: criu},
		{MediaType: MediaTypeRootfsDiff, Path: rootfs},
	}, PushOptions{Subject: &subject})
	if err != nil {
		t.Fatal(err)
	}
	got, err := store.Resolve(ctx, "v1")
	if err != nil || got.Digest != desc.Digest {
		t.Fatalf("tag: %v %v", got, err)
	}
	data, err := content.FetchAll(ctx, store, desc)
	if err != nil {
		t.Fatal(err)
	}
	ck, err := DecodeManifest(data)
	if err != nil {
		t.Fatalf("pushed manifest is not valid format v1: %v", err)
	}
	if ck.Manifest.ArtifactType != ArtifactType || ck.Rootfs == nil || ck.Manifest.Subject == nil || ck.Manifest.Subject.Digest != subject.Digest {
		t.Fatalf("manifest %+v", ck.Manifest)
	}
	cfg, err := content.FetchAll(ctx, store, ck.Config)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := DecodeMetadata(cfg); err != nil || m.CRIU.Version != "4.2.1" {
		t.Fatalf("metadata %+v %v", m, err)
	}
	if string(ck.Config.Data) != string(cfg) {
		t.Fatalf("the manifest embeds %q, the metadata blob is %q", ck.Config.Data, cfg)
	}
	// A small layer is in the manifest too, and pushed all the same.
	if blob, err := content.FetchAll(ctx, store, *ck.Rootfs); err != nil || string(ck.Rootfs.Data) != "rootfs layer" || string(blob) != "rootfs layer" {
		t.Fatalf("rootfs layer: embedded %q, blob %q, %v", ck.Rootfs.Data, blob, err)
	}
	big3, err := Push(ctx, store, "v3", meta, []LayerFile{{MediaType: MediaTypeCRIUImages, Path: big}}, PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	data, _ = content.FetchAll(ctx, store, big3)
	if ck, err := DecodeManifest(data); err != nil || ck.CRIU.Data != nil {
		t.Fatalf("a layer over %d bytes is embedded: %v", MaxEmbedded, err)
	}
	// Pushing the same layers again uploads none of them again and gives a
	// valid manifest.
	bigLayer, _ := DecodeManifest(data)
	counting := &countingTarget{Target: store, pushed: map[digest.Digest]int{}}
	again, err := Push(ctx, counting, "v4", meta, []LayerFile{{MediaType: MediaTypeCRIUImages, Path: big}}, PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n := counting.pushed[bigLayer.CRIU.Digest]; n != 0 {
		t.Errorf("the layer already in the registry was uploaded %d more times", n)
	}
	if data, err := content.FetchAll(ctx, store, again); err != nil {
		t.Fatal(err)
	} else if _, err := DecodeManifest(data); err != nil {
		t.Fatal(err)
	}
}

// countingTarget counts what is uploaded to it, by digest.
type countingTarget struct {
	Target
	pushed map[digest.Digest]int
}

func (c *countingTarget) Push(ctx context.Context, d ocispec.Descriptor, r io.Reader) error {
	c.pushed[d.Digest]++
	return c.Target.Push(ctx, d, r)
}

// refusingTarget refuses every upload, as a registry does without push
// access.
type refusingTarget struct{ Target }

func (refusingTarget) Push(context.Context, ocispec.Descriptor, io.Reader) error {
	return errors.New("unauthorized: authentication required")
}

// CheckPush finds a target that takes no upload before anything is
// dumped, and passes one that does, whether or not it has the blob.
func TestCheckPush(t *testing.T) {
	ctx := context.Background()
	store := memory.New()
	for i := 0; i < 2; i++ { // the second time, the blob is there
		if err := CheckPush(ctx, store); err != nil {
			t.Fatalf("push %d to a store that takes it: %v", i+1, err)
		}
	}
	if err := CheckPush(ctx, refusingTarget{store}); err == nil || !strings.Contains(err.Error(), "unauthorized") {
		t.Fatalf("a target that refuses uploads: %v", err)
	}
}
