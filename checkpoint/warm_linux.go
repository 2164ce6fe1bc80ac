//go:build linux

package checkpoint

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	neturl "net/url"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// WaitHTTP waits until url answers 200 inside the network namespace of
// process pid (the container's init), then sends warm more requests, each of
// which must answer 200, so that the snapshot holds a warm app rather than a
// half-booted one. The URL is as seen from inside the container
// (http://127.0.0.1:3000/).
func WaitHTTP(ctx context.Context, pid uint32, url string, warm int, timeout time.Duration) (time.Duration, error) {
	// A name would be resolved by the node's resolver, on other threads
	// than the one in the container's namespace: not as the container
	// sees it.
	u, err := neturl.Parse(url)
	if err != nil {
		return 0, fmt.Errorf("--wait-http %s: %w", url, err)
	}
	if host := u.Hostname(); net.ParseIP(host) == nil && host != "localhost" {
		return 0, fmt.Errorf("--wait-http %s: give an IP address (or localhost), as the container sees it, not a host name", url)
	}
	began := time.Now()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	nsPath := fmt.Sprintf("/proc/%d/ns/net", pid)
	client := &http.Client{
		Transport: &http.Transport{DialContext: dialInNetns(nsPath), DisableKeepAlives: true},
		Timeout:   30 * time.Second,
	}
	get := func() error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s answered %s", url, resp.Status)
		}
		return nil
	}
	var last error
	for {
		if last = get(); last == nil {
			break
		}
		select {
		case <-ctx.Done():
			return time.Since(began), fmt.Errorf("%s did not answer 200 within %v: %w", url, timeout, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
	for i := 0; i < warm; i++ {
		if err := get(); err != nil {
			return time.Since(began), fmt.Errorf("warm-up request %d: %w", i+1, err)
		}
	}
	return time.Since(began), nil
}

// dialInNetns dials from inside the network namespace at nsPath: the socket
// is created on an OS thread that has joined the namespace, and keeps it.
func dialInNetns(nsPath string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		type result struct {
			c   net.Conn
			err error
		}
		ch := make(chan result, 1)
		go func() {
			runtime.LockOSThread()
			// The thread is not unlocked if it could not go back to its
			// namespace: Go then ends it with the goroutine.
			back, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				ch <- result{err: fmt.Errorf("open own netns: %w", err)}
				return
			}
			defer unix.Close(back)
			target, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				runtime.UnlockOSThread()
				ch <- result{err: fmt.Errorf("open %s: %w", nsPath, err)}
				return
			}
			defer unix.Close(target)
			if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
				runtime.UnlockOSThread()
				ch <- result{err: fmt.Errorf("enter %s: %w", nsPath, err)}
				return
			}
			// No Happy Eyeballs: every attempt must run on this thread.
			d := net.Dialer{FallbackDelay: -1}
			c, err := d.DialContext(ctx, network, addr)
			if unix.Setns(back, unix.CLONE_NEWNET) == nil {
				runtime.UnlockOSThread()
			}
			ch <- result{c, err}
		}()
		r := <-ch
		return r.c, r.err
	}
}
