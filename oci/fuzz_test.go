package oci

import "testing"

func FuzzDecodeManifest(f *testing.F) {
	f.Add([]byte(`{"schemaVersion":2,"artifactType":"application/vnd.snapboot.checkpoint.v1","config":{"mediaType":"application/vnd.snapboot.checkpoint.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ck, err := DecodeManifest(data)
		if err == nil && (ck.CRIU.Digest == "" || ck.Size() < 0) {
			t.Fatalf("accepted a manifest without a valid CRIU layer: %+v", ck)
		}
	})
}

func FuzzDecodeMetadata(f *testing.F) {
	f.Add([]byte(`{"formatVersion":1,"criu":{"version":"4.2.1"},"host":{"architecture":"amd64"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := DecodeMetadata(data)
		if err == nil && (m.Host.Architecture == "" || m.FormatVersion != FormatVersion) {
			t.Fatalf("accepted incomplete metadata: %+v", m)
		}
	})
}

func FuzzParseReference(f *testing.F) {
	f.Add("127.0.0.1:5000/app/checkpoints:v42")
	f.Add("registry.example.com/team/app@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
	f.Fuzz(func(t *testing.T, s string) {
		ref, err := ParseReference(s)
		if err == nil && (ref.Registry == "" || ref.Repository == "" || ref.Reference == "") {
			t.Fatalf("accepted %q as %+v", s, ref)
		}
	})
}
