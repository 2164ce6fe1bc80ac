package restore

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/creds"
	criucore "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/inventory"
	"github.com/containerd/containerd/api/types"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/protobuf/proto"
	"oras.land/oras-go/v2/content/memory"
	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote/errcode"

	"github.com/snapboot/snapboot/compat"
	"github.com/snapboot/snapboot/nodeconfig"
	"github.com/snapboot/snapboot/oci"
)

// fakeRegistry is an in-memory repository that counts layer fetches and can
// go offline or corrupt what it serves.
type fakeRegistry struct {
	store       *memory.Store
	manifests   map[digest.Digest]ocispec.Descriptor
	layerFetch  atomic.Int32
	configFetch atomic.Int32
	offline     bool
	refuse      error // every request's answer, when set
	corruptWhat digest.Digest
}

var errOffline error = &net.OpError{Op: "dial", Net: "tcp", Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5000}, Err: syscall.ECONNREFUSED}

func (f *fakeRegistry) Resolve(ctx context.Context, ref string) (ocispec.Descriptor, error) {
	if f.refuse != nil {
		return ocispec.Descriptor{}, f.refuse
	}
	if f.offline {
		return ocispec.Descriptor{}, errOffline
	}
	if d, err := digest.Parse(ref); err == nil {
		if m, ok := f.manifests[d]; ok {
			return m, nil
		}
	}
	return f.store.Resolve(ctx, ref)
}

func (f *fakeRegistry) Fetch(ctx context.Context, d ocispec.Descriptor) (io.ReadCloser, error) {
	if f.refuse != nil {
		return nil, f.refuse
	}
	if f.offline {
		return nil, errOffline
	}
	if d.MediaType == oci.MediaTypeCRIUImages || d.MediaType == oci.MediaTypeRootfsDiff {
		f.layerFetch.Add(1)
	}
	if d.MediaType == oci.MediaTypeConfig {
		f.configFetch.Add(1)
	}
	rc, err := f.store.Fetch(ctx, d)
	if err != nil || d.Digest != f.corruptWhat {
		return rc, err
	}
	b, _ := io.ReadAll(rc)
	b[len(b)/2] ^= 0xff
	return io.NopCloser(bytes.NewReader(b)), nil
}

type entry struct {
	name, body string
	typ        byte
}

func tarZstd(t *testing.T, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, _ := zstd.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.body)), Typeflag: e.typ}
		if e.typ == tar.TypeDir {
			h.Mode, h.Size = 0o755, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.body))
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

func push(t *testing.T, s *memory.Store, mt string, b []byte) ocispec.Descriptor {
	t.Helper()
	d := ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(b), Size: int64(len(b))}
	if err := s.Push(context.Background(), d, bytes.NewReader(b)); err != nil && !errors.Is(err, errdef.ErrAlreadyExists) {
		t.Fatal(err)
	}
	return d
}

type testArtifact struct {
	arch         string
	artifactType string
	rootfs       bool
	// embed puts the metadata in the manifest too (descriptor data), as
	// oci.Push does; badEmbed puts other bytes there.
	embed, badEmbed bool
}

func (f *fakeRegistry) add(t *testing.T, tag string, a testArtifact) (manifest, criu ocispec.Descriptor) {
	t.Helper()
	if a.arch == "" {
		a.arch = "amd64"
	}
	if a.artifactType == "" {
		a.artifactType = oci.ArtifactType
	}
	criu = push(t, f.store, oci.MediaTypeCRIUImages, tarZstd(t, entry{name: "inventory.img", body: inventoryImage(t, tag)},
		entry{name: "core-1.img", body: coreImage(t)}))
	layers := []ocispec.Descriptor{criu}
	if a.rootfs {
		layers = append(layers, push(t, f.store, oci.MediaTypeRootfsDiff, tarZstd(t,
			entry{name: "etc/", typ: tar.TypeDir}, entry{name: "etc/app.log", body: "log line\n"}, entry{name: "etc/.wh.gone"})))
	}
	return f.addManifest(t, tag, a, layers...), criu
}

