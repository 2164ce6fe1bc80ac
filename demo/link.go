package main

import (
	"io"
	"net"
	"sync"
	"time"
)

// link is a TCP proxy to the registry that carries the registry's answers
// at a set rate, like a network link of that speed between a node and its
// registry (no added latency). The bench restores through it to show what
// the pull costs when it is not on loopback.
type link struct {
	ln  net.Listener
	to  string
	bps float64 // bytes per second, registry to node

	mu   sync.Mutex
	next time.Time // when the link is free again
	wg   sync.WaitGroup
}

func startLink(to string, mbps int) (*link, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	l := &link{ln: ln, to: to, bps: float64(mbps) * 1e6 / 8}
	l.wg.Go(l.serve)
	return l, nil
}

func (l *link) addr() string { return l.ln.Addr().String() }

func (l *link) close() {
	l.ln.Close()
	l.wg.Wait()
}

func (l *link) serve() {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.wg.Go(func() { l.proxy(c) })
	}
}

func (l *link) proxy(c net.Conn) {
	defer c.Close()
	up, err := net.Dial("tcp", l.to)
	if err != nil {
		return
	}
	defer up.Close()
	go func() {
		io.Copy(up, c)
		up.(*net.TCPConn).CloseWrite()
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := up.Read(buf)
		if n > 0 {
			l.pace(n)
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// burst is how far the link may catch up after an idle moment or a sleep
// that overran: timers are coarser than one chunk's time on a fast link.
const burst = 5 * time.Millisecond

// pace waits until the link has carried n more bytes: all connections share
// its rate.
func (l *link) pace(n int) {
	l.mu.Lock()
	now := time.Now()
	if l.next.Before(now.Add(-burst)) {
		l.next = now.Add(-burst)
	}
	l.next = l.next.Add(time.Duration(float64(n) / l.bps * float64(time.Second)))
	wait := time.Until(l.next)
	l.mu.Unlock()
	if wait > 0 {
		time.Sleep(wait)
	}
}
