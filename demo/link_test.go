package main

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"
)

// throughLink serves data to one client through a link of mbps, and
// returns what the client read and how long that took.
func throughLink(t *testing.T, data []byte, mbps int, rtt time.Duration) ([]byte, time.Duration) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.CopyN(io.Discard, c, 5) // the request
		c.Write(data)
	}()
	l, err := startLink(ln.Addr().String(), mbps, rtt)
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()
	c, err := net.Dial("tcp", l.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	began := time.Now()
	c.Write([]byte("hello"))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	return got, time.Since(began)
}

// The link carries what the server sends, intact, no faster than its rate.
func TestLinkPaces(t *testing.T) {
	data := make([]byte, 2<<20)
	for i := range data {
		data[i] = byte(rand.IntN(256))
	}
	got, took := throughLink(t, data, 80, 0) // 10 MB/s, 9.4 MB/s of payload
	if !bytes.Equal(got, data) {
		t.Fatalf("got %d bytes, want the %d sent", len(got), len(data))
	}
	// 2 MiB at 9.4 MB/s: 0.22 s, less the burst the link allows.
	if took < 200*time.Millisecond || took > time.Second {
		t.Fatalf("2 MiB at 9.4 MB/s of payload took %v", took)
	}
}

// At 1 Gbit/s, coarse timers must not slow the link down.
func TestLinkFast(t *testing.T) {
	got, took := throughLink(t, make([]byte, 64<<20), 1000, time.Millisecond)
	// 64 MiB at 118 MB/s of payload: 0.57 s (a link limited by its timers
	// took 5 s; one whose delay held back each chunk, 0.5 ms a chunk more).
	if len(got) != 64<<20 || took < 500*time.Millisecond || took > 2*time.Second {
		t.Fatalf("%d bytes in %v", len(got), took)
	}
}

// Each direction is half a round trip late.
func TestLinkRoundTrip(t *testing.T) {
	got, took := throughLink(t, []byte("x"), 1000, 40*time.Millisecond)
	if string(got) != "x" || took < 40*time.Millisecond || took > 400*time.Millisecond {
		t.Fatalf("%q after %v, want x after a 40ms round trip", got, took)
	}
	_, took = throughLink(t, []byte("x"), 1000, 0)
	if took > 30*time.Millisecond {
		t.Fatalf("no round trip, but the answer took %v", took)
	}
}