// addManifest pushes the metadata and a manifest of layers, and tags it.
func (f *fakeRegistry) addManifest(t *testing.T, tag string, a testArtifact, layers ...ocispec.Descriptor) (manifest ocispec.Descriptor) {
	t.Helper()
	if a.arch == "" {
		a.arch = "amd64"
	}
	if a.artifactType == "" {
		a.artifactType = oci.ArtifactType
	}
	meta, _ := json.Marshal(oci.Metadata{FormatVersion: 1, CRIU: oci.Version{Version: "4.2.1"}, Host: oci.Host{Architecture: a.arch}})
	cfg := push(t, f.store, oci.MediaTypeConfig, meta)
	switch {
	case a.badEmbed:
		cfg.Data = bytes.Replace(meta, []byte("4.2.1"), []byte("1.0.0"), 1)
	case a.embed:
		cfg.Data = meta
	}
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: a.artifactType, Config: cfg, Layers: layers}
	m.SchemaVersion = 2
	mb, _ := json.Marshal(m)
	manifest = push(t, f.store, ocispec.MediaTypeImageManifest, mb)
	f.manifests[manifest.Digest] = manifest
	if err := f.store.Tag(context.Background(), manifest, tag); err != nil {
		t.Fatal(err)
	}
	return manifest
}

// coreImage is a CRIU core image of a root task with CAP_SYS_ADMIN.
func coreImage(t *testing.T) string {
	t.Helper()
	core := &criucore.CoreEntry{
		Mtype: criucore.CoreEntry_X86_64.Enum(),
		ThreadCore: &criucore.ThreadCoreEntry{FutexRla: proto.Uint64(0), FutexRlaLen: proto.Uint32(0), Creds: &creds.CredsEntry{
			Uid: proto.Uint32(0), Gid: proto.Uint32(0), Euid: proto.Uint32(0), Egid: proto.Uint32(0), Suid: proto.Uint32(0),
			Sgid: proto.Uint32(0), Fsuid: proto.Uint32(0), Fsgid: proto.Uint32(0), Secbits: proto.Uint32(0),
			CapEff: []uint32{1 << 21, 0}, CapPrm: []uint32{1 << 21, 0}, CapInh: []uint32{0, 0}, CapBnd: []uint32{1 << 21, 0},
		}},
	}
	return encodeImage(t, "CORE", core)
}

// inventoryImage is an inventory.img whose content tells tag apart (its
// dump_uptime).
func inventoryImage(t *testing.T, tag string) string {
	t.Helper()
	return encodeImage(t, "INVENTORY", &inventory.InventoryEntry{ImgVersion: proto.Uint32(2), DumpUptime: proto.Uint64(uint64(crc32.ChecksumIEEE([]byte(tag))))})
}

// encodeImage is a CRIU image of one entry, as CRIU writes it.
func encodeImage(t *testing.T, magic string, msg proto.Message) string {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "image")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := crit.New(nil, f, "", false, false).Encode(&crit.CriuImage{Magic: magic, Entries: []*crit.CriuEntry{{Message: msg}}}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(f.Name())
	return string(b)
}

type env struct {
	reg      *fakeRegistry
	restorer *Restorer
	cfg      *nodeconfig.Config
}

