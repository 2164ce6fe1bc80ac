//go:build linux

package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/term"
)

// progress shows stages and upload progress on a terminal, and nothing in
// pipes and CI.
type progress struct {
	out *os.File
	tty bool
	mu  sync.Mutex
}

func newProgress(out *os.File) *progress {
	return &progress{out: out, tty: term.IsTerminal(int(out.Fd())) && os.Getenv("CI") == ""}
}

func (p *progress) Stage(format string, args ...any) {
	if !p.tty {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.out, "\r\033[K%s\n", fmt.Sprintf(format, args...))
}

func (p *progress) Upload(name string, size int64, r io.Reader) io.Reader {
	if !p.tty {
		return r
	}
	return &progressReader{p: p, name: name, size: size, r: r}
}

// Done ends a progress line.
func (p *progress) Done() {
	if p.tty {
		fmt.Fprint(p.out, "\r\033[K")
	}
}

type progressReader struct {
	p    *progress
	name string
	size int64
	n    int64
	last time.Time
	r    io.Reader
}

func (pr *progressReader) Read(b []byte) (int, error) {
	n, err := pr.r.Read(b)
	pr.n += int64(n)
	if time.Since(pr.last) > 200*time.Millisecond || err == io.EOF {
		pr.last = time.Now()
		pr.p.mu.Lock()
		fmt.Fprintf(pr.p.out, "\r\033[K  %s: %s / %s", pr.name, human(pr.n), human(pr.size))
		pr.p.mu.Unlock()
	}
	return n, err
}
