package oci

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func desc(mt string, content string) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: mt, Digest: digest.FromString(content), Size: int64(len(content))}
}

func manifestJSON(t *testing.T, edit func(*ocispec.Manifest)) []byte {
	t.Helper()
	m := ocispec.Manifest{
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: ArtifactType,
		Config:       desc(MediaTypeConfig, "{}"),
		Layers:       []ocispec.Descriptor{desc(MediaTypeCRIUImages, "criu"), desc(MediaTypeRootfsDiff, "rootfs")},
	}
	m.SchemaVersion = 2
	if edit != nil {
		edit(&m)
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeManifest(t *testing.T) {
	ck, err := DecodeManifest(manifestJSON(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	if ck.CRIU.Digest != digest.FromString("criu") || ck.Rootfs == nil || ck.Rootfs.Digest != digest.FromString("rootfs") {
		t.Fatalf("wrong layers: %+v", ck)
	}
	if ck.Size() != int64(len("criu")+len("rootfs")) {
		t.Fatalf("Size() = %d", ck.Size())
	}
	// oras push --config writes no artifactType; the config's type identifies it.
	ck, err = DecodeManifest(manifestJSON(t, func(m *ocispec.Manifest) {
		m.ArtifactType = ""
		m.Layers = m.Layers[:1]
	}))
	if err != nil {
		t.Fatalf("manifest without artifactType: %v", err)
	}
	if ck.Rootfs != nil {
		t.Fatal("Rootfs should be nil without a rootfs layer")
	}
	// The metadata embedded in the manifest (OCI 1.1 descriptor data).
	ck, err = DecodeManifest(manifestJSON(t, func(m *ocispec.Manifest) { m.Config.Data = []byte("{}") }))
	if err != nil || string(ck.Config.Data) != "{}" {
		t.Fatalf("embedded metadata: %+v, %v", ck, err)
	}
	// A layer embedded in the manifest.
	ck, err = DecodeManifest(manifestJSON(t, func(m *ocispec.Manifest) { m.Layers[1].Data = []byte("rootfs") }))
	if err != nil || string(ck.Rootfs.Data) != "rootfs" {
		t.Fatalf("embedded layer: %+v, %v", ck, err)
	}
	// CRIU images packed with LZ4.
	ck, err = DecodeManifest(manifestJSON(t, func(m *ocispec.Manifest) { m.Layers[0].MediaType = MediaTypeCRIUImagesLZ4 }))
	if err != nil || ck.CRIU.MediaType != MediaTypeCRIUImagesLZ4 || ck.CRIU.Digest != digest.FromString("criu") {
		t.Fatalf("LZ4 CRIU images: %+v, %v", ck, err)
	}
}

func TestDecodeManifestRejects(t *testing.T) {
	cases := map[string][]byte{
		"not json":        []byte("{nope"),
		"empty":           []byte(""),
		"wrong artifact":  manifestJSON(t, func(m *ocispec.Manifest) { m.ArtifactType = "application/vnd.example" }),
		"image manifest":  manifestJSON(t, func(m *ocispec.Manifest) { m.ArtifactType = ""; m.Config.MediaType = ocispec.MediaTypeImageConfig }),
		"wrong config":    manifestJSON(t, func(m *ocispec.Manifest) { m.Config.MediaType = "application/json" }),
		"no criu layer":   manifestJSON(t, func(m *ocispec.Manifest) { m.Layers = m.Layers[1:] }),
		"two criu layers": manifestJSON(t, func(m *ocispec.Manifest) { m.Layers = append(m.Layers, m.Layers[0]) }),
		"zstd and lz4 criu": manifestJSON(t, func(m *ocispec.Manifest) {
			m.Layers = append(m.Layers, desc(MediaTypeCRIUImagesLZ4, "criu lz4"))
		}),
		"two rootfs":                     manifestJSON(t, func(m *ocispec.Manifest) { m.Layers = append(m.Layers, m.Layers[1]) }),
		"unknown layer":                  manifestJSON(t, func(m *ocispec.Manifest) { m.Layers = append(m.Layers, desc("application/octet-stream", "x")) }),
		"bad digest":                     manifestJSON(t, func(m *ocispec.Manifest) { m.Layers[0].Digest = "sha256:1234" }),
		"md5 digest":                     manifestJSON(t, func(m *ocispec.Manifest) { m.Layers[0].Digest = "md5:d41d8cd98f00b204e9800998ecf8427e" }),
		"negative size":                  manifestJSON(t, func(m *ocispec.Manifest) { m.Layers[0].Size = -1 }),
		"huge config":                    manifestJSON(t, func(m *ocispec.Manifest) { m.Config.Size = MaxConfigSize + 1 }),
		"external urls":                  manifestJSON(t, func(m *ocispec.Manifest) { m.Layers[0].URLs = []string{"http://example.invalid/x"} }),
		"schema 1":                       manifestJSON(t, func(m *ocispec.Manifest) { m.SchemaVersion = 1 }),
		"index media type":               manifestJSON(t, func(m *ocispec.Manifest) { m.MediaType = ocispec.MediaTypeImageIndex }),
		"embedded metadata not the blob": manifestJSON(t, func(m *ocispec.Manifest) { m.Config.Data = []byte("[]") }),
		"embedded metadata, wrong size":  manifestJSON(t, func(m *ocispec.Manifest) { m.Config.Data = []byte("{} ") }),
		"embedded layer not the blob":    manifestJSON(t, func(m *ocispec.Manifest) { m.Layers[1].Data = []byte("rootfz") }),
		"embedded layer, wrong size":     manifestJSON(t, func(m *ocispec.Manifest) { m.Layers[1].Data = []byte("rootfs!") }),
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := DecodeManifest(data)
			if !errors.Is(err, ErrInvalidArtifact) {
				t.Fatalf("got %v, want ErrInvalidArtifact", err)
			}
		})
	}
}

func TestDecodeMetadata(t *testing.T) {
	good := `{"formatVersion":1,"criu":{"version":"4.2.1"},"host":{"architecture":"amd64","cpu":{"flags":["sse2"]}}}`
	m, err := DecodeMetadata([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if m.CRIU.Version != "4.2.1" || m.Host.Architecture != "amd64" || len(m.Host.CPU.Flags) != 1 {
		t.Fatalf("decoded %+v", m)
	}
	for name, in := range map[string]string{
		"not json":   `{`,
		"trailing":   good + `{}`,
		"version 2":  strings.Replace(good, `"formatVersion":1`, `"formatVersion":2`, 1),
		"no arch":    `{"formatVersion":1,"criu":{"version":"4.2.1"},"host":{}}`,
		"no criu":    `{"formatVersion":1,"host":{"architecture":"amd64"}}`,
		"bad criu":   `{"formatVersion":1,"criu":{"version":"four"},"host":{"architecture":"amd64"}}`,
		"wrong type": `{"formatVersion":"1"}`,
		"array":      `[]`,
		"too large":  `{"formatVersion":1,"x":"` + strings.Repeat("a", MaxConfigSize) + `"}`,
	} {
		if _, err := DecodeMetadata([]byte(in)); !errors.Is(err, ErrInvalidArtifact) {
			t.Errorf("%s: got %v, want ErrInvalidArtifact", name, err)
		}
	}
}

func TestParseVersion(t *testing.T) {
	for in, want := range map[string]int{"4.2.1": 40201, "4.2": 40200, "v3.17.1": 31701, "4.2.1-rc1": 40201} {
		got, err := ParseVersion(in)
		if err != nil || got != want {
			t.Errorf("ParseVersion(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "4", "a.b", "4.100.0"} {
		if _, err := ParseVersion(in); err == nil {
			t.Errorf("ParseVersion(%q): want an error", in)
		}
	}
}

func TestParseReference(t *testing.T) {
	good := []string{
		"127.0.0.1:5000/app/checkpoints:v42",
		"registry.example.com/team/app@sha256:" + strings.Repeat("a", 64),
	}
	for _, s := range good {
		if _, err := ParseReference(s); err != nil {
			t.Errorf("ParseReference(%q): %v", s, err)
		}
	}
	bad := []string{"", "   ", "registry.example.com/app", "http://registry/app:v1", "reg/UPPER:v1", "reg/app:bad tag", "reg/app@sha256:short", "/app:v1"}
	for _, s := range bad {
		if _, err := ParseReference(s); err == nil {
			t.Errorf("ParseReference(%q): want an error", s)
		}
	}
	ref, _ := ParseReference(good[1])
	if !Pinned(ref) {
		t.Error("digest reference should be pinned")
	}
	ref, _ = ParseReference(good[0])
	if Pinned(ref) {
		t.Error("tag reference should not be pinned")
	}
}

// Layer sizes a manifest makes up add up without wrapping around, so that
// they cannot pass pull.max_artifact_size.
func TestCheckpointSizeSaturates(t *testing.T) {
	huge := ocispec.Descriptor{Size: 1 << 62}
	ck := &Checkpoint{CRIU: huge, Rootfs: &huge}
	if ck.Size() != math.MaxInt64 {
		t.Fatalf("Size() = %d, want math.MaxInt64", ck.Size())
	}
	small := ocispec.Descriptor{Size: 10}
	if ck := (&Checkpoint{CRIU: small, Rootfs: &small}); ck.Size() != 20 {
		t.Fatalf("Size() = %d, want 20", ck.Size())
	}
}
