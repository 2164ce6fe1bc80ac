//go:build integration && linux

package integration

// The DaemonSet's installer, deploy/install.sh, run on a node made of
// files: the host's /usr/local/bin, /etc/containerd and /etc/snapboot are
// directories of the test (HOST_ROOT empty, every path set), the real
// containerd checks the configurations it writes (`containerd config
// dump`), the real CRIU and containerd answer its version checks, systemd
// is a stand-in `systemctl` that records what it is asked (a restart starts
// a process, containerd's new main process), and the Kubernetes API server
// is an HTTPS server of the test that records the node label patches.

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeAPIServer records the PATCH requests of the installer.
type fakeAPIServer struct {
	srv *httptest.Server

	mu      sync.Mutex
	status  int // answer to every request; 200 unless set
	patches []nodePatch
	// restarts counts containerd's restarts on the node being tested, for
	// RestartsBefore.
	restarts func() int
}

type nodePatch struct {
	Path, Auth, ContentType string
	Labels                  map[string]*string // nil value: removed
	// TokenInCmdline is a process that had the token on its command line
	// while the request was made (the installer's pod shares the node's
	// PID namespace: any process there could read it).
	TokenInCmdline string
	// RestartsBefore is how many times containerd had been restarted when
	// the request came.
	RestartsBefore int
}

// tokenInCmdline returns a process whose command line holds token, if one
// does.
func tokenInCmdline(token string) string {
	if token == "" {
		return ""
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(token)) {
			return p + ": " + strings.ReplaceAll(string(b), "\x00", " ")
		}
	}
	return ""
}

func newFakeAPIServer(t *testing.T) *fakeAPIServer {
	a := &fakeAPIServer{status: http.StatusOK, restarts: func() int { return 0 }}
	a.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var doc struct {
			Metadata struct {
				Labels map[string]*string `json:"labels"`
			} `json:"metadata"`
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		if r.Method != http.MethodPatch || json.Unmarshal(body, &doc) != nil {
			http.Error(w, fmt.Sprintf("unexpected %s %s: %s", r.Method, r.URL.Path, body), http.StatusBadRequest)
			return
		}
		a.patches = append(a.patches, nodePatch{Path: r.URL.Path, Auth: r.Header.Get("Authorization"),
			ContentType: r.Header.Get("Content-Type"), Labels: doc.Metadata.Labels,
			TokenInCmdline: tokenInCmdline(strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")),
			RestartsBefore: a.restarts()})
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(a.status)
		if a.status != http.StatusOK {
			// What a refusal by RBAC says.
			fmt.Fprintf(w, `{"kind":"Status","status":"Failure","message":"nodes \"node-a\" is forbidden: User \"system:serviceaccount:kube-system:snapboot-installer\" cannot patch resource \"nodes\"","reason":"Forbidden","code":%d}`, a.status)
			return
		}
		fmt.Fprint(w, `{"kind":"Node"}`)
	}))
	a.srv.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
	a.srv.StartTLS()
	t.Cleanup(a.srv.Close)
	return a
}

func (a *fakeAPIServer) setStatus(code int) {
	a.mu.Lock()
	a.status = code
	a.mu.Unlock()
}

// takePatches returns the patches received since the last call.
func (a *fakeAPIServer) takePatches() []nodePatch {
	a.mu.Lock()
	defer a.mu.Unlock()
	p := a.patches
	a.patches = nil
	return p
}

// installerNode is one node of files for install.sh.
type installerNode struct {
	t                                        *testing.T
	dir                                      string
	src                                      string // the image's /snapboot and the ConfigMap
	binDir, nodeConf, containerdConf, dropin string
	systemctlLog, mainPIDFile                string
	saDir                                    string
	api                                      *fakeAPIServer
	env                                      map[string]string
}