func newEnv(t *testing.T) *env {
	t.Helper()
	cfg, err := nodeconfig.Parse([]byte(`allow = ["reg.test/apps/"]` + "\n[cache]\nroot = \"" + t.TempDir() + "\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	reg := &fakeRegistry{store: memory.New(), manifests: map[digest.Digest]ocispec.Descriptor{}}
	r := New(cfg, nil)
	r.NewSource = func(registry.Reference) (Source, error) { return reg, nil }
	r.DetectNode = func() (*compat.Node, error) {
		return &compat.Node{Architecture: "amd64", CRIUVersion: 40201}, nil
	}
	return &env{reg: reg, restorer: r, cfg: cfg}
}

var overlayRootfs = []*types.Mount{{Type: "overlay", Source: "overlay",
	Options: []string{"index=off", "workdir=/s/2/work", "upperdir=/s/2/fs", "lowerdir=/s/1/fs"}}}

func bundle(t *testing.T, annotations map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	// Root with CAP_DAC_OVERRIDE, as containerd's default spec has it:
	// confine does not look into the test's rootfs, which is not there.
	// The spec has none of its own namespaces (the test's images have no
	// namespace ids): CAP_CHECKPOINT_RESTORE lets it keep the checkpoint's
	// PIDs in the node's.
	caps := []string{"CAP_DAC_OVERRIDE", "CAP_CHECKPOINT_RESTORE"}
	process := map[string]any{"args": []string{"/bin/sh"}, "capabilities": map[string]any{"bounding": caps, "effective": caps, "permitted": caps}}
	spec := map[string]any{"ociVersion": "1.2.0", "process": process, "annotations": annotations, "x-unknown": 7}
	b, _ := json.Marshal(spec)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

func (e *env) prepare(t *testing.T, ref string, rootfs []*types.Mount) (*Plan, error) {
	t.Helper()
	ann := map[string]string{}
	if ref != "" {
		ann[AnnotationCheckpoint] = ref
	}
	return e.restorer.Prepare(context.Background(), Request{ContainerID: "c1", Bundle: bundle(t, ann), Rootfs: rootfs})
}

func TestNotRequested(t *testing.T) {
	e := newEnv(t)
	if _, err := e.prepare(t, "", overlayRootfs); !errors.Is(err, ErrNotRequested) {
		t.Fatalf("got %v", err)
	}
}

func TestPrepareRestoresAndCaches(t *testing.T) {
	e := newEnv(t)
	_, criu := e.reg.add(t, "v1", testArtifact{rootfs: true})
	ann := map[string]string{AnnotationCheckpoint: "reg.test/apps/web:v1", AnnotationCRIUOptions: "ext-unix-sk"}
	b := bundle(t, ann)
	plan, err := e.restorer.Prepare(context.Background(), Request{ContainerID: "c1", Bundle: b, Rootfs: overlayRootfs})
	if err != nil {
		t.Fatal(err)
	}
	defer plan.Release()
	if plan.Cached || plan.PulledBytes < criu.Size {
		t.Fatalf("first restore: cached=%v pulled=%d", plan.Cached, plan.PulledBytes)
	}
	if got, _ := os.ReadFile(filepath.Join(plan.ImagesDir, "inventory.img")); string(got) != inventoryImage(t, "v1") {
		t.Fatalf("CRIU images not unpacked: %q", got)
	}
	// The spec grants no capabilities: the donor's CAP_SYS_ADMIN is cut
	// in a per-container copy of the images.
	if plan.NarrowedTasks != 1 || strings.HasPrefix(plan.ImagesDir, filepath.Join(e.cfg.Cache.Root, "unpacked")) {
		t.Fatalf("capabilities not narrowed: %d tasks, images in %s", plan.NarrowedTasks, plan.ImagesDir)
	}
	scratch := plan.ImagesDir
	plan.RestoreDone()
	if _, err := os.Stat(scratch); !os.IsNotExist(err) {
		t.Fatalf("per-container images left after the restore: %v", err)
	}
	lower := plan.Rootfs[0].Options[3]
	rootfsDir := filepath.Join(e.cfg.Cache.Root, "unpacked", plan.Digest.Encoded(), "rootfs")
	if lower != "lowerdir="+rootfsDir+":/s/1/fs" {
		t.Fatalf("rootfs changes not stacked: %q", lower)
	}
	if overlayRootfs[0].Options[3] != "lowerdir=/s/1/fs" {
		t.Fatal("the caller's mounts were modified")
	}
	if got, _ := os.ReadFile(filepath.Join(rootfsDir, "etc/app.log")); string(got) != "log line\n" {
		t.Fatalf("rootfs changes not unpacked: %q", got)
	}
	if fi, err := os.Lstat(filepath.Join(rootfsDir, "etc/gone")); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		t.Fatalf("whiteout not converted to an overlay whiteout: %v %v", fi, err)
	}

	// The CRIU config is in the bundle and runc finds it through the spec.
	spec, _ := os.ReadFile(filepath.Join(b, "config.json"))
	var doc struct {
		Annotations map[string]string `json:"annotations"`
		Unknown     int               `json:"x-unknown"`
	}
	json.Unmarshal(spec, &doc)
	conf := doc.Annotations["org.criu.config"]
	if conf != filepath.Join(b, "snapboot-criu.conf") || doc.Unknown != 7 || doc.Annotations[AnnotationCheckpoint] == "" {
		t.Fatalf("spec after prepare: %s", spec)
	}
	if c, _ := os.ReadFile(conf); !strings.Contains(string(c), "\ntcp-close\n") || !strings.Contains(string(c), "\next-unix-sk\n") {
		t.Fatalf("CRIU config:\n%s", c)
	}

	// Second restore on the node: nothing downloaded.
	fetches := e.reg.layerFetch.Load()
	plan2, err := e.prepare(t, "reg.test/apps/web:v1", overlayRootfs)
	if err != nil {
		t.Fatal(err)
	}
	defer plan2.Release()
	if !plan2.Cached || plan2.PulledBytes != 0 || e.reg.layerFetch.Load() != fetches {
		t.Fatalf("second restore downloaded: cached=%v pulled=%d", plan2.Cached, plan2.PulledBytes)
	}

	// Registry down: the tag's cached resolution is used.
	e.reg.offline = true
	plan3, err := e.prepare(t, "reg.test/apps/web:v1", overlayRootfs)
	if err != nil {
		t.Fatalf("cached checkpoint with the registry down: %v", err)
	}
	plan3.Release()
	// ...but a tag never seen here can't be restored.
	if _, err := e.prepare(t, "reg.test/apps/web:v2", overlayRootfs); err == nil {
		t.Fatal("unknown tag restored with the registry down")
	}
}

func TestPrepareByDigestOffline(t *testing.T) {
	e := newEnv(t)
	m, _ := e.reg.add(t, "v1", testArtifact{})
	ref := "reg.test/apps/web@" + m.Digest.String()
	plan, err := e.prepare(t, ref, overlayRootfs)
	if err != nil {
		t.Fatal(err)
	}
	plan.Release()
	if len(plan.Rootfs) != 1 || plan.Rootfs[0].Options[3] != "lowerdir=/s/1/fs" {
		t.Fatalf("rootfs mounts changed without a rootfs layer: %v", plan.Rootfs)
	}
	e.reg.offline = true
	plan, err = e.prepare(t, ref, overlayRootfs)
	if err != nil {
		t.Fatalf("digest reference, cached, registry down: %v", err)
	}
	plan.Release()
}

// The cache holds checkpoints by digest. A cached one is restored for a
// reference only if the reference's repository served it to this node
// configuration: by its digest, another repository (or a runtime with
// another configuration, sharing the cache) would restore a checkpoint it
// has no access to, every memory page of its donor included.
func TestCachedCheckpointNeedsItsRepository(t *testing.T) {
	e := newEnv(t)
	m, _ := e.reg.add(t, "v1", testArtifact{})
	empty := &fakeRegistry{store: memory.New(), manifests: map[digest.Digest]ocispec.Descriptor{}}
	e.restorer.NewSource = func(ref registry.Reference) (Source, error) {
		if ref.Repository == "apps/web" {
			return e.reg, nil
		}
		return empty, nil
	}
	plan, err := e.prepare(t, "reg.test/apps/web@"+m.Digest.String(), overlayRootfs)
	if err != nil {
		t.Fatal(err)
	}
	plan.Release()
	if _, err := e.prepare(t, "reg.test/apps/other@"+m.Digest.String(), overlayRootfs); err == nil || !strings.Contains(err.Error(), "resolve") {
		t.Fatalf("another repository, which does not have it, named the cached checkpoint: %v", err)
	}
	// Another runtime's configuration, on the same cache, allowing only
	// its own repository; its registry has nothing.
	cfg, err := nodeconfig.Parse([]byte(`allow = ["reg.test/tenant-b/"]` + "\n[cache]\nroot = \"" + e.cfg.Cache.Root + "\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	b := New(cfg, nil)
	b.ConfigPath = "/etc/snapboot/tenant-b.toml"
	b.NewSource = func(registry.Reference) (Source, error) { return empty, nil }
	b.DetectNode = e.restorer.DetectNode
	req := Request{ContainerID: "c2", Bundle: bundle(t, map[string]string{AnnotationCheckpoint: "reg.test/tenant-b/x@" + m.Digest.String()}), Rootfs: overlayRootfs}
	if _, err := b.Prepare(context.Background(), req); err == nil {
		t.Fatal("another configuration restored the cached checkpoint from a repository that never served it")
	}
	// The repository that served it, with the registry down: restored.
	e.reg.offline = true
	plan, err = e.prepare(t, "reg.test/apps/web@"+m.Digest.String(), overlayRootfs)
	if err != nil {
		t.Fatalf("from the repository that served it, registry down: %v", err)
	}
	plan.Release()
}

// A tag's last resolution is used only when the registry does not answer:
// one that answers that access is refused, or with a certificate the node
// does not trust, revokes it.
func TestTagFallbackOnlyWhenUnreachable(t *testing.T) {
	e := newEnv(t)
	e.reg.add(t, "v1", testArtifact{})
	plan, err := e.prepare(t, "reg.test/apps/web:v1", overlayRootfs)
	if err != nil {
		t.Fatal(err)
	}
	plan.Release()
	for _, c := range []struct {
		name   string
		answer error
		falls  bool
	}{
		{"connection refused", errOffline, true},
		{"server error", &errcode.ErrorResponse{Method: http.MethodGet, StatusCode: http.StatusServiceUnavailable}, true},
		{"access refused", &errcode.ErrorResponse{Method: http.MethodGet, StatusCode: http.StatusUnauthorized}, false},
		{"forbidden", &errcode.ErrorResponse{Method: http.MethodGet, StatusCode: http.StatusForbidden}, false},
		{"untrusted certificate", &url.Error{Op: "Get", URL: "https://reg.test/v2/", Err: x509.UnknownAuthorityError{}}, false},
		{"client certificate refused", &url.Error{Op: "Get", URL: "https://reg.test/v2/", Err: &net.OpError{Op: "remote error", Err: tls.AlertError(42)}}, false},
		{"plain HTTP", &url.Error{Op: "Get", URL: "https://reg.test/v2/", Err: errors.New("http: server gave HTTP response to HTTPS client")}, false},
		{"name not found", &url.Error{Op: "Get", URL: "https://reg.test/v2/", Err: &net.OpError{Op: "dial", Err: &net.DNSError{Err: "no such host", Name: "reg.test", IsNotFound: true}}}, true},
		{"timeout", &url.Error{Op: "Get", URL: "https://reg.test/v2/", Err: context.DeadlineExceeded}, true},
		{"connection cut", &url.Error{Op: "Get", URL: "https://reg.test/v2/", Err: io.ErrUnexpectedEOF}, true},
		{"gone", fmt.Errorf("reg.test/apps/web:v1: %w", errdef.ErrNotFound), false},
	} {
		e.reg.refuse = c.answer
		plan, err := e.prepare(t, "reg.test/apps/web:v1", overlayRootfs)
		if err == nil {
			plan.Release()
		}
		if (err == nil) != c.falls {
			t.Errorf("%s: %v; want the cached resolution used: %v", c.name, err, c.falls)
		}
	}
}

func TestPrepareRefusals(t *testing.T) {
	e := newEnv(t)
	e.reg.add(t, "good", testArtifact{rootfs: true})
	e.reg.add(t, "arm", testArtifact{arch: "arm64"})
	e.reg.add(t, "notours", testArtifact{artifactType: "application/vnd.example.thing"})
	_, corruptLayer := e.reg.add(t, "corrupt", testArtifact{})
	e.reg.corruptWhat = corruptLayer.Digest

	cases := []struct {
		name, ref string
		rootfs    []*types.Mount
		is        error
		want      string
	}{
		{"bad reference", "reg.test/apps/web", overlayRootfs, nil, "tag or a digest"},
		{"not allowed", "other.test/apps/web:good", overlayRootfs, ErrDenied, "allow list"},
		{"missing tag", "reg.test/apps/web:nope", overlayRootfs, nil, "resolve"},
		{"wrong artifact type", "reg.test/apps/web:notours", overlayRootfs, oci.ErrInvalidArtifact, "artifactType"},
		{"other architecture", "reg.test/apps/web:arm", overlayRootfs, compat.ErrIncompatible, "arm64"},
		{"corrupted blob", "reg.test/apps/web:corrupt", overlayRootfs, nil, "digest"},
		{"rootfs not overlay", "reg.test/apps/web:good", []*types.Mount{{Type: "bind", Source: "/x"}}, nil, "overlay"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := e.reg.layerFetch.Load()
			plan, err := e.prepare(t, c.ref, c.rootfs)
			if err == nil {
				plan.Release()
				t.Fatal("restore prepared, want a refusal")
			}
			if RefOf(err) != c.ref {
				t.Errorf("RefOf = %q, want %q", RefOf(err), c.ref)
			}
			if c.is != nil && !errors.Is(err, c.is) {
				t.Errorf("got %v, want %v", err, c.is)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not mention %q", err, c.want)
			}
			if c.name == "other architecture" && e.reg.layerFetch.Load() != before {
				t.Error("layers downloaded for a checkpoint the pre-flight refuses")
			}
		})
	}
	entries, _ := os.ReadDir(filepath.Join(e.cfg.Cache.Root, "unpacked"))
	for _, en := range entries {
		if _, err := os.Stat(filepath.Join(e.cfg.Cache.Root, "unpacked", en.Name(), ".snapboot-complete")); err != nil {
			t.Errorf("incomplete unpacked entry left: %s", en.Name())
		}
	}
}

func TestBrokenNodeConfigRefuses(t *testing.T) {
	e := newEnv(t)
	e.reg.add(t, "v1", testArtifact{})
	e.restorer.cfgErr = errors.New("parse snapboot config: boom")
	if _, err := e.prepare(t, "reg.test/apps/web:v1", overlayRootfs); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("got %v", err)
	}
}

func TestArmDump(t *testing.T) {
	b := bundle(t, map[string]string{AnnotationCRIUOptions: "ext-unix-sk"})
	if err := ArmDump(b); err != nil {
		t.Fatal(err)
	}
	doc, err := readSpecDoc(b)
	if err != nil {
		t.Fatal(err)
	}
	ann, err := annotations(doc)
	if err != nil {
		t.Fatal(err)
	}
	conf, err := os.ReadFile(ann["org.criu.config"])
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(conf), "\ntcp-established\n") || !strings.Contains(string(conf), "\next-unix-sk\n") || strings.Contains(string(conf), "tcp-close") {
		t.Fatalf("dump config:\n%s", conf)
	}
	if err := ArmDump(filepath.Join(b, "missing")); err == nil {
		t.Fatal("ArmDump of a bundle without config.json: want an error")
	}
}

func TestPodSandboxNeverRestored(t *testing.T) {
	e := newEnv(t)
	e.reg.add(t, "v1", testArtifact{})
	b := bundle(t, map[string]string{AnnotationCheckpoint: "reg.test/apps/web:v1", "io.kubernetes.cri.container-type": "sandbox"})
	if _, err := e.restorer.Prepare(context.Background(), Request{ContainerID: "pause", Bundle: b, Rootfs: overlayRootfs}); !errors.Is(err, ErrNotRequested) {
		t.Fatalf("pause container: got %v, want ErrNotRequested", err)
	}
	if e.reg.layerFetch.Load() != 0 {
		t.Fatal("layers downloaded for a pause container")
	}
}

// A pod's annotations reach all its containers: only the one
// snapboot.dev/container names is restored, and a container the kubelet
// restarts starts cold, all without a download.
func TestOnlyTheNamedContainersFirstStartRestores(t *testing.T) {
	e := newEnv(t)
	e.reg.add(t, "v1", testArtifact{})
	pod := func(more map[string]string) map[string]string {
		ann := map[string]string{AnnotationCheckpoint: "reg.test/apps/web:v1", AnnotationContainer: "web"}
		for k, v := range more {
			ann[k] = v
		}
		return ann
	}
	for _, tc := range []struct {
		name string
		ann  map[string]string
	}{
		{"sidecar", pod(map[string]string{criContainerName: "istio-proxy", kubeletRestartCount: "0"})},
		{"init container", pod(map[string]string{criContainerName: "migrate"})},
		{"not from CRI", pod(nil)},
		{"restarted", pod(map[string]string{criContainerName: "web", kubeletRestartCount: "1"})},
		{"restarted, no selector", map[string]string{AnnotationCheckpoint: "reg.test/apps/web:v1", kubeletRestartCount: "3"}},
	} {
		if _, err := e.restorer.Prepare(context.Background(), Request{ContainerID: "c", Bundle: bundle(t, tc.ann), Rootfs: overlayRootfs}); !errors.Is(err, ErrNotRequested) {
			t.Fatalf("%s: got %v, want ErrNotRequested", tc.name, err)
		}
	}
	if n := e.reg.layerFetch.Load(); n != 0 {
		t.Fatalf("%d layer downloads for containers not to restore", n)
	}
	for _, ann := range []map[string]string{
		pod(map[string]string{criContainerName: "web", kubeletRestartCount: "0"}),
		{AnnotationCheckpoint: "reg.test/apps/web:v1", criContainerName: "any"},
	} {
		plan, err := e.restorer.Prepare(context.Background(), Request{ContainerID: "c", Bundle: bundle(t, ann), Rootfs: overlayRootfs})
		if err != nil {
			t.Fatalf("%v: %v, want a restore", ann, err)
		}
		plan.Release()
	}
}

// With the node's namespaces table, a pod restores only from its
// namespace's repositories, and is refused before any download; a container
// that is not a pod's is bound by allow alone.
func TestNamespacePolicy(t *testing.T) {
	e := newEnv(t)
	e.reg.add(t, "v1", testArtifact{})
	cfg, err := nodeconfig.Parse([]byte("allow = [\"reg.test/apps/\"]\n[namespaces]\nweb-team = [\"reg.test/apps/web\"]\nother = [\"reg.test/apps/other\"]\n[cache]\nroot = \"" + e.cfg.Cache.Root + "\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	e.restorer.cfg = cfg
	ref := "reg.test/apps/web:v1"
	for _, ns := range []string{"other", "unlisted"} {
		_, err := e.restorer.Prepare(context.Background(), Request{ContainerID: "c", Bundle: bundle(t, map[string]string{AnnotationCheckpoint: ref, criSandboxNamespace: ns}), Rootfs: overlayRootfs})
		if !errors.Is(err, ErrDenied) || !strings.Contains(err.Error(), ns) {
			t.Fatalf("pod of namespace %s: got %v, want ErrDenied naming the namespace", ns, err)
		}
	}
	if n := e.reg.layerFetch.Load(); n != 0 {
		t.Fatalf("%d layer downloads for refused pods", n)
	}
	in, err := e.restorer.Inspect(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(in.Namespaces, []string{"web-team"}) {
		t.Fatalf("inspection: namespaces %q, want [web-team]", in.Namespaces)
	}
	for _, ann := range []map[string]string{
		{AnnotationCheckpoint: ref, criSandboxNamespace: "web-team"},
		{AnnotationCheckpoint: ref},
	} {
		plan, err := e.restorer.Prepare(context.Background(), Request{ContainerID: "c", Bundle: bundle(t, ann), Rootfs: overlayRootfs})
		if err != nil {
			t.Fatalf("%v: %v, want a restore", ann, err)
		}
		plan.Release()
	}
}

// refRegistry also serves a manifest by reference, as oras-go's remote
// repository does: one GET resolves it and brings its content.
type refRegistry struct {
	*fakeRegistry
	byRef          atomic.Int32
	manifestFetch  atomic.Int32
	tamperManifest bool
}

func (f *refRegistry) FetchReference(ctx context.Context, ref string) (ocispec.Descriptor, io.ReadCloser, error) {
	f.byRef.Add(1)
	d, err := f.fakeRegistry.Resolve(ctx, ref)
	if err != nil {
		return d, nil, err
	}
	rc, err := f.store.Fetch(ctx, d)
	if err != nil || !f.tamperManifest {
		return d, rc, err
	}
	b, _ := io.ReadAll(rc)
	b[len(b)/2] ^= 0xff
	return d, io.NopCloser(bytes.NewReader(b)), nil
}

func (f *refRegistry) Fetch(ctx context.Context, d ocispec.Descriptor) (io.ReadCloser, error) {
	if d.MediaType == ocispec.MediaTypeImageManifest {
		f.manifestFetch.Add(1)
	}
	return f.fakeRegistry.Fetch(ctx, d)
}

// A registry that serves manifests by reference is asked once for the
// manifest, not once to resolve the tag and once more for its content.
func TestPrepareFetchesManifestWithTag(t *testing.T) {
	e := newEnv(t)
	reg := &refRegistry{fakeRegistry: e.reg}
	e.restorer.NewSource = func(registry.Reference) (Source, error) { return reg, nil }
	e.reg.add(t, "v1", testArtifact{})
	for i, want := range []bool{false, true} {
		plan, err := e.prepare(t, "reg.test/apps/web:v1", overlayRootfs)
		if err != nil {
			t.Fatal(err)
		}
		plan.Release()
		if plan.Cached != want || reg.byRef.Load() != int32(i+1) || reg.manifestFetch.Load() != 0 {
			t.Fatalf("restore %d: cached=%v, %d fetches by reference, %d of the manifest by digest", i+1, plan.Cached, reg.byRef.Load(), reg.manifestFetch.Load())
		}
	}
	// Pinned by digest and not cached: one request as well.
	m, _ := e.reg.add(t, "v2", testArtifact{rootfs: true})
	plan, err := e.prepare(t, "reg.test/apps/web@"+m.Digest.String(), overlayRootfs)
	if err != nil {
		t.Fatal(err)
	}
	plan.Release()
	if reg.byRef.Load() != 3 || reg.manifestFetch.Load() != 0 {
		t.Fatalf("by digest: %d fetches by reference, %d of the manifest", reg.byRef.Load(), reg.manifestFetch.Load())
	}
}

// Metadata embedded in the manifest is used without fetching the blob, and
// cached as the blob would be; embedded bytes that are not the blob the
// descriptor names are refused.
func TestPrepareEmbeddedMetadata(t *testing.T) {
	e := newEnv(t)
	m, _ := e.reg.add(t, "v1", testArtifact{embed: true})
	plan, err := e.prepare(t, "reg.test/apps/web:v1", overlayRootfs)
	if err != nil {
		t.Fatal(err)
	}
	plan.Release()
	if n := e.reg.configFetch.Load(); n != 0 {
		t.Fatalf("the metadata blob was fetched %d times", n)
	}
	// Cached: by digest, with the registry gone, it restores.
	e.reg.offline = true
	plan, err = e.prepare(t, "reg.test/apps/web@"+m.Digest.String(), overlayRootfs)
	if err != nil {
		t.Fatalf("offline, by digest: %v", err)
	}
	plan.Release()
	e.reg.offline = false

	e.reg.add(t, "v2", testArtifact{badEmbed: true})
	_, err = e.prepare(t, "reg.test/apps/web:v2", overlayRootfs)
	if !errors.Is(err, oci.ErrInvalidArtifact) || !strings.Contains(err.Error(), "config data does not match") {
		t.Fatalf("mismatched embedded metadata: %v", err)
	}
	// Without embedded metadata the blob is fetched, once.
	e = newEnv(t)
	e.reg.add(t, "v3", testArtifact{rootfs: true})
	plan, err = e.prepare(t, "reg.test/apps/web:v3", overlayRootfs)
	if err != nil {
		t.Fatal(err)
	}
	plan.Release()
	if n := e.reg.configFetch.Load(); n != 1 {
		t.Fatalf("the metadata blob was fetched %d times, want 1", n)
	}
}

// A manifest whose content does not match the digest the registry gave is
// refused, and the tag's earlier resolution on this node is not used
// instead: the registry answered, wrongly.
func TestPrepareTamperedManifestWithTag(t *testing.T) {
	e := newEnv(t)
	reg := &refRegistry{fakeRegistry: e.reg}
	e.restorer.NewSource = func(registry.Reference) (Source, error) { return reg, nil }
	e.reg.add(t, "v1", testArtifact{})
	plan, err := e.prepare(t, "reg.test/apps/web:v1", overlayRootfs)
	if err != nil {
		t.Fatal(err)
	}
	plan.Release()
	e.reg.add(t, "v1", testArtifact{rootfs: true}) // the tag moves on
	reg.tamperManifest = true
	_, err = e.prepare(t, "reg.test/apps/web:v1", overlayRootfs)
	if err == nil || !strings.Contains(err.Error(), "manifest") {
		t.Fatalf("tampered manifest: %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(e.cfg.Cache.Root, "ingest")); len(ents) != 0 {
		t.Fatalf("left in ingest: %v", ents)
	}
	// The tag back on the manifest the node has: a body that is not that
	// manifest is refused all the same (the registry must hold it, not
	// just name its digest).
	e.reg.add(t, "v1", testArtifact{})
	if _, err := e.prepare(t, "reg.test/apps/web:v1", overlayRootfs); err == nil || !strings.Contains(err.Error(), "does not match its digest") {
		t.Fatalf("tampered manifest the node has: %v", err)
	}
	reg.tamperManifest = false
	plan, err = e.prepare(t, "reg.test/apps/web:v1", overlayRootfs)
	if err != nil {
		t.Fatal(err)
	}
	plan.Release()
}

// Inspect shows a checkpoint the node's policy denies, with the reason,
// and keeps nothing of it in the node cache; an allowed one is cached as
// a restore would cache it.
func TestInspect(t *testing.T) {
	e := newEnv(t)
	e.reg.add(t, "v1", testArtifact{})
	blobs := func() []string {
		ents, _ := os.ReadDir(filepath.Join(e.cfg.Cache.Root, "blobs", "sha256"))
		var names []string
		for _, en := range ents {
			names = append(names, en.Name())
		}
		return names
	}
	for _, c := range []struct {
		ref    string
		denied bool
	}{{"elsewhere.test/apps/web:v1", true}, {"reg.test/apps/web:v1", false}} {
		in, err := e.restorer.Inspect(context.Background(), c.ref)
		if err != nil {
			t.Fatalf("%s: %v", c.ref, err)
		}
		if in.Metadata == nil || in.Checkpoint == nil || in.Compatible != nil || in.Unpacked {
			t.Fatalf("%s: %+v", c.ref, in)
		}
		if denied := errors.Is(in.Allowed, ErrDenied); denied != c.denied {
			t.Fatalf("%s: allowed says %v", c.ref, in.Allowed)
		}
		if got := blobs(); (len(got) == 0) != c.denied {
			t.Fatalf("%s: the node cache holds %v", c.ref, got)
		}
		if ents, _ := os.ReadDir(filepath.Join(e.cfg.Cache.Root, "tmp")); len(ents) != 0 {
			t.Fatalf("%s: left in tmp: %v", c.ref, ents)
		}
	}
}

func TestPullLeavesTimeForTheFallback(t *testing.T) {
	for _, c := range []struct {
		name            string
		callers         time.Duration // 0: no deadline
		timeout, wantIn time.Duration
	}{
		{"no caller deadline", 0, 5 * time.Minute, 5 * time.Minute},
		{"kubelet's 2 minutes", 2 * time.Minute, 5 * time.Minute, 2*time.Minute - fallbackReserve},
		{"little time left", 10 * time.Second, 5 * time.Minute, 5 * time.Second},
		{"timeout first", 2 * time.Minute, 30 * time.Second, 30 * time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			if c.callers > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, c.callers)
				defer cancel()
			}
			pctx, cancel := pullContext(ctx, c.timeout)
			defer cancel()
			d, ok := pctx.Deadline()
			if !ok {
				t.Fatal("no deadline")
			}
			if got := time.Until(d); got > c.wantIn || got < c.wantIn-time.Second {
				t.Fatalf("pull deadline in %v, want %v", got, c.wantIn)
			}
		})
	}
}
