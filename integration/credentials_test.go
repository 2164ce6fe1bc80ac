//go:build integration && linux

package integration

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// startAuthRegistry starts a registry on 127.0.0.1 that wants a user and a
// password (htpasswd), stopped by PID at the end of the test.
func startAuthRegistry(t *testing.T, user, password string) string {
	t.Helper()
	dir := testDir(t)
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "htpasswd"), []byte(user+":"+string(hash)+"\n"), 0o600)
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	conf := fmt.Sprintf("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n  secret: it\nauth:\n  htpasswd:\n    realm: snapboot-it\n    path: %s\n",
		filepath.Join(dir, "storage"), addr, filepath.Join(dir, "htpasswd"))
	os.WriteFile(filepath.Join(dir, "config.yml"), []byte(conf), 0o644)
	logf, _ := os.Create(filepath.Join(dir, "registry.log"))
	cmd := exec.Command("registry", "serve", filepath.Join(dir, "config.yml"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "OTEL_TRACES_EXPORTER=none")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		logf.Close()
	})
	waitFor(t, 20*time.Second, "the registry with authentication", func() bool {
		r, err := http.Get("http://" + addr + "/v2/")
		if err != nil {
			return false
		}
		r.Body.Close()
		return r.StatusCode == http.StatusUnauthorized
	})
	return addr
}

func TestPrivateRegistryCredentials(t *testing.T) {
	requireShim(t)
	addr := startAuthRegistry(t, "snapboot", "s3cret")
	dir := testDir(t)
	dockerConfig := filepath.Join(dir, "docker-config.json")
	auth := base64.StdEncoding.EncodeToString([]byte("snapboot:s3cret"))
	os.WriteFile(dockerConfig, []byte(fmt.Sprintf(`{"auths": {%q: {"auth": %q}}}`, addr, auth)), 0o600)
	withCreds := nodeConfig(t, "", fmt.Sprintf("docker_config = %q", dockerConfig), addr)
	noCreds := nodeConfig(t, "", fmt.Sprintf("docker_config = %q", filepath.Join(dir, "absent.json")), addr)

	// snapboot checkpoint pushes with the node's credentials.
	donor, donorLog := startCounterDonor(t)
	waitCount(t, donorLog, 5)
	ref := addr + "/private/counter:v1"
	if out, stderr, code := snapbootCLI("--config", noCreds, "checkpoint", donor, ref); code == 0 || !mentionsAuth(stderr) {
		t.Fatalf("push without credentials: exit %d\n%s%s", code, out, stderr)
	}
	if _, stderr, code := snapbootCLI("--config", withCreds, "checkpoint", donor, ref); code != 0 {
		t.Fatalf("push with credentials: exit %d\n%s", code, stderr)
	}

	// The shim pulls with them; without them the container cold-starts.
	offset := containerdLogOffset()
	clone, cloneLog := uniqueID(t), ""
	cloneLog = runDetachedOpts(t, clone, runOptions{Runtime: snapbootRuntime, Annotations: map[string]string{"snapboot.dev/checkpoint": ref},
		Flags: withConfig(withCreds, "--with-ns", "network:"+newNetns(t))}, "/bin/sh", "-c", counterScript)
	logLine(t, offset, "snapboot.restore", clone, 60*time.Second)
	if ns := waitCount(t, cloneLog, 8); ns[0] == 1 {
		t.Fatal("restored clone counted from 1")
	}
	cold := uniqueID(t)
	runDetachedOpts(t, cold, runOptions{Runtime: snapbootRuntime, Annotations: map[string]string{"snapboot.dev/checkpoint": ref},
		Flags: withConfig(noCreds, "--with-ns", "network:"+newNetns(t))}, "/bin/sh", "-c", counterScript)
	// As the README's faults table quotes it.
	if line := logLine(t, offset, "snapboot.fallback", cold, 60*time.Second); !strings.Contains(line, "basic credential not found") {
		t.Errorf("fallback without credentials should say why (basic credential not found):\n%s", line)
	}
}

// mentionsAuth reports whether an error is about missing or refused credentials.
func mentionsAuth(s string) bool {
	s = strings.ToLower(s)
	return strings.Contains(s, "unauthorized") || strings.Contains(s, "credential")
}
