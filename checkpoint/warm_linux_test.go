//go:build linux

package checkpoint

import (
	"context"
	"strings"
	"testing"
	"time"
)

// A host name in --wait-http would be resolved by the node, not as the
// container sees it: refused at once, before any wait.
func TestWaitHTTPWantsAnAddress(t *testing.T) {
	began := time.Now()
	_, err := WaitHTTP(context.Background(), 1, "http://app.internal:3000/", 0, time.Minute)
	if err == nil || !strings.Contains(err.Error(), "IP address") {
		t.Fatalf("a host name: %v, want a refusal naming an IP address", err)
	}
	if time.Since(began) > 5*time.Second {
		t.Fatal("waited before refusing")
	}
}
