//go:build integration && linux

package integration

// The Kubernetes path: snapboot as a runtime handler of containerd's CRI
// plugin, driven by crictl as the kubelet would drive it.
//
// TestCRI starts a SECOND containerd, just for itself, with the CRI plugin
// on (the harness's containerd runs without it). Everything lives under
// tmpDir/cri: root, state, socket, the CNI config, the node config and cache
// of the shim, pod logs. Pods get their network from Debian's CNI plugins
// (bridge + host-local) on a /24 of 10.222.0.0/16 on a bridge the test
// creates and deletes itself, with no masquerading, no port mapping and no
// gateway role (so no iptables rule and no ip_forward change); the host
// reaches pod IPs on that bridge. The runtime table is deploy/
// containerd-config.toml itself, imported by the test's containerd config,
// so the shipped snippet is what is tested. The pod sandbox (pause) image
// is built from the harness's busybox layer (sleep as its command) and
// imported, as there is no registry to pull registry.k8s.io/pause from.
//
// Needs, on top of the harness: crictl and the CNI plugins
// (hack/install-cri-deps.sh).

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	// criNamespace is the containerd namespace of the CRI plugin (fixed).
	criNamespace = "k8s.io"
	// criHandler is the runtime handler (RuntimeClass handler) of snapboot,
	// the name of the runtime table in deploy/containerd-config.toml.
	criHandler = "snapboot"
	// criPauseImage is the pod sandbox image the test builds and imports.
	criPauseImage = "localhost/snapboot-it/pause:1"
	// criHTTPPort is where the test's pods serve.
	criHTTPPort = 8080
	// criTimeout bounds every crictl and ctr call.
	criTimeout = 90 * time.Second
)

// criEnv is the CRI-enabled containerd of one TestCRI run and what it uses.
type criEnv struct {
	dir        string // tmpDir/cri
	sock       string // containerd's gRPC socket (CRI endpoint too)
	logPath    string // containerd's log, with the shims' logs
	nodeConf   string // the shim's node config ($SNAPBOOT_CONFIG)
	crictlConf string
	cniBinDir  string
	netnsDir   string // where the CRI plugin mounts pod network namespaces
	podsDir    string // pod log directories and JSON configs

	bridge   string // the bridge the test created
	prefix   string // "10.222.N": the pods' /24
	netName  string // CNI network name
	cgParent string // cgroup parent of every pod: /snapboot-it/cri-<runToken>-pods

	proc *bgProc

	// Host state recorded before the test touched it, for the cleanup.
	hadVarLibCNI, hadRuncK8s bool
}

// TestCRI runs pods through containerd's CRI plugin with RuntimeClass
// handler snapboot.
func TestCRI(t *testing.T) {
	requireShim(t)
	e := startCRIEnv(t)
	t.Run("restore", func(t *testing.T) { testCRIRestore(t, e) })
	t.Run("oom", func(t *testing.T) { testCRIRestoredOOM(t, e) })
	t.Run("sharedpid", func(t *testing.T) { testCRISharedPID(t, e) })
	t.Run("cold", func(t *testing.T) { testCRICold(t, e) })
	t.Run("fallback", func(t *testing.T) { testCRIFallback(t, e) })
	t.Run("cleanup", func(t *testing.T) { testCRICleanup(t, e) })
}

// serveCmd writes marker into /www/index.html and serves /www with busybox
// httpd in the foreground, logging each request on stderr.
func serveCmd(marker string) []string {
	return []string{"/bin/sh", "-c", fmt.Sprintf("mkdir -p /www && echo %s > /www/index.html && exec httpd -f -v -p %d -h /www", marker, criHTTPPort)}
}

