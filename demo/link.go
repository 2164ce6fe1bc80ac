package main

import (
	"io"
	"net"
	"sync"
	"time"
)

// link is a TCP proxy to the registry that behaves like a network link
// between a node and its registry: it carries the registry's answers at
// the payload rate of an Ethernet link of a set speed and delays each
// direction by half a round trip. The bench restores through it to show
// what the pull costs when it is not on loopback. It does not model TCP's
// slow start or losses.
type link struct {
	ln     net.Listener
	to     string
	bps    float64       // payload bytes per second, registry to node
	oneWay time.Duration // half the round trip

	mu   sync.Mutex
	next time.Time // when the link is free again
	wg   sync.WaitGroup
}

// ethernetPayload is the share of an Ethernet link's bits that is TCP
// payload: 1448 bytes (a 1500-byte MTU less the IP and TCP headers with
// timestamps) per 1538 on the wire (Ethernet header, FCS, preamble and the
// gap between frames).
const ethernetPayload = 1448.0 / 1538.0

// startLink starts a link of mbps megabits per second and round trip rtt
// to the TCP address to.
func startLink(to string, mbps int, rtt time.Duration) (*link, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	l := &link{ln: ln, to: to, bps: float64(mbps) * 1e6 / 8 * ethernetPayload, oneWay: rtt / 2}
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
		l.carry(up, c, false)
		up.(*net.TCPConn).CloseWrite()
	}()
	l.carry(c, up, true)
}

// chunk is what a link carries, and when it arrives at the other end.
type chunk struct {
	b   []byte
	due time.Time
}

// carry copies src to dst as the link would: each chunk arrives half a
// round trip after it was sent and, if paced, after the link had room for
// it. Chunks in flight queue between a reader and a writer, so the delay
// does not lower the rate.
func (l *link) carry(dst io.Writer, src io.ReadCloser, paced bool) {
	q := make(chan chunk, 256)
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(q)
		for {
			buf := make([]byte, 64<<10)
			n, err := src.Read(buf)
			if n > 0 {
				if paced {
					l.pace(n)
				}
				q <- chunk{buf[:n], time.Now().Add(l.oneWay)}
			}
			if err != nil {
				return
			}
		}
	})
	defer wg.Wait()
	for c := range q {
		if d := time.Until(c.due); d > 0 {
			time.Sleep(d)
		}
		if _, err := dst.Write(c.b); err != nil {
			src.Close() // ends the reader's read
			for range q {
			}
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
