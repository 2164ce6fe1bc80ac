//go:build integration && linux

package integration

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// ctrTimeout bounds every ctr invocation made through these helpers.
const ctrTimeout = 2 * time.Minute

// ctrCmd returns an unstarted `ctr --address containerdAddr --namespace
// namespace ARGS...` command for callers that need their own stdin, stdout or
// lifetime (e.g. an attached `ctr run` they kill). TMPDIR points into tmpDir.
func ctrCmd(ctx context.Context, args ...string) *exec.Cmd {
	full := append([]string{"--address", containerdAddr, "--namespace", namespace}, args...)
	cmd := exec.CommandContext(ctx, "ctr", full...)
	cmd.Env = append(envWithout(os.Environ(), "TMPDIR", "CONTAINERD_ADDRESS", "CONTAINERD_NAMESPACE"), "TMPDIR="+filepath.Join(tmpDir, "tmp"))
	return cmd
}

// ctrErr runs ctr against the test containerd and namespace and returns its
// stdout, stderr and error (an *exec.ExitError for a non-zero exit; see
// exitCode). It never fails the test. Binary stdout survives the string.
func ctrErr(args ...string) (stdout, stderr string, err error) {
	if tornDown.Load() {
		return "", "", errTornDown
	}
	return ctrExec(args...)
}

// ctrExec is ctrErr without the torn-down check (the teardown uses it).
func ctrExec(args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), ctrTimeout)
	defer cancel()
	var o, e bytes.Buffer
	cmd := ctrCmd(ctx, args...)
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("ctr %s: timed out after %v: %w", strings.Join(args, " "), ctrTimeout, err)
	}
	return o.String(), e.String(), err
}

// errTornDown is what ctr helpers return once the environment is gone
// (after a signal, or when -test.timeout is near).
var errTornDown = errors.New("snapboot-it: the test environment has been torn down (signal or -test.timeout)")

// ctr runs ctr against the test containerd and namespace and returns stdout.
// A non-zero exit fails the test, with stdout and stderr in the message.
func ctr(t testing.TB, args ...string) string {
	t.Helper()
	stdout, stderr, err := ctrErr(args...)
	if err != nil {
		t.Fatalf("ctr %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, stdout, stderr)
	}
	return stdout
}

// exitCode is the exit status of a command error: 0 for nil, the process's
// code for an *exec.ExitError, -1 otherwise.
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// isNotFound reports whether ctr's stderr says the object does not exist.
func isNotFound(stderr string) bool {
	return strings.Contains(stderr, "not found") || strings.Contains(stderr, "does not exist")
}

// orasSubcommands with --plain-http (checked against `oras X --help` of
// oras 1.3.6); the value is how many words the subcommand has.
var orasSubcommands = map[string]int{
	"push": 1, "pull": 1, "attach": 1, "discover": 1, "resolve": 1, "tag": 1,
	"login": 1, "logout": 0, "backup": 1, "restore": 1,
	"blob": 2, "manifest": 2, "repo": 2, "repository": 2,
}

// orasArgs inserts --plain-http after the subcommand (--from-plain-http
// --to-plain-http for cp/copy) unless the caller passed one already.
func orasArgs(args []string) []string {
	for _, a := range args {
		if strings.Contains(a, "plain-http") {
			return args
		}
	}
	if len(args) == 0 {
		return args
	}
	var flags []string
	n := 0
	switch args[0] {
	case "cp", "copy":
		n, flags = 1, []string{"--from-plain-http", "--to-plain-http"}
	default:
		if w, ok := orasSubcommands[args[0]]; ok && w > 0 && len(args) >= w {
			n, flags = w, []string{"--plain-http"}
		}
	}
	if flags == nil {
		return args
	}
	out := append([]string{}, args[:n]...)
	out = append(out, flags...)
	return append(out, args[n:]...)
}

// orasErr runs the oras CLI (plain HTTP added as in orasArgs) in
// tmpDir/work and returns stdout, stderr and the error.
func orasErr(args ...string) (stdout, stderr string, err error) {
	return orasErrIn(filepath.Join(tmpDir, "work"), args...)
}

// orasErrIn is orasErr running in directory dir.
func orasErrIn(dir string, args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), ctrTimeout)
	defer cancel()
	var o, e bytes.Buffer
	cmd := exec.CommandContext(ctx, "oras", orasArgs(args)...)
	cmd.Dir = dir
	cmd.Env = append(envWithout(os.Environ(), "TMPDIR"), "TMPDIR="+filepath.Join(tmpDir, "tmp"))
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// orasCmd runs the oras CLI against the test registry and returns stdout;
// failure fails the test. --plain-http is added where the subcommand takes
// it. It runs in tmpDir/work; see orasIn for files named relative to a
// directory.
//
//	orasCmd(t, "manifest", "fetch", registryAddr+"/ckpt/app:v1")
func orasCmd(t testing.TB, args ...string) string {
	t.Helper()
	return orasIn(t, filepath.Join(tmpDir, "work"), args...)
}

