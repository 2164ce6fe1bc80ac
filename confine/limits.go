package confine

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/creds"
	criucore "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/rlimit"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/snapboot/snapboot/restorehook"
	"golang.org/x/sys/unix"
)

// rlimitNames are the spec's names for CRIU's rlimits, which the images
// keep in resource-number order.
var rlimitNames = []string{"RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE", "RLIMIT_RSS",
	"RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS", "RLIMIT_LOCKS", "RLIMIT_SIGPENDING",
	"RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_RTPRIO", "RLIMIT_RTTIME"}

// processLimits is what a cold start would give the container's processes
// beyond its credentials: the spec's rlimits and oom_score_adj, and what
// runc's processes pass on where the spec sets none.
type processLimits struct {
	rlimits  []unix.Rlimit // by resource number
	oomScore int32
	oomExact bool // the spec sets oom_score_adj: use it as is
	// loginuid is the audit login uid a cold start's processes have: the
	// shim's own, which they inherit, or unset (invalidUID).
	loginuid uint32
	// lsm is the profile (AppArmor) or label (SELinux) the spec requires,
	// "" when the host enforces none of them.
	lsm string
}

func limitsFor(spec *specs.Spec, host hostState) (processLimits, error) {
	var l processLimits
	l.rlimits = make([]unix.Rlimit, len(rlimitNames))
	for i := range rlimitNames {
		if err := unix.Getrlimit(i, &l.rlimits[i]); err != nil {
			return l, fmt.Errorf("getrlimit %s: %w", rlimitNames[i], err)
		}
	}
	l.oomScore = host.oomScoreAdj
	l.loginuid = host.loginuid
	if _, userns := restorehook.SpecNamespace(spec, specs.UserNamespace); userns {
		// CRIU would write a task's loginuid from inside its user
		// namespace, through that namespace's id mapping. Leave them
		// unset, as CRIU does (it unsets its own before it forks), which
		// is the cold start's only where the shim's is unset too.
		if host.loginuid != invalidUID {
			return l, fmt.Errorf("%w: the spec has a user namespace, and its cold start would inherit the shim's audit loginuid %d, which a restore cannot give it", ErrRefused, host.loginuid)
		}
		l.loginuid = invalidUID
	}
	if spec.Process == nil {
		return l, nil
	}
	for _, r := range spec.Process.Rlimits {
		i := slices.Index(rlimitNames, r.Type)
		if i < 0 {
			return l, fmt.Errorf("unknown rlimit %q in the spec", r.Type)
		}
		l.rlimits[i] = unix.Rlimit{Cur: r.Soft, Max: r.Hard}
	}
	if s := spec.Process.OOMScoreAdj; s != nil {
		l.oomScore, l.oomExact = int32(*s), true
	}
	switch {
	case host.apparmor && spec.Process.ApparmorProfile != "" && spec.Process.ApparmorProfile != "unconfined":
		l.lsm = spec.Process.ApparmorProfile
	case host.selinux && spec.Process.SelinuxLabel != "":
		l.lsm = spec.Process.SelinuxLabel
	}
	return l, nil
}

// fitTask lowers a task's rlimits to the cold start's and sets its
// oom_score_adj and loginuid as a cold start would; it reports whether it
// changed tc. A donor's lower limits, or a higher oom_score_adj when the
// spec sets none, are kept: they give nothing. The loginuid is the cold
// start's: CRIU writes the image's as root (it names the user the node's
// audit log blames for the app's actions), and leaves it unset for a task
// whose image has none.
func (l processLimits) fitTask(tc *criucore.TaskCoreEntry) bool {
	if tc == nil {
		return false // a thread: its task's core holds these
	}
	changed := false
	loginuid := invalidUID // CRIU's, for an image without one
	if tc.Loginuid != nil {
		loginuid = *tc.Loginuid
	}
	if loginuid != l.loginuid {
		want := l.loginuid
		tc.Loginuid = &want
		changed = true
	}
	for i, r := range tc.GetRlimits().GetRlimits() {
		if i >= len(l.rlimits) {
			break
		}
		bound := l.rlimits[i]
		hard, soft := min(r.GetMax(), bound.Max), r.GetCur()
		soft = min(soft, hard)
		if hard != r.GetMax() || soft != r.GetCur() {
			tc.Rlimits.Rlimits[i] = &rlimit.RlimitEntry{Cur: &soft, Max: &hard}
			changed = true
		}
	}
	if tc.OomScoreAdj != nil {
		want := tc.GetOomScoreAdj()
		if l.oomExact || want < l.oomScore {
			want = l.oomScore
		}
		if want != tc.GetOomScoreAdj() {
			tc.OomScoreAdj = &want
			changed = true
		}
	}
	return changed
}