// testCRIRestore: a donor pod serves a marker; the snapboot CLI checkpoints
// its container (CRI container ID = containerd container ID, namespace
// k8s.io) and pushes it; a new pod whose annotations name the checkpoint
// is restored from it and serves the donor's marker on its own IP, although
// its own command would serve another one. As the kubelet does, the
// annotation is the pod's only: the container's spec gets it through the
// runtime's pod_annotations.
func testCRIRestore(t *testing.T, e *criEnv) {
	donorMarker := "donor-" + runToken
	coldMarker := "cold-" + runToken

	donorPod, donorPodConf := e.runPod(t, "donor", nil)
	donor := e.startContainer(t, donorPod, donorPodConf, "web", nil, serveCmd(donorMarker))
	donorIP := e.podIP(t, donorPod)
	e.waitHTTP(t, donorIP, donorMarker, 20*time.Second)

	ref := registryAddr + "/it/cri-web:v1"
	t0 := time.Now()
	out, errOut, code := e.snapboot("checkpoint", donor, ref)
	if code != 0 {
		t.Fatalf("snapboot checkpoint %s %s: exit %d\nstdout:\n%s\nstderr:\n%s\ncontainerd log:\n%s", donor, ref, code, out, errOut, tailFile(e.logPath, 30))
	}
	t.Logf("checkpoint of the donor's container in %v: %s", time.Since(t0).Round(time.Millisecond), strings.TrimSpace(out))
	// The donor runs on (no --exit).
	e.waitHTTP(t, donorIP, donorMarker, 10*time.Second)

	offset := e.logOffset()
	ann := map[string]string{"snapboot.dev/checkpoint": ref, "snapboot.dev/container": "web"}
	t0 = time.Now()
	clonePod, clonePodConf := e.runPod(t, "clone", ann)
	clone := e.startContainer(t, clonePod, clonePodConf, "web", nil, serveCmd(coldMarker))
	line := e.waitLogLine(t, offset, "snapboot.restore", clone, 60*time.Second)
	cloneIP := e.podIP(t, clonePod)
	if cloneIP == donorIP {
		t.Fatalf("the clone pod has the donor's IP %s", cloneIP)
	}
	e.waitHTTP(t, cloneIP, donorMarker, 20*time.Second)
	t.Logf("restored pod answered on %s after %v (runp+create+start+restore); %s", cloneIP, time.Since(t0).Round(time.Millisecond), line)

	// The pod sandbox (pause) container carries the pod's annotations too
	// (pod_annotations passes them into its spec); it must cold-start, with
	// neither a restore nor a fallback attempt.
	log := e.logSince(offset)
	for _, ev := range []string{"snapboot.restore", "snapboot.fallback"} {
		if l := findLogLine(log, ev, clonePod); l != "" {
			t.Errorf("the pod sandbox (pause) container %s went through the restore path (the shim must skip specs with io.kubernetes.cri.container-type=sandbox):\n%s", clonePod, l)
		}
	}
	if l := findLogLine(log, "snapboot.fallback", clone); l != "" {
		t.Errorf("fallback logged for the restored container:\n%s", l)
	}
	// The restored process writes into the new container's log (its stdio
	// are the new container's pipes): httpd -v logs the request above.
	waitFor(t, 10*time.Second, "the restored httpd's request log in crictl logs", func() bool {
		out, errOut, err := e.crictlErr("logs", clone)
		return err == nil && strings.Contains(out+errOut, "10.222.")
	})

	// The restored process is in the new pod's network, IPC and UTS
	// namespaces (CRIU joins them; the sandbox made them), in a PID
	// namespace of its own, and it sees the new pod's hostname.
	pid, sandboxPID := e.containerPID(t, clone), e.sandboxPID(t, clonePod)
	for _, ns := range []string{"net", "ipc", "uts", "pid"} {
		a, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, ns))
		b, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", sandboxPID, ns))
		if same := a == b; same != (ns != "pid") || a == "" {
			t.Errorf("%s namespace of the restored container %q, of the pod sandbox %q", ns, a, b)
		}
	}
	// It runs the seccomp filter of the pod's RuntimeDefault profile, as a
	// cold start would (CRIU restores the donor's, which confine compared
	// with the one runc installs for the profile).
	if got := statusField(t, pid, "Seccomp"); got != "2" {
		t.Errorf("Seccomp of the restored container: %q, want 2 (filter)", got)
	}
	if got, want := statusField(t, pid, "Seccomp_filters"), statusField(t, e.containerPID(t, donor), "Seccomp_filters"); got != "1" || got != want {
		t.Errorf("Seccomp_filters of the restored container: %q, the donor's %q: want 1, as runc installs one", got, want)
	}
	// Its cgroup v1 hierarchies (CRI mounts them; no cgroup namespace on
	// v1) show its own cgroup, as the donor's show the donor's, not the
	// shim's that runc's restore would bind.
	for _, c := range []struct{ what, id string }{{"donor", donor}, {"restored container", clone}} {
		roots := cgroupMountRoots(readFile(fmt.Sprintf("/proc/%d/mountinfo", e.containerPID(t, c.id))))
		for at, root := range roots {
			if !strings.HasSuffix(root, "/"+c.id) {
				t.Errorf("the %s's %s shows cgroup %s, not its own (%s)", c.what, at, root, c.id)
			}
		}
		if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err != nil && len(roots) == 0 {
			t.Errorf("the %s has no cgroup v1 hierarchy mounted", c.what)
		}
	}
	if got := strings.TrimSpace(e.crictl(t, "exec", clone, "hostname")); got != "clone" {
		t.Errorf("hostname in the restored container: %q, want the new pod's (clone); CRIU writes the donor's host name into the pod's UTS namespace it joins, the shim must put it back", got)
	}

	// CRI stats work for a restored container: the shim finds its cgroup
	// from the init process (containerd's runc task service has none).
	out, _, err := e.crictlErr("stats", "-o", "json", clone)
	if err != nil {
		t.Errorf("crictl stats of the restored container: %v", err)
	} else {
		var st struct {
			Stats []struct {
				Memory *struct{ WorkingSetBytes *struct{ Value json.Number } } `json:"memory"`
			}
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil || len(st.Stats) != 1 || st.Stats[0].Memory == nil ||
			st.Stats[0].Memory.WorkingSetBytes == nil || st.Stats[0].Memory.WorkingSetBytes.Value == "" || st.Stats[0].Memory.WorkingSetBytes.Value == "0" {
			t.Errorf("crictl stats of the restored container has no memory figures: %v\n%s", err, out)
		}
	}
	if got := e.podState(t, clonePod); got != "SANDBOX_READY" {
		t.Errorf("clone pod state %s, want SANDBOX_READY", got)
	}

	// One shim per pod: the restored container runs under the shim that
	// was started for the pod's sandbox (the runc shim manager groups a
	// pod's containers by io.kubernetes.cri.sandbox-id).
	shims := e.shimPIDs()
	sandboxShim, ok := shims[clonePod]
	if !ok {
		t.Errorf("no shim process with -id %s (the clone pod's sandbox); shims: %v", clonePod, shims)
	}
	if _, ok := shims[clone]; ok {
		t.Errorf("the restored container %s got a shim of its own; shims: %v", clone, shims)
	}
	if ok {
		if ppid := parentPID(pid); ppid != sandboxShim {
			t.Errorf("restored container's init (pid %d) has parent %d, want the pod's shim %d", pid, ppid, sandboxShim)
		}
	}

	// A sidecar gets the pod's annotations too: snapboot.dev/container
	// names "web", so it starts cold without a pull or a fallback.
	offset = e.logOffset()
	sidecar := e.startContainer(t, clonePod, clonePodConf, "sidecar", nil, []string{"sleep", "3600"})
	if line := e.waitLogLine(t, offset, "snapboot.skip", sidecar, 30*time.Second); !strings.Contains(line, "this is container") {
		t.Errorf("the sidecar's skip line gives no reason naming the container:\n%s", line)
	}
	// The kubelet restarts "web" (a new container, attempt 1, its restart
	// count in the annotations containerd passes on): it starts cold, and
	// serves the cold marker in place of the restored one.
	e.crictl(t, "stop", clone)
	e.crictl(t, "rm", clone)
	restarted := e.startContainerConfig(t, clonePod, clonePodConf, "web", map[string]string{"io.kubernetes.container.restartCount": "1"}, serveCmd(coldMarker), func(cfg map[string]any) {
		cfg["metadata"].(map[string]any)["attempt"] = 1
	})
	if line := e.waitLogLine(t, offset, "snapboot.skip", restarted, 30*time.Second); !strings.Contains(line, "restart 1") {
		t.Errorf("the restarted container's skip line gives no restart count:\n%s", line)
	}
	e.waitHTTP(t, cloneIP, coldMarker, 20*time.Second)
	log = e.logSince(offset)
	for _, id := range []string{sidecar, restarted} {
		for _, ev := range []string{"snapboot.restore", "snapboot.fallback"} {
			if l := findLogLine(log, ev, id); l != "" {
				t.Errorf("container %s, not to be restored, went through the restore path:\n%s", id, l)
			}
		}
	}
}

// testCRIRestoredOOM: an OOM kill in a restored container's cgroup (here of
// an exec'd process, over the container's 64 MiB limit) makes the CRI
// plugin report OOMKilled, as for a cold-started container. The plugin
// learns it from containerd's TaskOOM event, which the runc task service
// publishes only for cgroups it watches from a cold create on.
func testCRIRestoredOOM(t *testing.T, e *criEnv) {
	ref := e.checkpointServer(t, "donor-oom", registryAddr+"/it/cri-web-oom:v1", nil)

	offset := e.logOffset()
	ann := map[string]string{"snapboot.dev/checkpoint": ref}
	pod, podConf := e.runPod(t, "oom", ann)
	id := e.startContainerConfig(t, pod, podConf, "web", ann, serveCmd("cold-oom"), func(cfg map[string]any) {
		cfg["linux"].(map[string]any)["resources"] = map[string]any{"memory_limit_in_bytes": 64 << 20}
	})
	e.waitLogLine(t, offset, "snapboot.restore", id, 60*time.Second)
	e.waitHTTP(t, e.podIP(t, pod), "donor-oom", 20*time.Second)

	if _, _, err := e.crictlErr("exec", id, "/bin/sh", "-c", `x=$(head -c 200000000 /dev/zero | tr '\0' a); echo ${#x}`); err == nil {
		t.Fatalf("the memory hog in the restored container was not killed")
	}
	reason := func() string {
		out, _, err := e.crictlErr("inspect", "-o", "json", id)
		if err != nil {
			return ""
		}
		var st struct {
			Status struct{ Reason string } `json:"status"`
		}
		json.Unmarshal([]byte(out), &st)
		return st.Status.Reason
	}
	waitFor(t, 20*time.Second, "crictl inspect to report OOMKilled for the restored container", func() bool { return reason() == "OOMKilled" })
	// The restored server was not the process killed: it still answers.
	e.waitHTTP(t, e.podIP(t, pod), "donor-oom", 10*time.Second)
}