// fakeSystemctl stands in for the node's systemd: is-active says yes, a
// restart starts a process and makes it the unit's main process, and show
// prints that process (0 before any restart). With FAKE_NOT_SYSTEMD=1 there
// is no such unit: is-active fails and show prints 0, as systemd does.
const fakeSystemctl = `#!/bin/sh
echo "$*" >>"$FAKE_SYSTEMCTL_LOG"
if [ "${FAKE_NOT_SYSTEMD:-}" = 1 ]; then
  case "$1" in
    is-active) exit 3 ;;
    show) echo 0 ;;
  esac
  exit 0
fi
case "$1" in
  is-active) exit 0 ;;
  restart) sleep 600 </dev/null >/dev/null 2>&1 & echo $! >>"$FAKE_MAIN_PID" ;;
  show) if [ -s "$FAKE_MAIN_PID" ]; then tail -n 1 "$FAKE_MAIN_PID"; else echo 0; fi ;;
esac
`

func newInstallerNode(t *testing.T, api *fakeAPIServer) *installerNode {
	t.Helper()
	root := t.TempDir()
	n := &installerNode{t: t, dir: root, src: filepath.Join(root, "image"), api: api,
		binDir:         filepath.Join(root, "host", "usr", "local", "bin"),
		nodeConf:       filepath.Join(root, "host", "etc", "snapboot", "config.toml"),
		containerdConf: filepath.Join(root, "host", "etc", "containerd", "config.toml"),
		dropin:         filepath.Join(root, "host", "etc", "containerd", "conf.d", "snapboot.toml"),
		systemctlLog:   filepath.Join(root, "systemctl.log"),
		mainPIDFile:    filepath.Join(root, "containerd.pid"),
		saDir:          filepath.Join(root, "serviceaccount"),
	}
	fakeBin := filepath.Join(root, "fakebin")
	for _, d := range []string{n.src, fakeBin, n.saDir, filepath.Dir(n.containerdConf)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, b := range []string{shimBinaryName, cliBinaryName} {
		if err := copyFile(filepath.Join(binDir, b), filepath.Join(n.src, b), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := copyFile(repoFile(t, "deploy", "containerd-config.toml"), filepath.Join(n.src, "containerd-config.toml"), 0o644); err != nil {
		t.Fatal(err)
	}
	writeFileT(t, filepath.Join(n.src, "config.toml"), "allow = [\"registry.example.com/team/\"]\n")
	if err := os.WriteFile(filepath.Join(fakeBin, "systemctl"), []byte(fakeSystemctl), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFileT(t, filepath.Join(n.saDir, "token"), "token-of-the-installer")
	writeFileT(t, filepath.Join(n.saDir, "ca.crt"), string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: api.srv.Certificate().Raw})))
	host, port, err := net.SplitHostPort(strings.TrimPrefix(api.srv.URL, "https://"))
	if err != nil {
		t.Fatal(err)
	}
	n.env = map[string]string{
		"PATH":                        fakeBin + string(os.PathListSeparator) + os.Getenv("PATH"),
		"HOST_ROOT":                   "",
		"SNAPBOOT_HOST_EXEC":          "",
		"SNAPBOOT_SRC":                n.src,
		"SNAPBOOT_NODE_CONFIG_SRC":    filepath.Join(n.src, "config.toml"),
		"SNAPBOOT_BIN_DIR":            n.binDir,
		"SNAPBOOT_NODE_CONFIG":        n.nodeConf,
		"SNAPBOOT_CONTAINERD_CONFIG":  n.containerdConf,
		"SNAPBOOT_CONTAINERD_DROPIN":  n.dropin,
		"SNAPBOOT_SLEEP":              "false",
		"SNAPBOOT_LABEL_NODE":         "true",
		"SNAPBOOT_SERVICEACCOUNT_DIR": n.saDir,
		"NODE_NAME":                   "node-a",
		"KUBERNETES_SERVICE_HOST":     host,
		"KUBERNETES_SERVICE_PORT":     port,
		"FAKE_SYSTEMCTL_LOG":          n.systemctlLog,
		"FAKE_MAIN_PID":               n.mainPIDFile,
	}
	t.Cleanup(n.stopMainProcesses)
	api.restarts = n.restarts
	return n
}

// repoFile is a file of the repository, by its path from the root.
func repoFile(t *testing.T, elem ...string) string {
	t.Helper()
	root := moduleRoot
	if root == "" {
		var err error
		if root, err = filepath.Abs(".."); err != nil {
			t.Fatal(err)
		}
	}
	p := filepath.Join(append([]string{root}, elem...)...)
	if _, err := os.Stat(p); err != nil {
		t.Fatal(err)
	}
	return p
}

// stopMainProcesses stops every stand-in containerd main process the
// restarts started.
func (n *installerNode) stopMainProcesses() {
	b, err := os.ReadFile(n.mainPIDFile)
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	_ = os.Remove(n.mainPIDFile)
}

// startMainProcess starts a process and makes it containerd's main
// process, as a restart by hand would.
func (n *installerNode) startMainProcess() {
	n.t.Helper()
	p := exec.Command("sleep", "600")
	if err := p.Start(); err != nil {
		n.t.Fatal(err)
	}
	go func() { _ = p.Wait() }()
	f, err := os.OpenFile(n.mainPIDFile, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		n.t.Fatal(err)
	}
	defer f.Close()
	fmt.Fprintln(f, p.Process.Pid)
}

// age sets the modification time of the node's containerd configuration
// files to d from now (negative: in the past).
func (n *installerNode) age(d time.Duration) {
	n.t.Helper()
	when := time.Now().Add(d)
	for _, p := range []string{n.containerdConf, n.dropin} {
		if exists(p) {
			if err := os.Chtimes(p, when, when); err != nil {
				n.t.Fatal(err)
			}
		}
	}
}

// run runs install.sh with args and the node's environment plus extra
// (KEY=VALUE; an empty VALUE unsets KEY), and returns its exit code and
// output.
func (n *installerNode) run(extra ...string) (int, string) {
	n.t.Helper()
	env := map[string]string{}
	for k, v := range n.env {
		env[k] = v
	}
	var args []string
	for _, e := range extra {
		k, v, ok := strings.Cut(e, "=")
		switch {
		case !ok:
			args = append(args, e)
		case v == "" && k != "HOST_ROOT" && k != "SNAPBOOT_HOST_EXEC":
			delete(env, k)
		default:
			env[k] = v
		}
	}
	cmd := exec.Command("bash", append([]string{repoFile(n.t, "deploy", "install.sh")}, args...)...)
	cmd.Env = nil
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		code := 0
		if err != nil {
			code = -1
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			}
		}
		return code, out.String()
	case <-time.After(2 * time.Minute):
		_ = cmd.Process.Kill()
		<-done
		n.t.Fatalf("install.sh %v did not end within 2 minutes:\n%s", args, out.String())
		return 0, ""
	}
}

