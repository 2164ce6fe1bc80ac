package confine

import (
	"fmt"

	criucore "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/snapboot/snapboot/restorehook"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// Scheduling policies, as sched_setscheduler(2) numbers them.
const (
	schedOther, schedFIFO, schedRR, schedBatch, schedIdle, schedDeadline = 0, 1, 2, 3, 5, 6
	schedResetOnFork                                                     = 0x40000000
)

var schedPolicies = map[specs.LinuxSchedulerPolicy]uint32{
	specs.SchedOther: schedOther, specs.SchedFIFO: schedFIFO, specs.SchedRR: schedRR,
	specs.SchedBatch: schedBatch, specs.SchedIdle: schedIdle, specs.SchedDeadline: schedDeadline,
}

// schedState is a thread's scheduling policy (without
// SCHED_RESET_ON_FORK), real-time priority and nice value.
type schedState struct {
	policy uint32
	prio   uint32
	nice   int32
}

func isRealTime(policy uint32) bool { return policy == schedFIFO || policy == schedRR }

// schedBounds is what scheduling a cold-started thread can have. CRIU sets
// each thread's policy, real-time priority and nice value from its core
// image, as root, before it narrows the thread's capabilities: a checkpoint
// could give the app SCHED_FIFO or nice -20, which the caller's spec does
// not let it take.
type schedBounds struct {
	// start is what the cold start's process begins with: the spec's
	// scheduler, or else the shim's own, which runc passes on.
	start schedState
	// any: the spec grants CAP_SYS_NICE outside a user namespace, so the
	// app could set any of it itself.
	any bool
	// niceFloor is the lowest nice value the app could reach: the start's,
	// or lower as far as its RLIMIT_NICE lets it.
	niceFloor int32
	// rtLimit is the app's RLIMIT_RTPRIO (hard: it may raise the soft one).
	rtLimit uint64
	// niceByLimit is the lowest nice value RLIMIT_NICE lets it set.
	niceByLimit int32
}

// schedFor returns the bounds a cold start with spec has, given the
// capability sets m of the spec, the cold start's rlimits and the shim's
// own scheduling (own).
func schedFor(spec *specs.Spec, m masks, limits processLimits, own schedState) (schedBounds, error) {
	b := schedBounds{start: own}
	if spec.Process != nil && spec.Process.Scheduler != nil {
		s := spec.Process.Scheduler
		policy, ok := schedPolicies[s.Policy]
		if !ok {
			return b, fmt.Errorf("unknown scheduling policy %q in the spec", s.Policy)
		}
		b.start = schedState{policy: policy, nice: s.Nice}
		if isRealTime(policy) && s.Priority > 0 {
			b.start.prio = uint32(s.Priority)
		}
	}
	_, userns := restorehook.SpecNamespace(spec, specs.UserNamespace)
	b.any = m.prm&(1<<unix.CAP_SYS_NICE) != 0 && !userns
	// RLIMIT_NICE r lets a thread lower its nice value to 20 - r.
	r := min(limits.rlimits[unix.RLIMIT_NICE].Max, 40)
	b.niceByLimit = max(20-int32(r), -20)
	b.niceFloor = min(b.start.nice, b.niceByLimit)
	b.rtLimit = limits.rlimits[unix.RLIMIT_RTPRIO].Max
	return b, nil
}

// fit makes a thread's scheduling one its cold start could have reached,
// as the kernel's sched_setscheduler(2) and setpriority(2) would let it
// from the start: a real-time policy or priority it could not take becomes
// the start's policy, a lower nice value than it could set becomes the
// lowest it could. It reports whether it changed tc, and refuses a policy
// CRIU does not restore. A thread whose image has no policy gets
// SCHED_OTHER and nice 0 from CRIU.
func (b schedBounds) fit(tc *criucore.ThreadCoreEntry, name string) (bool, error) {
	raw := tc.GetSchedPolicy()
	s := schedState{policy: raw &^ schedResetOnFork, prio: tc.GetSchedPrio(), nice: tc.GetSchedNice()}
	switch s.policy {
	case schedOther, schedBatch, schedIdle, schedFIFO, schedRR:
	default:
		return false, fmt.Errorf("%w: %s has scheduling policy %d, which CRIU does not restore", ErrRefused, name, s.policy)
	}
	if b.any {
		return false, nil
	}
	want := s
	if isRealTime(s.policy) {
		// Another real-time policy than the start's needs an RLIMIT_RTPRIO;
		// a priority above the start's, one at least as high.
		samePolicy := s.policy == b.start.policy
		if (!samePolicy && b.rtLimit == 0) || (uint64(s.prio) > b.rtLimit && !(samePolicy && s.prio <= b.start.prio)) {
			want.policy, want.prio = b.start.policy, b.start.prio
		}
	}
	if b.start.policy == schedIdle && want.policy != schedIdle && b.start.nice < b.niceByLimit {
		// Leaving SCHED_IDLE takes the right to the nice value it has.
		want.policy, want.prio = schedIdle, 0
	}
	want.nice = max(want.nice, b.niceFloor)
	if want == s {
		return false, nil
	}
	tc.SchedPolicy = proto.Uint32(want.policy | raw&schedResetOnFork)
	tc.SchedNice = proto.Int32(want.nice)
	if isRealTime(want.policy) {
		tc.SchedPrio = proto.Uint32(want.prio)
	} else {
		tc.SchedPrio = nil
	}
	return true, nil
}

// ownSched is the calling process's scheduling, which runc passes on to a
// cold start whose spec has no scheduler.
func ownSched() (schedState, error) {
	attr, err := unix.SchedGetAttr(unix.Getpid(), 0) // the main thread: the decoders lower their own threads for a while
	if err != nil {
		return schedState{}, fmt.Errorf("sched_getattr: %w", err)
	}
	return schedState{policy: attr.Policy &^ schedResetOnFork, prio: attr.Priority, nice: attr.Nice}, nil
}