// testCRISharedPID: pods with shareProcessNamespace (the sandbox's PID
// namespace for every container). A container restored into such a pod
// joins the sandbox's PID namespace, at the PID its process had in the
// donor's (CRIU restores PIDs as they were). A second container of the same
// checkpoint in that pod finds the PID taken: CRIU fails, and it
// cold-starts.
func testCRISharedPID(t *testing.T, e *criEnv) {
	marker := "sharedpid-" + runToken
	sharePID := func(cfg map[string]any) {
		cfg["linux"].(map[string]any)["security_context"].(map[string]any)["namespace_options"] = map[string]any{"pid": criPIDPod}
	}
	donorPod, donorConf := e.runPodPID(t, "sharedpid-donor", nil, criPIDPod)
	donor := e.startContainerConfig(t, donorPod, donorConf, "web", nil, serveCmd(marker), sharePID)
	e.waitHTTP(t, e.podIP(t, donorPod), marker, 20*time.Second)
	donorNSpid := statusField(t, e.containerPID(t, donor), "NSpid")
	ref := registryAddr + "/it/cri-sharedpid:v1"
	if out, errOut, code := e.snapboot("checkpoint", donor, ref); code != 0 {
		t.Fatalf("snapboot checkpoint: exit %d\n%s\n%s", code, out, errOut)
	}

	offset := e.logOffset()
	ann := map[string]string{"snapboot.dev/checkpoint": ref}
	clonePod, cloneConf := e.runPodPID(t, "sharedpid-clone", ann, criPIDPod)
	clone := e.startContainerConfig(t, clonePod, cloneConf, "web", ann, serveCmd("cold-"+marker), sharePID)
	e.waitLogLine(t, offset, "snapboot.restore", clone, 60*time.Second)
	e.waitHTTP(t, e.podIP(t, clonePod), marker, 20*time.Second)
	pid, sandboxPID := e.containerPID(t, clone), e.sandboxPID(t, clonePod)
	a, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid))
	b, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", sandboxPID))
	if a == "" || a != b {
		t.Errorf("PID namespace of the restored container %q, of the pod's sandbox %q: want the sandbox's", a, b)
	}
	// NSpid: the host PID, then the PID in the pod's namespace.
	dn, cn := strings.Fields(donorNSpid), strings.Fields(statusField(t, pid, "NSpid"))
	if len(dn) != 2 || len(cn) != 2 || dn[1] != cn[1] {
		t.Fatalf("the restored process's PIDs %q, the donor's %q: want the same PID in the pod", cn, dn)
	}

	offset = e.logOffset()
	second := e.startContainerConfig(t, clonePod, cloneConf, "second", ann, []string{"/bin/sleep", "3600"}, sharePID)
	line := e.waitLogLine(t, offset, "snapboot.fallback", second, 60*time.Second)
	if !strings.Contains(line, "reason_kind=restore") || !strings.Contains(line, "Can't fork for "+dn[1]+": File exists") {
		t.Errorf("the second container's fallback should be CRIU's, for PID %s taken:\n%s", dn[1], line)
	}
	waitFor(t, 20*time.Second, "the second container to run, cold", func() bool {
		return e.containerStatus(t, second) == "CONTAINER_RUNNING"
	})
	if got := readFile(fmt.Sprintf("/proc/%d/cmdline", e.containerPID(t, second))); !strings.HasPrefix(got, "/bin/sleep") {
		t.Errorf("the second container runs %q, want its own command", got)
	}
	// The first one still serves.
	e.waitHTTP(t, e.podIP(t, clonePod), marker, 10*time.Second)
}

// testCRICold: the same pod and container spec without the annotation
// cold-starts, through the same runtime handler.
func testCRICold(t *testing.T, e *criEnv) {
	coldMarker := "cold-" + runToken
	offset := e.logOffset()
	pod, podConf := e.runPod(t, "cold", nil)
	id := e.startContainer(t, pod, podConf, "web", nil, serveCmd(coldMarker))
	ip := e.podIP(t, pod)
	e.waitHTTP(t, ip, coldMarker, 20*time.Second)
	log := e.logSince(offset)
	for _, ev := range []string{"snapboot.restore", "snapboot.fallback"} {
		for _, who := range []string{id, pod} {
			if l := findLogLine(log, ev, who); l != "" {
				t.Errorf("a cold start went through the restore path (%s):\n%s", who, l)
			}
		}
	}
	// Proof that it is the snapboot shim that runs it.
	if _, ok := e.shimPIDs()[pod]; !ok {
		t.Errorf("no %s process serves pod %s", shimBinaryName, pod)
	}
}

// testCRIFallback: a restore that runc refuses at Start (the donor had a
// bind mount the new container lacks: CRIU finds no mapping for it) falls
// back to a cold start within the same Start call, and the CRI plugin still
// sees the container's exit: crictl stop and stopp work as for any pod.
// (CRI waits for a task's exit with a Wait call made before Start; it must
// follow the container from the failed restore to the cold one.)
func testCRIFallback(t *testing.T, e *criEnv) {
	coldMarker := "cold-" + runToken
	data := filepath.Join(testDir(t), "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		t.Fatal(err)
	}
	ref := e.checkpointServer(t, "donor-mount", registryAddr+"/it/cri-web-mount:v1",
		[]map[string]any{{"container_path": "/data", "host_path": data}})

	offset := e.logOffset()
	ann := map[string]string{"snapboot.dev/checkpoint": ref}
	pod, podConf := e.runPod(t, "fallback", ann)
	id := e.startContainer(t, pod, podConf, "web", ann, serveCmd(coldMarker))
	line := e.waitLogLine(t, offset, "snapboot.fallback", id, 60*time.Second)
	if !strings.Contains(line, "mountpoint") {
		t.Errorf("fallback for another reason than the missing mount:\n%s", line)
	}
	e.waitHTTP(t, e.podIP(t, pod), coldMarker, 20*time.Second)

	t0 := time.Now()
	if _, errOut, err := e.crictlErrTimeout(30*time.Second, "stop", "--timeout", "2", id); err != nil {
		t.Fatalf("crictl stop of the container that fell back: %v\n%s\n(the CRI plugin waits for the exit with a Wait made before Start; after the fallback it must follow the cold container)", err, errOut)
	}
	if st := e.containerStatus(t, id); st != "CONTAINER_EXITED" {
		t.Errorf("after crictl stop the container that fell back is %s (CRI missed its exit)", st)
	}
	if _, errOut, err := e.crictlErrTimeout(30*time.Second, "stopp", pod); err != nil {
		t.Fatalf("crictl stopp: %v\n%s", err, errOut)
	}
	t.Logf("stop + stopp after the fallback took %v", time.Since(t0).Round(time.Millisecond))
}

