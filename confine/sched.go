package confine

import (
	"fmt"
	"slices"

	criucore "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

var schedPolicies = map[specs.LinuxSchedulerPolicy]uint32{
	specs.SchedOther: unix.SCHED_NORMAL, specs.SchedFIFO: unix.SCHED_FIFO, specs.SchedRR: unix.SCHED_RR,
	specs.SchedBatch: unix.SCHED_BATCH, specs.SchedIdle: unix.SCHED_IDLE, specs.SchedDeadline: unix.SCHED_DEADLINE,
}

// schedState is a thread's scheduling policy (without
// SCHED_RESET_ON_FORK), real-time priority and nice value.
type schedState struct {
	policy uint32
	prio   uint32
	nice   int32
}

func isRealTime(policy uint32) bool { return policy == unix.SCHED_FIFO || policy == unix.SCHED_RR }

// schedBounds is what scheduling a cold-started thread can have. CRIU sets
// each thread's policy, real-time priority and nice value from its core
// image, as root, before it narrows the thread's capabilities, and ignores
// what fails: a checkpoint could give the app SCHED_FIFO or nice -20,
// which the caller's spec does not let it take.
type schedBounds struct {
	// start is what the cold start's threads begin with: the spec's
	// scheduler, or else the shim's own, which runc passes on.
	start schedState
	// unbounded: the spec grants CAP_SYS_NICE (or CAP_SYS_RESOURCE, which
	// raises the limits below) outside a user namespace, so the app could
	// set any of it itself.
	unbounded bool
	// niceByLimit is the lowest nice value RLIMIT_NICE lets a thread set
	// (20 - the limit; above 19 when the limit is 0).
	niceByLimit int32
	// rtLimit is the app's RLIMIT_RTPRIO (hard: it may raise the soft one).
	rtLimit uint64
}

// schedFor returns the bounds a cold start with spec has, given the
// capability sets m of the spec, the cold start's rlimits and the shim's
// own scheduling (own).
func schedFor(spec *specs.Spec, m masks, limits processLimits, own schedState, ownResetOnFork bool) (schedBounds, error) {
	b := schedBounds{start: own}
	resetOnFork := ownResetOnFork
	if spec.Process != nil && spec.Process.Scheduler != nil {
		s := spec.Process.Scheduler
		policy, ok := schedPolicies[s.Policy]
		if !ok {
			return b, fmt.Errorf("%w: unknown scheduling policy %q in the spec", ErrRefused, s.Policy)
		}
		if policy == unix.SCHED_DEADLINE {
			return b, fmt.Errorf("%w: the spec's scheduling policy is SCHED_DEADLINE, which CRIU does not restore", ErrRefused)
		}
		// runc sets it with sched_setattr(2): the kernel takes the nice
		// value for the normal policies only, clamped, and the flags keep
		// the policy or the parameters the thread had (the shim's).
		keepPolicy := slices.Contains(s.Flags, specs.SchedFlagKeepPolicy)
		keepParams := slices.Contains(s.Flags, specs.SchedFlagKeepParams)
		if !keepPolicy {
			b.start.policy = policy
		}
		if !keepParams {
			b.start.prio = 0
			if isRealTime(b.start.policy) && s.Priority > 0 {
				b.start.prio = uint32(s.Priority)
			}
			if !isRealTime(b.start.policy) {
				b.start.nice = min(max(s.Nice, -20), 19)
			}
		}
		resetOnFork = slices.Contains(s.Flags, specs.SchedFlagResetOnFork)
	}
	if resetOnFork {
		// The first thread has the start with the flag, which it cannot
		// clear; every process and thread it makes begins reset: the
		// normal policy for a real-time one, nice 0 for a negative one.
		// Bound them all by that.
		if isRealTime(b.start.policy) {
			b.start.policy, b.start.prio = unix.SCHED_NORMAL, 0
		}
		b.start.nice = max(b.start.nice, 0)
	}
	granted, nodeCaps := grantedCaps(spec, m)
	b.unbounded = granted&(1<<unix.CAP_SYS_NICE|1<<unix.CAP_SYS_RESOURCE) != 0 && nodeCaps
	// RLIMIT_NICE r lets a thread lower its nice value to 20 - r.
	r := min(limits.rlimits[unix.RLIMIT_NICE].Max, 40)
	b.niceByLimit = 20 - int32(r)
	b.rtLimit = limits.rlimits[unix.RLIMIT_RTPRIO].Max
	return b, nil
}

// fit makes a thread's scheduling one its cold start could have reached,
// as the kernel's sched_setscheduler(2) and setpriority(2) would let it
// from the start: a real-time policy or priority it could not take becomes
// the start's policy, a lower nice value than it could set becomes the
// lowest it could. It reports whether it changed tc, and refuses a policy
// CRIU does not restore. (CRIU gives a thread whose image has no policy
// SCHED_OTHER and nice 0, the values read from the absent fields.)
func (b schedBounds) fit(tc *criucore.ThreadCoreEntry, name string) (bool, error) {
	raw := tc.GetSchedPolicy()
	s := schedState{policy: raw &^ unix.SCHED_RESET_ON_FORK, prio: tc.GetSchedPrio(), nice: tc.GetSchedNice()}
	switch s.policy {
	case unix.SCHED_NORMAL, unix.SCHED_BATCH, unix.SCHED_IDLE, unix.SCHED_FIFO, unix.SCHED_RR:
	default:
		return false, fmt.Errorf("%w: %s has scheduling policy %d, which CRIU does not restore", ErrRefused, name, s.policy)
	}
	if b.unbounded {
		return false, nil
	}
	want := s
	if isRealTime(s.policy) {
		// Another real-time policy than the start's needs an RLIMIT_RTPRIO;
		// a priority above the start's, one at least as high.
		same := s.policy == b.start.policy
		ok := (same || b.rtLimit > 0) && (uint64(s.prio) <= b.rtLimit || (isRealTime(b.start.policy) && s.prio <= b.start.prio))
		if !ok {
			want.policy, want.prio = b.start.policy, b.start.prio
		}
	}
	floor := min(b.start.nice, b.niceByLimit) // raising it is free
	if b.start.policy == unix.SCHED_IDLE && want.policy != unix.SCHED_IDLE {
		// Leaving SCHED_IDLE takes the right to the nice value the thread
		// has: after raising it to 19 at most, so RLIMIT_NICE 1.
		if b.niceByLimit > 19 {
			want.policy, want.prio = unix.SCHED_IDLE, 0
		} else {
			floor = b.niceByLimit
		}
	}
	want.nice = min(max(want.nice, floor), 19)
	if want == s {
		return false, nil
	}
	tc.SchedPolicy = proto.Uint32(want.policy | raw&unix.SCHED_RESET_ON_FORK)
	tc.SchedNice = proto.Int32(want.nice)
	if isRealTime(want.policy) {
		tc.SchedPrio = proto.Uint32(want.prio)
	} else {
		tc.SchedPrio = nil
	}
	return true, nil
}

// ownSched is the calling process's scheduling, which runc passes on to a
// cold start whose spec has no scheduler, and whether it resets on fork.
// It is the main thread's: the decoders lower their own threads for a
// while.
func ownSched() (schedState, bool, error) {
	attr, err := unix.SchedGetAttr(unix.Getpid(), 0)
	if err != nil {
		return schedState{}, false, fmt.Errorf("sched_getattr: %w", err)
	}
	return schedState{policy: attr.Policy, prio: attr.Priority, nice: attr.Nice}, attr.Flags&unix.SCHED_FLAG_RESET_ON_FORK != 0, nil
}