// fitLSM gives a thread the spec's LSM profile (AppArmor) or label
// (SELinux) where this host enforces one: CRIU would restore the image's,
// or, for an image without one, leave the thread unconfined. (On SELinux
// hosts each pod has its own categories, so the donor's label is never the
// clone's.) It reports whether it changed cr.
func (l processLimits) fitLSM(cr *creds.CredsEntry) bool {
	if l.lsm == "" || (cr.GetLsmProfile() == l.lsm && cr.LsmSockcreate == nil) {
		return false
	}
	profile := l.lsm
	cr.LsmProfile = &profile
	cr.LsmSockcreate = nil // the label of the sockets it makes: its own
	return true
}

// hostState is what of this host decides a cold start's limits.
type hostState struct {
	oomScoreAdj       int32      // the shim's own, which runc passes on
	loginuid          uint32     // the shim's own (invalidUID: unset)
	sched             schedState // the shim's own
	schedResetOnFork  bool       // the shim's own SCHED_RESET_ON_FORK
	apparmor, selinux bool       // enforced by this host's kernel
	// seccompFilter is the filter runc installs on this node for the
	// spec's seccomp profile, if it has one.
	seccompFilter []byte
	// cgroupHierarchies returns the cgroup v1 hierarchies, by the base
	// name of their mount points (see rebindCgroups).
	cgroupHierarchies func() map[string]cgroupHierarchy
	// cgroupNames returns the names of the cgroup v1 controllers and
	// named hierarchies this node has (see checkCgroups).
	cgroupNames func() map[string]bool
	// utsNames returns the names of the UTS namespace at a path, or this
	// node's for "" (see fitUTSNames).
	utsNames func(path string) (host, domain string, err error)
	// ipcSysctls returns the IPC sysctls (ipcSysctls' keys) of the IPC
	// namespace at a path (see fitIPCSysctls).
	ipcSysctls func(path string) (map[string]string, error)
	// netSysctl returns a network sysctl's value (dotted name) in the
	// network namespace at a path, or in this node's for "" (see
	// netSpecFor).
	netSysctl func(path, name string) (string, error)
	// pipeMaxSize returns this node's fs.pipe-max-size (see
	// checkPipeSizes).
	pipeMaxSize func() (uint32, error)
	// rootLayers are the directories of the container's root file system,
	// topmost first (see remaps.check).
	rootLayers []string
	// tcpRepair: the restore keeps established TCP connections
	// (tcp-established), which CRIU rebuilds in TCP repair mode.
	tcpRepair bool
}

func readHostState() (hostState, error) {
	var h hostState
	data, err := os.ReadFile("/proc/self/oom_score_adj")
	if err != nil {
		return h, err
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 32)
	if err != nil {
		return h, fmt.Errorf("oom_score_adj: %w", err)
	}
	h.oomScoreAdj = int32(v)
	if h.loginuid, err = ownLoginuid(); err != nil {
		return h, err
	}
	if h.sched, h.schedResetOnFork, err = ownSched(); err != nil {
		return h, err
	}
	// As runc decides it: AppArmor's module parameter, selinuxfs.
	if b, err := os.ReadFile("/sys/module/apparmor/parameters/enabled"); err == nil && strings.HasPrefix(string(b), "Y") {
		h.apparmor = true
	}
	if _, err := os.Stat("/sys/fs/selinux/enforce"); err == nil {
		h.selinux = true
	}
	// One read of the node's cgroup mounts for both, when first needed.
	cgroupMounts := sync.OnceValues(cgroupV1Mounts)
	h.cgroupHierarchies = func() map[string]cgroupHierarchy { h, _ := cgroupMounts(); return h }
	h.cgroupNames = func() map[string]bool { _, n := cgroupMounts(); return n }
	h.utsNames = utsNamesOf
	h.ipcSysctls = ipcSysctlsOf
	h.netSysctl = netSysctlOf
	h.pipeMaxSize = pipeMaxSize
	return h, nil
}

// invalidUID is the kernel's "unset" loginuid.
const invalidUID = ^uint32(0)

// ownLoginuid is the calling process's audit login uid (invalidUID where
// the kernel has no audit support, or it is unset).
func ownLoginuid() (uint32, error) {
	data, err := os.ReadFile("/proc/self/loginuid")
	if errors.Is(err, os.ErrNotExist) {
		return invalidUID, nil
	}
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("loginuid: %w", err)
	}
	return uint32(v), nil
}
