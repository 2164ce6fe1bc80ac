//go:build integration && linux

package integration

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// faultProxy sits on 127.0.0.1 in front of the test registry and misbehaves
// for chosen repositories: it can delay or truncate blobs, serve a manifest
// that is not JSON, and count blob downloads.
type faultProxy struct {
	addr string

	mu        sync.Mutex
	slowBlobs map[string]time.Duration // repository -> pause in the middle of a blob's body
	pauses    map[string]pausePoint    // blob digest -> pause at a chosen point of its body
	truncate  map[string]bool          // repository -> cut blobs in half
	badJSON   map[string]bool          // repository -> manifests are garbage
	blobGets  map[string]int           // digest -> GETs served
}

func newFaultProxy(t *testing.T) *faultProxy {
	t.Helper()
	target, _ := url.Parse("http://" + registryAddr)
	rp := httputil.NewSingleHostReverseProxy(target)
	p := &faultProxy{slowBlobs: map[string]time.Duration{}, truncate: map[string]bool{}, badJSON: map[string]bool{}, blobGets: map[string]int{}, pauses: map[string]pausePoint{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		repo, kind, ref := splitRegistryPath(r.URL.Path)
		p.mu.Lock()
		delay, cut, bad := p.slowBlobs[repo], p.truncate[repo], p.badJSON[repo]
		pause, paused := p.pauses[ref]
		if kind == "blobs" && r.Method == http.MethodGet {
			p.blobGets[ref]++
		}
		p.mu.Unlock()
		switch {
		case kind == "manifests" && bad:
			body := []byte(`{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", not json`)
			w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
			w.Header().Set("Docker-Content-Digest", fmt.Sprintf("sha256:%x", sha256.Sum256(body)))
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			if r.Method == http.MethodGet {
				w.Write(body)
			}
		case kind == "blobs" && r.Method == http.MethodGet && (delay > 0 || cut || paused):
			rec := &bufferedResponse{header: http.Header{}}
			rp.ServeHTTP(rec, r)
			for k, v := range rec.header {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.status)
			if paused {
				pause.at = min(pause.at, int64(len(rec.body)))
				delay = pause.delay
			}
			if delay > 0 {
				// Half the body now, the rest after the delay: the client
				// has a partial download in progress meanwhile.
				half := len(rec.body) / 2
				if paused {
					half = int(pause.at)
				}
				w.Write(rec.body[:half])
				if f, ok := w.(http.Flusher); ok {
					f.Flush()
				}
				select {
				case <-time.After(delay):
				case <-r.Context().Done():
					return
				}
				w.Write(rec.body[half:])
				return
			}
			if cut {
				w.Write(rec.body[:len(rec.body)/2])
				if hj, ok := w.(http.Hijacker); ok { // end the connection short of Content-Length
					if c, _, err := hj.Hijack(); err == nil {
						c.Close()
					}
				}
				return
			}
			w.Write(rec.body)
		default:
			rp.ServeHTTP(w, r)
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return p
}

// pausePoint is where a blob's body stops, and for how long.
type pausePoint struct {
	at    int64
	delay time.Duration
}

// splitRegistryPath splits /v2/REPO/KIND/REF.
func splitRegistryPath(p string) (repo, kind, ref string) {
	p = strings.TrimPrefix(p, "/v2/")
	for _, k := range []string{"/manifests/", "/blobs/"} {
		if i := strings.LastIndex(p, k); i >= 0 {
			return p[:i], strings.Trim(k, "/"), p[i+len(k):]
		}
	}
	return "", "", ""
}

func (p *faultProxy) set(f func(*faultProxy)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f(p)
}

func (p *faultProxy) gets(digest string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.blobGets[digest]
}

type bufferedResponse struct {
	header http.Header
	status int
	body   []byte
}

func (b *bufferedResponse) Header() http.Header { return b.header }
func (b *bufferedResponse) WriteHeader(s int)   { b.status = s }
func (b *bufferedResponse) Write(p []byte) (int, error) {
	if b.status == 0 {
		b.status = 200
	}
	b.body = append(b.body, p...)
	return len(p), nil
}

var _ io.Writer = (*bufferedResponse)(nil)