// orasIn is orasCmd running in dir. oras records a pushed file's path as its
// title and refuses to pull a title outside the output directory, so push
// files by their name relative to dir:
//
//	orasIn(t, dir, "push", registryAddr+"/ckpt/app:v1", "images.tar.zst:application/vnd.snapboot.x")
//	orasIn(t, other, "pull", registryAddr+"/ckpt/app:v1")   // writes other/images.tar.zst
func orasIn(t testing.TB, dir string, args ...string) string {
	t.Helper()
	stdout, stderr, err := orasErrIn(dir, args...)
	if err != nil {
		t.Fatalf("oras %s (in %s): %v\nstdout:\n%s\nstderr:\n%s", strings.Join(orasArgs(args), " "), dir, err, stdout, stderr)
	}
	return stdout
}

// containerdLog is containerd's log so far. With debug level on, the shims'
// logs (logrus on their stderr/log pipe) are in it too.
func containerdLog() string {
	data, _ := os.ReadFile(containerdLogPath)
	return string(data)
}

// containerdLogOffset is the current size of containerd's log, to pass to
// waitForLogSince so that only what a test caused is searched.
func containerdLogOffset() int64 {
	fi, err := os.Stat(containerdLogPath)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// waitForLog waits until containerd's log contains substr, or fails the test
// after timeout with the log's tail.
func waitForLog(t testing.TB, substr string, timeout time.Duration) {
	t.Helper()
	waitForLogSince(t, 0, substr, timeout)
}

// waitForLogSince is waitForLog looking only at bytes after offset
// (from containerdLogOffset).
func waitForLogSince(t testing.TB, offset int64, substr string, timeout time.Duration) {
	t.Helper()
	found := func() bool {
		l := containerdLog()
		if int64(len(l)) < offset {
			return false
		}
		return strings.Contains(l[offset:], substr)
	}
	deadline := time.Now().Add(timeout)
	for !found() {
		if time.Now().After(deadline) {
			t.Fatalf("containerd log: %q did not appear within %v; last lines:\n%s", substr, timeout, tailFile(containerdLogPath, 40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitFor polls cond every 50ms until it is true, or fails the test after
// timeout saying what was awaited.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var idCounter atomic.Int64

var nonIDChars = regexp.MustCompile(`[^a-z0-9]+`)

// uniqueID returns a container ID valid for containerd (and runc, cgroups):
// the test's name in lower case, runToken and a counter, e.g.
// "testcoldstartlikerunc-runc-exit-12345678-7". Unique across the tests of
// this run and across concurrent runs on one machine.
func uniqueID(t testing.TB) string {
	name := nonIDChars.ReplaceAllString(strings.ToLower(t.Name()), "-")
	name = strings.Trim(name, "-")
	if len(name) > 44 {
		name = strings.TrimRight(name[:44], "-")
	}
	if name == "" {
		name = "c"
	}
	id := fmt.Sprintf("%s-%s-%d", name, runToken, idCounter.Add(1))
	idsMu.Lock()
	ids = append(ids, id)
	idsMu.Unlock()
	return id
}

var (
	idsMu sync.Mutex
	ids   []string
)

// issuedIDs are all IDs uniqueID returned so far (the teardown uses them).
func issuedIDs() []string {
	idsMu.Lock()
	defer idsMu.Unlock()
	return append([]string(nil), ids...)
}

// runOptions configures runDetachedOpts.
type runOptions struct {
	// Runtime is the --runtime (runcRuntime or snapbootRuntime).
	Runtime string
	// Annotations become --annotation k=v (OCI spec annotations).
	Annotations map[string]string
	// LogFile receives the task's stdout and stderr (through the shim's
	// pipes, so CRIU can dump the task). Empty: logsDir/<id>.log.
	LogFile string
	// Image defaults to busyboxImage.
	Image string
	// Flags are extra `ctr run` flags, e.g. "--net-host",
	// "--with-ns", "network:"+newNetns(t), "--env", "K=V", "--mount", "...".
	Flags []string
}

// runDetached starts a detached container and task:
//
//	ctr run -d --runtime RUNTIME [--annotation k=v ...] --log-uri file://LOGFILE busyboxImage ID CMD...
//
// stdout and stderr of the task go to logFile (empty: logsDir/<id>.log,
// created by the shim); the path is returned. A t.Cleanup kills (SIGKILL) and
// deletes the task and the container, ignoring "not found". The container
// gets a fresh network namespace from runc; see runDetachedOpts for
// --net-host or a namespace from newNetns (needed for restores).
func runDetached(t testing.TB, id, runtime string, annotations map[string]string, logFile string, cmd ...string) string {
	t.Helper()
	return runDetachedOpts(t, id, runOptions{Runtime: runtime, Annotations: annotations, LogFile: logFile}, cmd...)
}

// runDetachedOpts is runDetached with extra options; it returns the log path.
func runDetachedOpts(t testing.TB, id string, o runOptions, cmd ...string) string {
	t.Helper()
	if o.LogFile == "" {
		o.LogFile = filepath.Join(logsDir, id+".log")
	}
	logFile, err := filepath.Abs(o.LogFile)
	if err != nil {
		t.Fatal(err)
	}
	if o.Image == "" {
		o.Image = busyboxImage
	}
	args := []string{"run", "-d"}
	if o.Runtime != "" {
		args = append(args, "--runtime", o.Runtime)
	}
	keys := make([]string, 0, len(o.Annotations))
	for k := range o.Annotations {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, "--annotation", k+"="+o.Annotations[k])
	}
	args = append(args, "--log-uri", "file://"+logFile)
	args = append(args, o.Flags...)
	args = append(args, o.Image, id)
	args = append(args, cmd...)
	t.Cleanup(func() {
		if err := removeContainer(id); err != nil {
			t.Errorf("cleanup of container %s: %v", id, err)
		}
	})
	ctr(t, args...)
	return logFile
}

// removeContainer SIGKILLs the task of container id, deletes the task and
// the container. Missing task or container is fine.
func removeContainer(id string) error {
	if tornDown.Load() {
		return nil // the teardown removes it
	}
	return removeContainerNow(id)
}

func removeContainerNow(id string) error {
	// A frozen task would not die of SIGKILL until thawed.
	if st, _ := taskStatusErr(id); st == "PAUSED" {
		_, _, _ = ctrExec("task", "resume", id)
	}
	// Fails for a missing or stopped task; delete --force copes.
	_, _, _ = ctrExec("task", "kill", "--signal", "SIGKILL", id)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		st, err := taskStatusErr(id)
		if err != nil || st == "" || st == "STOPPED" {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, stderr, err := ctrExec("task", "delete", "--force", id); err != nil && !isNotFound(stderr) {
		return fmt.Errorf("ctr task delete --force: %v: %s", err, strings.TrimSpace(stderr))
	}
	if _, stderr, err := ctrExec("container", "rm", id); err != nil && !isNotFound(stderr) {
		return fmt.Errorf("ctr container rm: %v: %s", err, strings.TrimSpace(stderr))
	}
	return nil
}

// taskInfo is one row of `ctr task ls`.
type taskInfo struct {
	ID     string
	PID    int
	Status string // RUNNING, PAUSED, STOPPED, CREATED, ...
}

// listTasks parses `ctr task ls`.
func listTasks() ([]taskInfo, error) {
	out, stderr, err := ctrExec("task", "ls")
	if err != nil {
		return nil, fmt.Errorf("ctr task ls: %v: %s", err, stderr)
	}
	var tasks []taskInfo
	for i, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if i == 0 || len(f) < 3 {
			continue // header
		}
		pid, _ := strconv.Atoi(f[1])
		tasks = append(tasks, taskInfo{ID: f[0], PID: pid, Status: f[2]})
	}
	return tasks, nil
}

func taskStatusErr(id string) (string, error) {
	tasks, err := listTasks()
	if err != nil {
		return "", err
	}
	for _, ti := range tasks {
		if ti.ID == id {
			return ti.Status, nil
		}
	}
	return "", nil
}

// taskStatus is the STATUS column of `ctr task ls` for id ("" when there is
// no such task). ctr failing fails the test.
func taskStatus(t testing.TB, id string) string {
	t.Helper()
	st, err := taskStatusErr(id)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// taskPID is the PID column of `ctr task ls` for id (the init process's host
// PID); it fails the test when there is no such task.
func taskPID(t testing.TB, id string) int {
	t.Helper()
	tasks, err := listTasks()
	if err != nil {
		t.Fatal(err)
	}
	for _, ti := range tasks {
		if ti.ID == id {
			return ti.PID
		}
	}
	t.Fatalf("no task %s in `ctr task ls`", id)
	return 0
}

// waitTaskStatus polls `ctr task ls` until id has status want, or fails the
// test after timeout with the last status seen.
func waitTaskStatus(t testing.TB, id, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		last := taskStatus(t, id)
		if last == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s: status %q after %v, want %q", id, last, timeout, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkpointTask runs
//
//	ctr task checkpoint --image-path IMAGEDIR --work-path WORKDIR [--exit] ID
//
// which leaves plain CRIU images in imageDir and CRIU's dump.log in workDir
// (both made absolute and created). With exit the task is stopped after the
// dump. On failure the test fails with the tail of dump.log. The checkpoint
// image that containerd's client makes for runtimes other than runc's (see
// removeCheckpointImages) is deleted.
func checkpointTask(t testing.TB, id, imageDir, workDir string, exit bool) {
	t.Helper()
	var err error
	if imageDir, err = filepath.Abs(imageDir); err != nil {
		t.Fatal(err)
	}
	if workDir, err = filepath.Abs(workDir); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{imageDir, workDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	args := []string{"task", "checkpoint", "--image-path", imageDir, "--work-path", workDir}
	if exit {
		args = append(args, "--exit")
	}
	args = append(args, id)
	stdout, stderr, err := ctrErr(args...)
	removeCheckpointImages(id)
	if err != nil {
		t.Fatalf("ctr %s: %v\nstdout:\n%s\nstderr:\n%s\n%s", strings.Join(args, " "), err, stdout, stderr, criuLogTail(workDir, "dump.log"))
	}
	if _, err := os.Stat(filepath.Join(imageDir, "inventory.img")); err != nil {
		t.Fatalf("checkpoint of %s succeeded but %s has no inventory.img: %v\n%s", id, imageDir, err, criuLogTail(workDir, "dump.log"))
	}
}

// removeCheckpointImages deletes the by-product images
// "containerd.io/checkpoint/<id>:<MM-DD-YYYY-HH:MM:SS>" of
// `ctr task checkpoint` for container id.
//
// containerd's client skips them only for runtime io.containerd.runc.v2
// (isCheckpointPathExist in client/task.go checks the runtime *name*). For
// io.containerd.snapboot.v1 it also diffs the rw snapshot into the content
// store and creates that image, with the task still paused, even with
// --image-path; a second checkpoint of the same container within the same
// second then fails with `image "containerd.io/checkpoint/...": already
// exists` after CRIU has dumped (and, with --exit, stopped) the task.
func removeCheckpointImages(id string) {
	out, _, err := ctrErr("images", "ls", "-q")
	if err != nil {
		return
	}
	for _, name := range strings.Fields(out) {
		if strings.HasPrefix(name, "containerd.io/checkpoint/"+id+":") {
			_, _, _ = ctrErr("images", "rm", "--sync", name)
		}
	}
}

// criuLogTail returns the last lines of a CRIU log in dir (dump.log,
// restore.log), labelled, or a note that it is missing.
func criuLogTail(dir, name string) string {
	p := filepath.Join(dir, name)
	tail := tailFile(p, 40)
	if tail == "" {
		return fmt.Sprintf("(no %s)", p)
	}
	return fmt.Sprintf("last lines of %s:\n%s", p, tail)
}

// snapshotDiffTar returns the changes of container id's rootfs against its
// image, as an uncompressed OCI layer tar (with .wh. whiteouts):
//
//	ctr snapshots diff --media-type application/vnd.oci.image.layer.v1.tar ID
//
// It works on the running container's active snapshot, whose key is the
// container ID for containers made by `ctr run`.
func snapshotDiffTar(t testing.TB, id string) []byte {
	t.Helper()
	stdout, stderr, err := ctrErr("snapshots", "diff", "--media-type", "application/vnd.oci.image.layer.v1.tar", id)
	if err != nil {
		t.Fatalf("ctr snapshots diff %s: %v\n%s", id, err, stderr)
	}
	return []byte(stdout)
}

// tarEntries maps each entry name of a tar (e.g. from snapshotDiffTar) to
// its content (regular files) or "" (others); it fails the test on a
// malformed tar.
// withoutEntries copies a tar archive without the named entries.
func withoutEntries(t testing.TB, data []byte, names ...string) []byte {
	t.Helper()
	if len(names) == 0 {
		return data
	}
	var out bytes.Buffer
	tr, tw := tar.NewReader(bytes.NewReader(data)), tar.NewWriter(&out)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("reading tar: %v", err)
		}
		if slices.Contains(names, strings.TrimPrefix(h.Name, "./")) {
			continue
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(tw, tr); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func tarEntries(t testing.TB, data []byte) map[string]string {
	t.Helper()
	entries := map[string]string{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return entries
		}
		if err != nil {
			t.Fatalf("reading tar: %v", err)
		}
		content := ""
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatalf("reading tar entry %s: %v", h.Name, err)
			}
			content = string(b)
		}
		entries[strings.TrimPrefix(h.Name, "./")] = content
	}
}

// readFile returns a file's content, "" when it cannot be read (handy in
// waitFor conditions on container logs).
func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

var netnsCounter atomic.Int64

// newNetns creates a persistent network namespace (a bind mount of nsfs
// under tmpDir/netns) with loopback up, and returns its path, for
// runOptions.Flags: "--with-ns", "network:"+path. Unlike the namespace runc
// creates itself, such a namespace survives CRIU restore (see STACK.md). A
// t.Cleanup unmounts it.
func newNetns(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(tmpDir, "netns")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, fmt.Sprintf("ns%d", netnsCounter.Add(1)))
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("unshare", "--net="+p, "--", "ip", "link", "set", "lo", "up").CombinedOutput()
	if err != nil {
		t.Fatalf("unshare --net=%s ip link set lo up: %v\n%s", p, err, out)
	}
	t.Cleanup(func() {
		for _, err := range unmountUnder(p) {
			t.Errorf("netns cleanup: %v", err)
		}
		_ = os.Remove(p)
	})
	return p
}

// registryDown stops the registry for the rest of the test; a t.Cleanup
// starts it again (same address, same content) for the tests that follow.
func registryDown(t testing.TB) {
	t.Helper()
	if err := stopRegistry(); err != nil {
		t.Fatalf("stopping registry: %v", err)
	}
	t.Cleanup(func() {
		if err := startRegistry(); err != nil {
			t.Errorf("restarting registry: %v", err)
		}
	})
}

// testDir is a fresh directory under tmpDir for one test's files (CRIU
// images, logs); unlike t.TempDir it is kept with SNAPBOOT_IT_KEEP=1.
func testDir(t testing.TB) string {
	t.Helper()
	d := filepath.Join(tmpDir, "tests", uniqueID(t))
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// shimProcess finds the shim serving container id (its command line has
// `-id ID` and our containerd address) and returns its PID and executable
// path, to prove which shim binary containerd started. It fails the test
// when there is none.
func shimProcess(t testing.TB, id string) (pid int, exe string) {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p))
		if err != nil {
			continue
		}
		args := strings.Split(string(cmdline), "\x00")
		hasID, hasAddr := false, false
		for i := 0; i+1 < len(args); i++ {
			switch args[i] {
			case "-id", "--id":
				hasID = hasID || args[i+1] == id
			case "-address", "--address":
				hasAddr = hasAddr || args[i+1] == containerdAddr
			}
		}
		if hasID && hasAddr {
			exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", p))
			if err != nil {
				t.Fatalf("readlink /proc/%d/exe: %v", p, err)
			}
			return p, exe
		}
	}
	t.Fatalf("no shim process for container %s (address %s)", id, containerdAddr)
	return 0, ""
}

// buildProgram builds a static Go program from source into a test
// directory, as name, and returns the script that runs it in a container
// (at /opt/<name>/<name>) and the ctr flags that mount it there.
func buildProgram(t *testing.T, name, source string) (script string, flags []string) {
	t.Helper()
	dir := testDir(t)
	src := filepath.Join(dir, "main.go")
	if err := os.WriteFile(src, []byte(source), 0o644); err != nil {
		t.Fatal(err)
	}
	build := exec.Command("go", "build", "-o", filepath.Join(dir, name), src)
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", name, err, out)
	}
	at := "/opt/" + name
	return "exec " + at + "/" + name, []string{"--mount", "type=bind,src=" + dir + ",dst=" + at + ",options=rbind:ro"}
}