// testCRICleanup: crictl stop, rm, stopp and rmp leave nothing: no
// container, task or sandbox in containerd, no shim, no pod network
// namespace, no veth on the bridge, no IP lease, no mount. The pods of the
// other subtests are gone already (their cleanups ran), so the whole
// containerd must be empty.
func testCRICleanup(t *testing.T, e *criEnv) {
	pod, podConf := e.runPod(t, "bye", nil)
	id := e.startContainer(t, pod, podConf, "web", nil, serveCmd("bye"))
	e.waitHTTP(t, e.podIP(t, pod), "bye", 20*time.Second)
	if got := e.netnsMounts(); len(got) == 0 {
		t.Errorf("no pod network namespace under %s while a pod runs; the CRI plugin put it elsewhere", e.netnsDir)
	}

	e.crictl(t, "stop", "--timeout", "1", id)
	if st := e.containerStatus(t, id); st != "CONTAINER_EXITED" {
		t.Errorf("after crictl stop the container is %s", st)
	}
	e.crictl(t, "rm", id)
	e.crictl(t, "stopp", pod)
	if st := e.podState(t, pod); st != "SANDBOX_NOTREADY" {
		t.Errorf("after crictl stopp the pod is %s", st)
	}
	e.crictl(t, "rmp", pod)

	if out := strings.TrimSpace(e.crictl(t, "ps", "-a", "-q")); out != "" {
		t.Errorf("crictl ps -a lists containers after rm:\n%s", out)
	}
	if out := strings.TrimSpace(e.crictl(t, "pods", "-q")); out != "" {
		t.Errorf("crictl pods lists sandboxes after rmp:\n%s", out)
	}
	e.assertEmpty(t)
}