func (n *installerNode) mustRun(extra ...string) string {
	n.t.Helper()
	code, out := n.run(extra...)
	if code != 0 {
		n.t.Fatalf("install.sh %v: exit %d:\n%s", extra, code, out)
	}
	return out
}

// restarts counts the stand-in systemd's restarts of containerd.
func (n *installerNode) restarts() int {
	b, _ := os.ReadFile(n.systemctlLog)
	return strings.Count(string(b), "restart containerd")
}

func (n *installerNode) dump() string {
	n.t.Helper()
	out, err := exec.Command("containerd", "--config", n.containerdConf, "config", "dump").CombinedOutput()
	if err != nil {
		n.t.Fatalf("containerd config dump: %v\n%s", err, out)
	}
	return string(out)
}

func readFileT(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// wantLabel checks that patches is exactly one patch of node-a's
// snapboot.dev/node label to value ("" for its removal), with the
// service account's token, as a JSON merge patch.
func wantLabel(t *testing.T, patches []nodePatch, value string) {
	t.Helper()
	if len(patches) != 1 {
		t.Fatalf("the API server got %d node patches, want 1: %+v", len(patches), patches)
	}
	p := patches[0]
	if p.TokenInCmdline != "" {
		t.Fatalf("the service account token was on a command line: %s", p.TokenInCmdline)
	}
	if p.Path != "/api/v1/nodes/node-a" || p.Auth != "Bearer token-of-the-installer" || p.ContentType != "application/merge-patch+json" {
		t.Fatalf("node patch: path %q, authorization %q, content type %q", p.Path, p.Auth, p.ContentType)
	}
	v, ok := p.Labels["snapboot.dev/node"]
	if !ok || len(p.Labels) != 1 {
		t.Fatalf("node patch labels %v, want snapboot.dev/node only", p.Labels)
	}
	switch {
	case value == "" && v != nil:
		t.Fatalf("node patch sets snapboot.dev/node=%q, want it removed (null)", *v)
	case value != "" && (v == nil || *v != value):
		t.Fatalf("node patch sets snapboot.dev/node to %v, want %q", v, value)
	}
}

func TestInstaller(t *testing.T) {
	requireShim(t)
	for _, b := range []string{"containerd", "criu", "curl"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("%s is not on PATH: %v", b, err)
		}
	}
	api := newFakeAPIServer(t)

	t.Run("fresh node, again, uninstall", func(t *testing.T) {
		n := newInstallerNode(t, api)
		out := n.mustRun("install")
		for _, b := range []string{shimBinaryName, cliBinaryName} {
			if readFileT(t, filepath.Join(n.binDir, b)) != readFileT(t, filepath.Join(n.src, b)) {
				t.Fatalf("%s was not installed into the node's bin directory", b)
			}
		}
		if got := readFileT(t, n.nodeConf); got != readFileT(t, filepath.Join(n.src, "config.toml")) {
			t.Fatalf("node config %q, want the ConfigMap's", got)
		}
		if readFileT(t, n.dropin) != readFileT(t, filepath.Join(n.src, "containerd-config.toml")) {
			t.Fatalf("the drop-in is not deploy/containerd-config.toml:\n%s", readFileT(t, n.dropin))
		}
		if got, want := readFileT(t, n.containerdConf), fmt.Sprintf("version = 3\nimports = [%q]\n", n.dropin); got != want {
			t.Fatalf("containerd config %q, want %q", got, want)
		}
		dump := n.dump()
		for _, want := range []string{"runtimes.snapboot]", "runtime_type = 'io.containerd.snapboot.v1'", "container_annotations = ['snapboot.dev/*', 'io.kubernetes.container.restartCount']"} {
			if !strings.Contains(dump, want) {
				t.Fatalf("containerd config dump lacks %q:\n%s", want, dump)
			}
		}
		if strings.Contains(dump, "SystemdCgroup = true") {
			t.Fatalf("SystemdCgroup set on a node whose runc does not use it:\n%s", dump)
		}
		if n.restarts() != 1 {
			t.Fatalf("containerd restarted %d times, want 1:\n%s", n.restarts(), out)
		}
		p := api.takePatches()
		wantLabel(t, p, "true")
		if p[0].RestartsBefore != 1 {
			t.Fatal("the node was labelled before containerd was restarted")
		}

		// Again: nothing to change, containerd not restarted; the node is
		// labelled again (containerd started after its configuration).
		out = n.mustRun("install")
		if !strings.Contains(out, "up to date") || n.restarts() != 1 {
			t.Fatalf("second install: restarts %d, output:\n%s", n.restarts(), out)
		}
		wantLabel(t, api.takePatches(), "true")

		out = n.mustRun("uninstall")
		p = api.takePatches()
		wantLabel(t, p, "")
		if p[0].RestartsBefore != 1 {
			t.Fatal("the label was removed after containerd was restarted without the runtime")
		}
		for _, p := range []string{n.dropin, filepath.Join(n.binDir, shimBinaryName), filepath.Join(n.binDir, cliBinaryName), n.nodeConf} {
			if exists(p) {
				t.Fatalf("uninstall left %s:\n%s", p, out)
			}
		}
		if got := readFileT(t, n.containerdConf); got != "version = 3\n" {
			t.Fatalf("containerd config after uninstall %q, want the import gone", got)
		}
		if n.restarts() != 2 {
			t.Fatalf("containerd restarted %d times after uninstall, want 2", n.restarts())
		}
	})

	t.Run("existing config, systemd cgroups, restart left to the operator", func(t *testing.T) {
		n := newInstallerNode(t, api)
		other := filepath.Join(n.dir, "host", "etc", "containerd", "other.toml")
		writeFileT(t, other, "version = 3\n")
		orig := fmt.Sprintf(`version = 3
imports = [%q]

[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
    SystemdCgroup = true
`, other)
		writeFileT(t, n.containerdConf, orig)
		out := n.mustRun("install", "SNAPBOOT_RESTART_CONTAINERD=false")
		if n.restarts() != 0 || !strings.Contains(out, "restart containerd on this node") || !strings.Contains(out, "not labelled") {
			t.Fatalf("install without restart: restarts %d, output:\n%s", n.restarts(), out)
		}
		if p := api.takePatches(); len(p) != 0 {
			t.Fatalf("node labelled before containerd runs with the runtime: %+v", p)
		}
		if got := readFileT(t, n.containerdConf+".snapboot-orig"); got != orig {
			t.Fatalf("backup %q, want the original", got)
		}
		if got := readFileT(t, n.containerdConf); !strings.HasPrefix(got, fmt.Sprintf("version = 3\nimports = [%q, %q]\n", n.dropin, other)) {
			t.Fatalf("containerd config after install:\n%s", got)
		}
		dump := n.dump()
		i := strings.Index(dump, "runtimes.snapboot.options]")
		if i < 0 || !strings.Contains(dump[i:], "SystemdCgroup = true") {
			t.Fatalf("the snapboot runtime does not use the systemd cgroup driver as runc does:\n%s", dump)
		}

		// Run again: containerd's main process started before the files
		// were last written (10 s before), so it has not loaded them.
		n.startMainProcess()
		n.age(10 * time.Second)
		out = n.mustRun("install", "SNAPBOOT_RESTART_CONTAINERD=false")
		if p := api.takePatches(); len(p) != 0 || !strings.Contains(out, "not been restarted") {
			t.Fatalf("node labelled though containerd was not restarted (%d patches):\n%s", len(p), out)
		}
		// Once containerd has been restarted after them, the next run
		// labels the node.
		n.age(-10 * time.Second)
		n.mustRun("install", "SNAPBOOT_RESTART_CONTAINERD=false")
		wantLabel(t, api.takePatches(), "true")
	})

	t.Run("runtime configured by other means", func(t *testing.T) {
		n := newInstallerNode(t, api)
		orig := `version = 3
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.snapboot]
  runtime_type = "io.containerd.snapboot.v1"
`
		writeFileT(t, n.containerdConf, orig)
		n.startMainProcess()
		n.age(-10 * time.Second)
		out := n.mustRun("install")
		if readFileT(t, n.containerdConf) != orig || exists(n.dropin) || n.restarts() != 0 || !strings.Contains(out, "leaving its configuration alone") {
			t.Fatalf("a snapboot runtime configured elsewhere was changed (restarts %d):\n%s", n.restarts(), out)
		}
		wantLabel(t, api.takePatches(), "true")
		// Configured, but containerd not restarted since: not labelled.
		n.age(10 * time.Second)
		out = n.mustRun("install")
		if p := api.takePatches(); len(p) != 0 || !strings.Contains(out, "not been restarted") {
			t.Fatalf("node labelled though containerd was not restarted since its config changed (%d patches):\n%s", len(p), out)
		}
	})

	t.Run("bad inputs change nothing", func(t *testing.T) {
		n := newInstallerNode(t, api)
		writeFileT(t, filepath.Join(n.src, "config.toml"), "allow = [\n")
		code, out := n.run("install")
		if code == 0 || !strings.Contains(out, "not valid, nothing was installed") {
			t.Fatalf("invalid node config: exit %d:\n%s", code, out)
		}
		if exists(n.binDir) || exists(n.nodeConf) || exists(n.containerdConf) || exists(n.dropin) {
			t.Fatalf("an invalid node config still installed something:\n%s", out)
		}

		n = newInstallerNode(t, api)
		broken := "version = 3\n[plugins\n"
		writeFileT(t, n.containerdConf, broken)
		code, out = n.run("install")
		if code == 0 || !strings.Contains(out, "fails on this node before any change") {
			t.Fatalf("broken containerd config: exit %d:\n%s", code, out)
		}
		if readFileT(t, n.containerdConf) != broken || exists(n.dropin) || exists(n.binDir) || exists(n.nodeConf) || n.restarts() != 0 {
			t.Fatalf("a broken containerd config was changed:\n%s", out)
		}
		if p := api.takePatches(); len(p) != 0 {
			t.Fatalf("node labelled after a failed install: %+v", p)
		}
	})

	t.Run("containerd not a systemd unit", func(t *testing.T) {
		n := newInstallerNode(t, api)
		out := n.mustRun("install", "FAKE_NOT_SYSTEMD=1")
		if !exists(n.dropin) || !strings.Contains(out, "restart containerd yourself") || !strings.Contains(out, "not labelled") {
			t.Fatalf("install beside a containerd systemd does not run:\n%s", out)
		}
		// Again: up to date, and no way to tell whether containerd has the
		// runtime now.
		out = n.mustRun("install", "FAKE_NOT_SYSTEMD=1")
		if !strings.Contains(out, "cannot tell whether containerd runs with the snapboot runtime") {
			t.Fatalf("second install beside a containerd systemd does not run:\n%s", out)
		}
		if p := api.takePatches(); len(p) != 0 {
			t.Fatalf("node labelled though containerd may not have the runtime: %+v", p)
		}
	})

	t.Run("labelling", func(t *testing.T) {
		// Refused by the API server (no RBAC): the install fails, so that
		// the init container retries and its state shows it.
		n := newInstallerNode(t, api)
		api.setStatus(http.StatusForbidden)
		code, out := n.run("install")
		api.setStatus(http.StatusOK)
		if code == 0 || !strings.Contains(out, "could not label node node-a") || !strings.Contains(out, "rbac.yaml") ||
			!strings.Contains(out, `cannot patch resource \"nodes\"`) {
			t.Fatalf("refused label: exit %d:\n%s", code, out)
		}
		api.takePatches()
		if strings.Contains(out, "token-of-the-installer") {
			t.Fatalf("the token is in the installer's output:\n%s", out)
		}
		// The retry labels it, and changes nothing else.
		n.mustRun("install")
		wantLabel(t, api.takePatches(), "true")
		if n.restarts() != 1 {
			t.Fatalf("containerd restarted %d times, want 1", n.restarts())
		}

		// No service account token mounted.
		n = newInstallerNode(t, api)
		code, out = n.run("install", "SNAPBOOT_SERVICEACCOUNT_DIR="+filepath.Join(n.dir, "none"))
		if code == 0 || !strings.Contains(out, "no service account token") {
			t.Fatalf("no token: exit %d:\n%s", code, out)
		}
		if exists(n.binDir) || exists(n.containerdConf) || n.restarts() != 0 {
			t.Fatalf("no token, but the install changed the node:\n%s", out)
		}

		// Labelling off: the operator labels the node.
		n = newInstallerNode(t, api)
		out = n.mustRun("install", "SNAPBOOT_LABEL_NODE=false")
		if p := api.takePatches(); len(p) != 0 || !strings.Contains(out, "label the node snapboot.dev/node=true") {
			t.Fatalf("SNAPBOOT_LABEL_NODE=false: %d patches:\n%s", len(p), out)
		}
		n.mustRun("uninstall", "SNAPBOOT_LABEL_NODE=false")
		if p := api.takePatches(); len(p) != 0 {
			t.Fatalf("SNAPBOOT_LABEL_NODE=false uninstall patched the node: %+v", p)
		}
	})
}