// assertEmpty checks that no pod, container, task, shim, netns, veth, IP
// lease or mount of the CRI environment is left (the containerd itself may
// run).
func (e *criEnv) assertEmpty(t *testing.T) {
	t.Helper()
	if out := strings.TrimSpace(e.ctr(t, "tasks", "ls", "-q")); out != "" {
		t.Errorf("containerd still has tasks:\n%s", out)
	}
	if out := strings.TrimSpace(e.ctr(t, "containers", "ls", "-q")); out != "" {
		t.Errorf("containerd still has containers:\n%s", out)
	}
	// Shims exit once their last container is deleted.
	var shims map[string]int
	deadline := time.Now().Add(10 * time.Second)
	for {
		if shims = e.shimPIDs(); len(shims) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(shims) > 0 {
		t.Errorf("shims still running: %v", shims)
	}
	if got := e.netnsMounts(); len(got) > 0 {
		t.Errorf("pod network namespaces left: %v", got)
	}
	if ents, _ := os.ReadDir(e.netnsDir); len(ents) > 0 {
		t.Errorf("files left in %s: %d", e.netnsDir, len(ents))
	}
	if out, _ := exec.Command("ip", "-o", "link", "show", "master", e.bridge).CombinedOutput(); strings.TrimSpace(string(out)) != "" {
		t.Errorf("interfaces still on bridge %s:\n%s", e.bridge, out)
	}
	leases, _ := filepath.Glob(filepath.Join(e.dir, "cni-ipam", e.netName, e.prefix+".*"))
	if len(leases) > 0 {
		t.Errorf("host-local IP leases left: %v", leases)
	}
	for _, mp := range mountsUnder(e.dir) {
		t.Errorf("mount left under %s: %s", e.dir, mp)
	}
}

// ---------------------------------------------------------------------------
// The environment

func startCRIEnv(t *testing.T) *criEnv {
	t.Helper()
	t0 := time.Now()
	if _, err := exec.LookPath("crictl"); err != nil {
		t.Fatalf("crictl is not on PATH: run `bash hack/install-cri-deps.sh` as root")
	}
	e := &criEnv{dir: filepath.Join(tmpDir, "cri")}
	for _, d := range []string{"/usr/lib/cni", "/opt/cni/bin"} {
		if isExecutable(filepath.Join(d, "bridge")) && isExecutable(filepath.Join(d, "host-local")) && isExecutable(filepath.Join(d, "loopback")) {
			e.cniBinDir = d
			break
		}
	}
	if e.cniBinDir == "" {
		t.Fatalf("CNI plugins bridge, host-local and loopback are in neither /usr/lib/cni nor /opt/cni/bin: run `bash hack/install-cri-deps.sh` as root")
	}
	snippet := repoFile(t, "deploy", "containerd-config.toml")

	e.sock = filepath.Join(e.dir, "containerd.sock")
	e.logPath = filepath.Join(e.dir, "containerd.log")
	e.nodeConf = filepath.Join(e.dir, "snapboot.toml")
	e.crictlConf = filepath.Join(e.dir, "crictl.yaml")
	e.podsDir = filepath.Join(e.dir, "pods")
	// The CRI plugin's state directory is <state>/io.containerd.grpc.v1.cri;
	// with netns_mounts_under_state_dir the pods' netns go below it.
	e.netnsDir = filepath.Join(e.dir, "state", "io.containerd.grpc.v1.cri", "netns")
	e.netName = "snapboot-it-" + runToken
	e.cgParent = "/" + namespace + "/cri-" + runToken + "-pods"
	for _, d := range []string{"root", "state", "tmp", "cache", "net.d", "cni-ipam", "pods"} {
		if err := os.MkdirAll(filepath.Join(e.dir, d), 0o711); err != nil {
			t.Fatal(err)
		}
	}
	_, err := os.Stat("/var/lib/cni")
	e.hadVarLibCNI = err == nil
	_, err = os.Stat("/run/containerd/runc/" + criNamespace)
	e.hadRuncK8s = err == nil
	t.Cleanup(func() { e.teardown(t) })

	// The network: our own bridge with the host's address on it.
	e.setupBridge(t)
	conflist := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": %q,
  "plugins": [{
    "type": "bridge",
    "bridge": %q,
    "isGateway": false,
    "ipMasq": false,
    "hairpinMode": false,
    "ipam": {
      "type": "host-local",
      "dataDir": %q,
      "ranges": [[{"subnet": "%s.0/24", "rangeStart": "%s.10", "rangeEnd": "%s.250"}]]
    }
  }]
}
`, e.netName, e.bridge, filepath.Join(e.dir, "cni-ipam"), e.prefix, e.prefix, e.prefix)
	writeFileT(t, filepath.Join(e.dir, "net.d", "10-snapboot-it.conflist"), conflist)

	// The shim's node config: the harness's registry, a cache of its own.
	writeFileT(t, e.nodeConf, fmt.Sprintf("allow = [%q]\ninsecure_registries = [%q]\n[cache]\nroot = %q\n[pull]\ntimeout = \"30s\"\n",
		registryAddr, registryAddr, filepath.Join(e.dir, "cache")))

	writeFileT(t, e.crictlConf, fmt.Sprintf("runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 60\ndebug: false\npull-image-on-create: false\n", e.sock, e.sock))

	// containerd: CRI on; everything the harness's containerd disables
	// except the CRI plugins and the pod sandbox controller.
	var disabled []string
	for _, p := range disabledPlugins {
		switch p {
		case "io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images", "io.containerd.podsandbox.controller.v1.podsandbox":
			continue
		}
		disabled = append(disabled, strconv.Quote(p))
	}
	conf := fmt.Sprintf(`version = 3
root = %q
state = %q
temp = %q
# The runtime table of the deliverable itself.
imports = [%q]
disabled_plugins = [%s]

[grpc]
  address = %q

[ttrpc]
  address = %q

[debug]
  level = "debug"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = %q

[plugins."io.containerd.cri.v1.runtime"]
  # No AppArmor profile loading into the host kernel, no netns under
  # /var/run/netns, no CDI.
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  cdi_spec_dirs = []
  # This machine kind runs containerd without CAP_SYS_RESOURCE: the pause
  # container's oom_score_adj of -998 would fail (permission denied).
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = [%q]
    conf_dir = %q
    max_conf_num = 1

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
`, filepath.Join(e.dir, "root"), filepath.Join(e.dir, "state"), filepath.Join(e.dir, "tmp"), snippet,
		strings.Join(disabled, ", "), e.sock, e.sock+".ttrpc", criPauseImage, e.cniBinDir, filepath.Join(e.dir, "net.d"))
	confPath := filepath.Join(e.dir, "config.toml")
	writeFileT(t, confPath, conf)

	// The merged config must hold the runtime from deploy/.
	dump, err := exec.Command("containerd", "--config", confPath, "config", "dump").CombinedOutput()
	if err != nil {
		t.Fatalf("containerd config dump: %v\n%s", err, dump)
	}
	for _, want := range []string{"runtimes.snapboot]", "runtime_type = 'io.containerd.snapboot.v1'", "pod_annotations = ['snapboot.dev/*']", "container_annotations = ['snapboot.dev/*', 'io.kubernetes.container.restartCount']"} {
		if !strings.Contains(string(dump), want) {
			t.Fatalf("containerd config dump (importing %s) lacks %q:\n%s", snippet, want, dump)
		}
	}

	logf, err := os.OpenFile(e.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command("containerd", "--config", confPath)
	cmd.Dir = e.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	// No $HOME and no $DOCKER_CONFIG, as under containerd's systemd unit
	// (systemd sets $HOME only for units with User=): the shims inherit
	// this environment and must still reach the registry.
	cmd.Env = append(envWithout(os.Environ(), "PATH", "SNAPBOOT_CONFIG", "TMPDIR", "HOME", "DOCKER_CONFIG"),
		"PATH="+binDir+string(os.PathListSeparator)+os.Getenv("PATH"),
		"SNAPBOOT_CONFIG="+e.nodeConf,
		"TMPDIR="+filepath.Join(e.dir, "tmp"),
	)
	if e.proc, err = startBg("containerd (CRI)", cmd); err != nil {
		t.Fatal(err)
	}

	// Ready when the CRI plugin reports runtime and network ready (the
	// latter once it has loaded our CNI config).
	var last string
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, _, err := e.crictlErr("info")
		last = out
		if err == nil && criConditionTrue(out, "RuntimeReady") && criConditionTrue(out, "NetworkReady") {
			break
		}
		if e.proc.exited() {
			t.Fatalf("containerd (CRI) exited (%v); log:\n%s", e.proc.err, tailFile(e.logPath, 40))
		}
		if time.Now().After(deadline) {
			t.Fatalf("CRI not ready within 30s; crictl info:\n%s\nlog:\n%s", last, tailFile(e.logPath, 40))
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Images: the harness's busybox OCI tar, and a pause image made of the
	// same layer with a command that sleeps until killed.
	busyboxTar := filepath.Join(tmpDir, "busybox-oci.tar")
	if _, err := os.Stat(busyboxTar); err != nil {
		// Not where the harness leaves it: export it from the harness's containerd.
		ctr(t, "images", "export", busyboxTar, busyboxImage)
	}
	e.ctr(t, "images", "import", busyboxTar)
	layer, err := busyboxLayer()
	if err != nil {
		t.Fatal(err)
	}
	pauseOCI, err := ociImageLayout(criPauseImage, layer, []string{"/bin/sleep", "2147483647"})
	if err != nil {
		t.Fatal(err)
	}
	pauseTar := filepath.Join(e.dir, "pause-oci.tar")
	if err := os.WriteFile(pauseTar, pauseOCI, 0o644); err != nil {
		t.Fatal(err)
	}
	e.ctr(t, "images", "import", pauseTar)
	images := e.crictl(t, "images", "-q")
	if n := len(strings.Fields(images)); n < 1 {
		t.Fatalf("crictl images lists nothing after the imports")
	}
	for _, img := range []string{busyboxImage, criPauseImage} {
		if _, _, err := e.crictlErr("inspecti", img); err != nil {
			t.Fatalf("the CRI plugin does not see image %s after ctr import", img)
		}
	}
	t.Logf("CRI containerd ready in %v (socket %s, bridge %s, pods on %s.0/24, CNI plugins in %s)",
		time.Since(t0).Round(time.Millisecond), e.sock, e.bridge, e.prefix, e.cniBinDir)
	return e
}

// setupBridge creates the pods' bridge with the host's address (.1) on a
// /24 of 10.222.0.0/16 that no address or route on this machine uses.
func (e *criEnv) setupBridge(t *testing.T) {
	t.Helper()
	suffix := runToken
	if len(suffix) > 9 {
		suffix = suffix[len(suffix)-9:]
	}
	e.bridge = "sbcri" + suffix
	used := map[string]bool{}
	for _, args := range [][]string{{"-4", "-o", "addr", "show"}, {"-4", "route", "show", "table", "all"}} {
		out, err := exec.Command("ip", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		for _, f := range strings.Fields(string(out)) {
			if strings.HasPrefix(f, "10.222.") {
				p := strings.SplitN(strings.SplitN(f, "/", 2)[0], ".", 4)
				if len(p) >= 3 {
					used[p[2]] = true
				}
			}
			if f == "10.0.0.0/8" || f == "10.222.0.0/16" {
				t.Fatalf("this machine routes %s; pick another pod range for the CRI test", f)
			}
		}
	}
	start := 0
	for _, c := range runToken {
		start = (start*31 + int(c)) % 250
	}
	for i := 0; i < 250; i++ {
		n := strconv.Itoa((start+i)%250 + 1)
		if !used[n] {
			e.prefix = "10.222." + n
			break
		}
	}
	if e.prefix == "" {
		t.Fatalf("no free /24 in 10.222.0.0/16")
	}
	for _, args := range [][]string{
		{"link", "add", e.bridge, "type", "bridge"},
		{"addr", "add", e.prefix + ".1/24", "dev", e.bridge},
		{"link", "set", e.bridge, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// teardown removes every pod, stops containerd by PID, kills what is left of
// this environment's shims and containers, unmounts, deletes the bridge and
// the host paths the CNI plugins and runc created for it; then it checks
// that nothing of it is left.
func (e *criEnv) teardown(t *testing.T) {
	if tornDown.Load() {
		return // the harness's teardown kills and unmounts everything under tmpDir
	}
	if e.proc != nil && !e.proc.exited() {
		if out, _, err := e.crictlErr("pods", "-q"); err == nil {
			for _, id := range strings.Fields(out) {
				if err := e.removePod(id); err != nil {
					t.Errorf("teardown: %v", err)
				}
			}
		}
	}
	if err := e.proc.stop(10 * time.Second); err != nil {
		t.Errorf("teardown: %v", err)
	}
	// Shims (their command line names our socket) and container processes
	// (their cgroup is below our cgroup parent) that outlived containerd.
	var pids []int
	forEachProcess(func(pid int, cmdline, cgroup string) {
		if strings.Contains(cmdline, e.dir) || strings.Contains(cgroup, e.cgParent+"/") {
			pids = append(pids, pid)
		}
	})
	for _, pid := range pids {
		t.Errorf("teardown: killing leftover process %d: %s", pid, strings.ReplaceAll(readFile(fmt.Sprintf("/proc/%d/cmdline", pid)), "\x00", " "))
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, pid := range pids {
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
			if err != nil || strings.Contains(string(st), ") Z ") {
				break
			}
		}
	}
	// runc state of containers whose shim was killed, the CNI result cache
	// of sandboxes whose CNI DEL never ran, and the sockets of killed shims.
	ids := map[string]bool{}
	bundles, _ := os.ReadDir(filepath.Join(e.dir, "state", "io.containerd.runtime.v2.task", criNamespace))
	for _, b := range bundles {
		ids[b.Name()] = true
	}
	runcRoot := "/run/containerd/runc/" + criNamespace
	states, _ := os.ReadDir(runcRoot)
	for _, st := range states {
		if strings.Contains(readFile(filepath.Join(runcRoot, st.Name(), "state.json")), e.dir) {
			ids[st.Name()] = true
			t.Errorf("teardown: runc state of %s left; deleting it", st.Name())
			_ = exec.Command("runc", "--root", runcRoot, "delete", "--force", st.Name()).Run()
			_ = os.RemoveAll(filepath.Join(runcRoot, st.Name()))
		}
	}
	for id := range ids {
		results, _ := filepath.Glob("/var/lib/cni/results/*-" + id + "-*")
		for _, r := range results {
			t.Errorf("teardown: CNI result cache %s left; removing it", r)
			_ = os.Remove(r)
		}
		for _, suffix := range []string{"", "/debug"} {
			sum := sha256.Sum256([]byte(filepath.Join(e.sock, criNamespace, id) + suffix))
			sockPath := filepath.Join("/run/containerd/s", hex.EncodeToString(sum[:]))
			if fi, err := os.Lstat(sockPath); err == nil && fi.Mode()&os.ModeSocket != 0 {
				_ = os.Remove(sockPath)
			}
		}
	}
	for _, err := range unmountUnder(e.dir) {
		t.Errorf("teardown: %v", err)
	}
	if e.bridge != "" {
		if out, err := exec.Command("ip", "link", "del", e.bridge).CombinedOutput(); err != nil && !strings.Contains(string(out), "Cannot find device") {
			t.Errorf("teardown: ip link del %s: %v\n%s", e.bridge, err, out)
		}
	}
	// runc's state root for namespace k8s.io, libcni's result cache: remove
	// them if this test created them and they are empty.
	if !e.hadRuncK8s {
		_ = os.Remove("/run/containerd/runc/" + criNamespace)
	}
	if !e.hadVarLibCNI {
		_ = os.Remove("/var/lib/cni/results")
		_ = os.Remove("/var/lib/cni")
	}
	for _, c := range cgroupRoots() {
		// Pod and container cgroups of killed processes, then the parent.
		dir := filepath.Join(c, e.cgParent)
		subs, _ := filepath.Glob(filepath.Join(dir, "*", "*"))
		subs2, _ := filepath.Glob(filepath.Join(dir, "*"))
		for _, d := range append(subs, subs2...) {
			if fi, err := os.Stat(d); err == nil && fi.IsDir() {
				_ = os.Remove(d)
			}
		}
		_ = os.Remove(dir)
	}

	// Nothing left?
	if out, _ := exec.Command("ip", "-o", "link", "show").CombinedOutput(); e.bridge != "" && strings.Contains(string(out), e.bridge) {
		t.Errorf("teardown: link %s still exists:\n%s", e.bridge, out)
	}
	forEachProcess(func(pid int, cmdline, cgroup string) {
		if strings.Contains(cmdline, e.dir) || strings.Contains(cgroup, e.cgParent+"/") {
			t.Errorf("teardown: process %d survived: %s", pid, strings.ReplaceAll(cmdline, "\x00", " "))
		}
	})
	for _, mp := range mountsUnder(e.dir) {
		t.Errorf("teardown: still mounted: %s", mp)
	}
	for _, c := range cgroupRoots() {
		if _, err := os.Stat(filepath.Join(c, e.cgParent)); err == nil {
			t.Errorf("teardown: cgroup %s left", filepath.Join(c, e.cgParent))
		}
	}
	if e.prefix != "" {
		for _, tool := range [][]string{{"iptables-save"}, {"nft", "list", "ruleset"}} {
			if _, err := exec.LookPath(tool[0]); err != nil {
				continue
			}
			out, _ := exec.Command(tool[0], tool[1:]...).CombinedOutput()
			for _, l := range strings.Split(string(out), "\n") {
				if strings.Contains(l, e.prefix+".") || (e.bridge != "" && strings.Contains(l, e.bridge)) {
					t.Errorf("teardown: %s shows a rule of the CRI test: %s", tool[0], l)
				}
			}
		}
	}
}

// ---------------------------------------------------------------------------
// Pods and containers through crictl

// runPod runs a pod sandbox with runtime handler snapboot and returns its ID
// and the path of its config (crictl create wants it). A t.Cleanup stops
// and removes it (with its containers).
func (e *criEnv) runPod(t *testing.T, name string, annotations map[string]string) (id, configPath string) {
	t.Helper()
	return e.runPodPID(t, name, annotations, criPIDContainer)
}

// CRI's namespace modes for a pod's PID namespace.
const (
	criPIDPod       = 0 // shareProcessNamespace: the sandbox's, for every container
	criPIDContainer = 1 // the kubelet's default: one per container
)

// runPodPID is runPod with a PID namespace mode.
func (e *criEnv) runPodPID(t *testing.T, name string, annotations map[string]string, pidMode int) (id, configPath string) {
	t.Helper()
	uid := uniqueID(t)
	logDir := filepath.Join(e.podsDir, uid)
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := map[string]any{
		"metadata":      map[string]any{"name": name, "namespace": "snapboot-it", "uid": uid, "attempt": 0},
		"hostname":      name,
		"log_directory": logDir,
		"annotations":   annotations,
		"linux": map[string]any{
			"cgroup_parent": e.cgParent,
			// As the kubelet sets it (without shareProcessNamespace, each
			// container has its own PID namespace). Network, IPC and UTS
			// are the pod's.
			"security_context": map[string]any{"namespace_options": map[string]any{"pid": pidMode}},
		},
	}
	configPath = filepath.Join(logDir, "pod.json")
	writeJSONT(t, configPath, cfg)
	id = strings.TrimSpace(e.crictl(t, "runp", "--runtime", criHandler, configPath))
	if id == "" {
		t.Fatalf("crictl runp printed no pod ID")
	}
	t.Cleanup(func() {
		if err := e.removePod(id); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return id, configPath
}

// checkpointServer runs a pod named name whose container (with mounts)
// serves name, checkpoints it with `snapboot checkpoint --exit` to ref, and
// returns ref.
func (e *criEnv) checkpointServer(t *testing.T, name, ref string, mounts []map[string]any) string {
	t.Helper()
	pod, podConf := e.runPod(t, name, nil)
	donor := e.startContainerOpts(t, pod, podConf, "web", nil, serveCmd(name), mounts)
	e.waitHTTP(t, e.podIP(t, pod), name, 20*time.Second)
	if out, errOut, code := e.snapboot("checkpoint", "--exit", donor, ref); code != 0 {
		t.Fatalf("snapboot checkpoint %s %s: exit %d\n%s\n%s", donor, ref, code, out, errOut)
	}
	return ref
}

// startContainer creates and starts a container from the busybox image in
// pod, and returns its ID (the containerd container ID too).
func (e *criEnv) startContainer(t *testing.T, pod, podConfig, name string, annotations map[string]string, cmd []string) string {
	t.Helper()
	return e.startContainerOpts(t, pod, podConfig, name, annotations, cmd, nil)
}

// startContainerOpts is startContainer with CRI mounts (container_path,
// host_path, readonly).
func (e *criEnv) startContainerOpts(t *testing.T, pod, podConfig, name string, annotations map[string]string, cmd []string, mounts []map[string]any) string {
	t.Helper()
	return e.startContainerConfig(t, pod, podConfig, name, annotations, cmd, func(cfg map[string]any) { cfg["mounts"] = mounts })
}

// startContainerConfig is startContainer with a function that changes the
// CRI container config before it is created.
func (e *criEnv) startContainerConfig(t *testing.T, pod, podConfig, name string, annotations map[string]string, cmd []string, change func(map[string]any)) string {
	t.Helper()
	cfg := map[string]any{
		"metadata":    map[string]any{"name": name},
		"image":       map[string]any{"image": busyboxImage},
		"command":     cmd,
		"annotations": annotations,
		"log_path":    name + ".log",
		"linux": map[string]any{
			// The kubelet's RuntimeDefault seccomp profile (profile_type 0):
			// containerd's default profile, in the spec of donors and clones.
			"security_context": map[string]any{"namespace_options": map[string]any{"pid": 1},
				"seccomp": map[string]any{"profile_type": 0}},
		},
	}
	if change != nil {
		change(cfg)
	}
	path := filepath.Join(filepath.Dir(podConfig), "container-"+name+".json")
	writeJSONT(t, path, cfg)
	id := strings.TrimSpace(e.crictl(t, "create", "--no-pull", pod, path, podConfig))
	if id == "" {
		t.Fatalf("crictl create printed no container ID")
	}
	e.crictl(t, "start", id)
	return id
}

// removePod stops and removes a pod sandbox and its containers ("not found"
// is fine).
func (e *criEnv) removePod(id string) error {
	if tornDown.Load() || e.proc == nil || e.proc.exited() {
		return nil
	}
	for _, args := range [][]string{{"stopp", id}, {"rmp", "--force", id}} {
		if _, stderr, err := e.crictlErrTimeout(20*time.Second, args...); err != nil && !strings.Contains(stderr, "not found") {
			return fmt.Errorf("crictl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr))
		}
	}
	return nil
}

func (e *criEnv) podIP(t *testing.T, pod string) string {
	t.Helper()
	var st struct {
		Status struct {
			State   string
			Network struct{ IP string }
		}
	}
	if err := json.Unmarshal([]byte(e.crictl(t, "inspectp", "-o", "json", pod)), &st); err != nil {
		t.Fatalf("crictl inspectp %s: %v", pod, err)
	}
	if !strings.HasPrefix(st.Status.Network.IP, e.prefix+".") {
		t.Fatalf("pod %s has IP %q, want one in %s.0/24", pod, st.Status.Network.IP, e.prefix)
	}
	return st.Status.Network.IP
}

// podState is a pod's state (SANDBOX_READY, SANDBOX_NOTREADY).
func (e *criEnv) podState(t *testing.T, pod string) string {
	t.Helper()
	var st struct{ Status struct{ State string } }
	if err := json.Unmarshal([]byte(e.crictl(t, "inspectp", "-o", "json", pod)), &st); err != nil {
		t.Fatalf("crictl inspectp %s: %v", pod, err)
	}
	return st.Status.State
}

// containerStatus is a container's state (CONTAINER_RUNNING, ...).
func (e *criEnv) containerStatus(t *testing.T, id string) string {
	t.Helper()
	var st struct{ Status struct{ State string } }
	if err := json.Unmarshal([]byte(e.crictl(t, "inspect", "-o", "json", id)), &st); err != nil {
		t.Fatalf("crictl inspect %s: %v", id, err)
	}
	return st.Status.State
}

// sandboxPID is the host PID of a pod's sandbox (pause) process.
func (e *criEnv) sandboxPID(t *testing.T, pod string) int {
	t.Helper()
	var st struct{ Info struct{ Pid int } }
	if err := json.Unmarshal([]byte(e.crictl(t, "inspectp", "-o", "json", pod)), &st); err != nil {
		t.Fatalf("crictl inspectp %s: %v", pod, err)
	}
	if st.Info.Pid <= 0 {
		t.Fatalf("crictl inspectp %s gives no pid", pod)
	}
	return st.Info.Pid
}

// containerPID is the host PID of a container's init process.
func (e *criEnv) containerPID(t *testing.T, id string) int {
	t.Helper()
	var st struct{ Info struct{ Pid int } }
	if err := json.Unmarshal([]byte(e.crictl(t, "inspect", "-o", "json", id)), &st); err != nil {
		t.Fatalf("crictl inspect %s: %v", id, err)
	}
	if st.Info.Pid <= 0 {
		t.Fatalf("crictl inspect %s gives no pid", id)
	}
	return st.Info.Pid
}

// waitHTTP waits until http://IP:8080/ answers with body marker (from the
// host, over the bridge).
func (e *criEnv) waitHTTP(t *testing.T, ip, marker string, timeout time.Duration) {
	t.Helper()
	url := fmt.Sprintf("http://%s/", net.JoinHostPort(ip, strconv.Itoa(criHTTPPort)))
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	var last string
	deadline := time.Now().Add(timeout)
	for {
		resp, err := client.Get(url)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			last = fmt.Sprintf("%d %q", resp.StatusCode, b)
			if resp.StatusCode == http.StatusOK && strings.TrimSpace(string(b)) == marker {
				return
			}
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: want %q within %v, last answer: %s\ncontainerd log:\n%s", url, marker, timeout, last, tailFile(e.logPath, 30))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ---------------------------------------------------------------------------
// Tools

func (e *criEnv) crictlErr(args ...string) (stdout, stderr string, err error) {
	return e.crictlErrTimeout(criTimeout, args...)
}

// crictlErrTimeout is crictlErr with a bound of its own (crictl's request
// timeout is a little shorter).
func (e *criEnv) crictlErrTimeout(timeout time.Duration, args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout+5*time.Second)
	defer cancel()
	full := append([]string{"--config", e.crictlConf, "--runtime-endpoint", "unix://" + e.sock, "--image-endpoint", "unix://" + e.sock, "--timeout", timeout.String()}, args...)
	cmd := exec.CommandContext(ctx, "crictl", full...)
	var o, er strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &er
	err = cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("crictl %s: timed out after %v: %w", strings.Join(args, " "), timeout, err)
	}
	return o.String(), er.String(), err
}

// crictl runs crictl against the CRI containerd; failure fails the test.
func (e *criEnv) crictl(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := e.crictlErr(args...)
	if err != nil {
		t.Fatalf("crictl %s: %v\nstdout:\n%s\nstderr:\n%s\ncontainerd log:\n%s", strings.Join(args, " "), err, out, errOut, tailFile(e.logPath, 30))
	}
	return out
}

// ctr runs ctr against the CRI containerd in namespace k8s.io.
func (e *criEnv) ctr(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), criTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"--address", e.sock, "--namespace", criNamespace}, args...)...)
	cmd.Env = append(envWithout(os.Environ(), "TMPDIR", "CONTAINERD_ADDRESS", "CONTAINERD_NAMESPACE"), "TMPDIR="+filepath.Join(e.dir, "tmp"))
	var o, er strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &er
	if err := cmd.Run(); err != nil {
		t.Fatalf("ctr %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, o.String(), er.String())
	}
	return o.String()
}

// snapboot runs the snapboot CLI against the CRI containerd (namespace
// k8s.io) with the CRI environment's node config.
func (e *criEnv) snapboot(args ...string) (stdout, stderr string, code int) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	full := append([]string{"--address", e.sock, "--namespace", criNamespace, "--config", e.nodeConf}, args...)
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, cliBinaryName), full...)
	var o, er strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &er
	err := cmd.Run()
	return o.String(), er.String(), exitCode(err)
}

// shimPIDs maps the -id of every shim of the CRI containerd (its command
// line names our socket) to its PID.
func (e *criEnv) shimPIDs() map[string]int {
	shims := map[string]int{}
	forEachProcess(func(pid int, cmdline, _ string) {
		args := strings.Split(cmdline, "\x00")
		if len(args) == 0 || filepath.Base(args[0]) != shimBinaryName {
			return
		}
		id, addr := "", ""
		for i := 0; i+1 < len(args); i++ {
			switch args[i] {
			case "-id", "--id":
				id = args[i+1]
			case "-address", "--address":
				addr = args[i+1]
			}
		}
		if addr == e.sock && id != "" {
			shims[id] = pid
		}
	})
	return shims
}

// netnsMounts are the pod network namespaces mounted under netnsDir.
func (e *criEnv) netnsMounts() []string {
	return mountsUnder(e.netnsDir)
}

func (e *criEnv) logOffset() int64 {
	fi, err := os.Stat(e.logPath)
	if err != nil {
		return 0
	}
	return fi.Size()
}

func (e *criEnv) logSince(offset int64) string {
	l := readFile(e.logPath)
	if int64(len(l)) < offset {
		return ""
	}
	return l[offset:]
}

// waitLogLine waits for the shim's log line with event and id in the CRI
// containerd's log after offset; on a timeout it fails with the fallback
// line (if any) and the log's tail.
func (e *criEnv) waitLogLine(t *testing.T, offset int64, event, id string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		log := e.logSince(offset)
		if l := findLogLine(log, event, id); l != "" {
			return l
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s line for %s within %v; fallback: %q\nlog tail:\n%s", event, id, timeout, findLogLine(log, "snapboot.fallback", id), tailFile(e.logPath, 40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// findLogLine returns the first line of log with the fields event=EVENT
// and id=ID (whole fields: id X-1 does not match X-12's line).
func findLogLine(log, event, id string) string {
	for _, l := range strings.Split(log, "\n") {
		fields := strings.Fields(l)
		if slices.Contains(fields, "event="+event) && slices.Contains(fields, "id="+id) {
			return l
		}
	}
	return ""
}

// criConditionTrue reports whether `crictl info` output has condition typ
// with status true.
func criConditionTrue(info, typ string) bool {
	var v struct {
		Status struct {
			Conditions []struct {
				Type   string
				Status bool
			}
		}
	}
	if json.Unmarshal([]byte(info), &v) != nil {
		return false
	}
	for _, c := range v.Status.Conditions {
		if c.Type == typ {
			return c.Status
		}
	}
	return false
}

// forEachProcess calls fn for every process but this one, with its command
// line (NUL-separated) and /proc/PID/cgroup.
func forEachProcess(fn func(pid int, cmdline, cgroup string)) {
	self := os.Getpid()
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil || pid == self || pid == 1 {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || len(cmdline) == 0 {
			continue
		}
		cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
		fn(pid, string(cmdline), string(cg))
	}
}

// parentPID is the PPid of a process (0 if unknown).
func parentPID(pid int) int {
	for _, l := range strings.Split(readFile(fmt.Sprintf("/proc/%d/status", pid)), "\n") {
		if v, ok := strings.CutPrefix(l, "PPid:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

func writeFileT(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func writeJSONT(t *testing.T, path string, v any) {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	writeFileT(t, path, string(b))
}
