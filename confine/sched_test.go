package confine

import (
	"errors"
	"path/filepath"
	"testing"

	criucore "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// withSched sets a thread's scheduling in its core image.
func withSched(policy uint32, prio uint32, nice int32) func(*criucore.CoreEntry) {
	return func(c *criucore.CoreEntry) {
		c.ThreadCore.SchedPolicy, c.ThreadCore.SchedNice = proto.Uint32(policy), proto.Int32(nice)
		if prio > 0 {
			c.ThreadCore.SchedPrio = proto.Uint32(prio)
		}
	}
}

// applied applies s to the images in imgs, and returns the result and the
// first task's core image as it will be restored.
func applied(t *testing.T, imgs string, s *specs.Spec) (*Result, *criucore.CoreEntry) {
	t.Helper()
	res, err := apply(imgs, t.TempDir(), s, plainHost, onHost)
	if err != nil {
		t.Fatal(err)
	}
	_, core, err := decodeCore(filepath.Join(res.ImagesDir, "core-1.img"))
	if err != nil {
		t.Fatal(err)
	}
	return res, core
}

func TestSchedulingFitsTheSpec(t *testing.T) {
	nice := func(s *specs.Spec, soft uint64) {
		s.Process.Rlimits = append(s.Process.Rlimits, specs.POSIXRlimit{Type: "RLIMIT_NICE", Soft: soft, Hard: soft})
	}
	rtprio := func(s *specs.Spec, limit uint64) {
		s.Process.Rlimits = append(s.Process.Rlimits, specs.POSIXRlimit{Type: "RLIMIT_RTPRIO", Soft: limit, Hard: limit})
	}
	for _, c := range []struct {
		name  string
		image func(*criucore.CoreEntry) // nil: no scheduling in the image
		caps  []string
		specs func(*specs.Spec)
		want  schedState // what the restored thread gets
		reset bool       // SCHED_RESET_ON_FORK kept
	}{
		{name: "real-time without a right to it", image: withSched(unix.SCHED_FIFO, 50, 0),
			want: schedState{policy: unix.SCHED_NORMAL}},
		{name: "a lower nice value than the limit allows", image: withSched(unix.SCHED_NORMAL, 0, -10),
			want: schedState{policy: unix.SCHED_NORMAL, nice: 0}},
		{name: "nice down to the limit", image: withSched(unix.SCHED_BATCH, 0, -10), specs: func(s *specs.Spec) { nice(s, 25) },
			want: schedState{policy: unix.SCHED_BATCH, nice: -5}},
		{name: "a higher nice value is the app's own", image: withSched(unix.SCHED_NORMAL, 0, 7),
			want: schedState{policy: unix.SCHED_NORMAL, nice: 7}},
		{name: "SCHED_IDLE is anyone's", image: withSched(unix.SCHED_IDLE, 0, 3),
			want: schedState{policy: unix.SCHED_IDLE, nice: 3}},
		{name: "CAP_SYS_NICE lets it keep anything", image: withSched(unix.SCHED_RR, 99, -20), caps: []string{"CAP_SYS_NICE"},
			want: schedState{policy: unix.SCHED_RR, prio: 99, nice: -20}},
		{name: "real-time within RLIMIT_RTPRIO", image: withSched(unix.SCHED_FIFO, 10, 0), specs: func(s *specs.Spec) { rtprio(s, 20) },
			want: schedState{policy: unix.SCHED_FIFO, prio: 10}},
		{name: "real-time above RLIMIT_RTPRIO", image: withSched(unix.SCHED_FIFO, 30, 0), specs: func(s *specs.Spec) { rtprio(s, 20) },
			want: schedState{policy: unix.SCHED_NORMAL}},
		{name: "the spec's real-time scheduler", image: withSched(unix.SCHED_FIFO, 40, 0),
			specs: func(s *specs.Spec) { s.Process.Scheduler = &specs.Scheduler{Policy: specs.SchedFIFO, Priority: 40} },
			want:  schedState{policy: unix.SCHED_FIFO, prio: 40}},
		{name: "a lower priority of the spec's policy", image: withSched(unix.SCHED_FIFO, 10, 0),
			specs: func(s *specs.Spec) { s.Process.Scheduler = &specs.Scheduler{Policy: specs.SchedFIFO, Priority: 40} },
			want:  schedState{policy: unix.SCHED_FIFO, prio: 10}},
		{name: "another real-time policy than the spec's", image: withSched(unix.SCHED_RR, 40, 0),
			specs: func(s *specs.Spec) { s.Process.Scheduler = &specs.Scheduler{Policy: specs.SchedFIFO, Priority: 40} },
			want:  schedState{policy: unix.SCHED_FIFO, prio: 40}},
		{name: "the spec's nice value", image: withSched(unix.SCHED_NORMAL, 0, 0),
			specs: func(s *specs.Spec) { s.Process.Scheduler = &specs.Scheduler{Policy: specs.SchedOther, Nice: 10} },
			want:  schedState{policy: unix.SCHED_NORMAL, nice: 10}},
		{name: "no scheduling in the image, the spec's nice value", image: nil,
			specs: func(s *specs.Spec) { s.Process.Scheduler = &specs.Scheduler{Policy: specs.SchedOther, Nice: 10} },
			want:  schedState{policy: unix.SCHED_NORMAL, nice: 10}},
		{name: "out of the spec's SCHED_IDLE", image: withSched(unix.SCHED_NORMAL, 0, 0),
			specs: func(s *specs.Spec) { s.Process.Scheduler = &specs.Scheduler{Policy: specs.SchedIdle} },
			want:  schedState{policy: unix.SCHED_IDLE}},
		{name: "SCHED_RESET_ON_FORK stays", image: withSched(unix.SCHED_FIFO|unix.SCHED_RESET_ON_FORK, 50, 0),
			want: schedState{policy: unix.SCHED_NORMAL}, reset: true},
		{name: "a real-time spec's nice value is not the start's", image: withSched(unix.SCHED_NORMAL, 0, -20),
			specs: func(s *specs.Spec) {
				s.Process.Scheduler = &specs.Scheduler{Policy: specs.SchedFIFO, Priority: 40, Nice: -20}
			},
			want: schedState{policy: unix.SCHED_NORMAL, nice: 0}},
		{name: "the spec's nice value, clamped as the kernel does", image: withSched(unix.SCHED_IDLE, 0, 19),
			specs: func(s *specs.Spec) { s.Process.Scheduler = &specs.Scheduler{Policy: specs.SchedIdle, Nice: 25} },
			want:  schedState{policy: unix.SCHED_IDLE, nice: 19}},
		{name: "another real-time policy at the spec's priority or below, with RLIMIT_RTPRIO", image: withSched(unix.SCHED_RR, 30, 0),
			specs: func(s *specs.Spec) {
				s.Process.Scheduler = &specs.Scheduler{Policy: specs.SchedFIFO, Priority: 40}
				rtprio(s, 10)
			},
			want: schedState{policy: unix.SCHED_RR, prio: 30}},
		{name: "out of the spec's SCHED_IDLE with RLIMIT_NICE", image: withSched(unix.SCHED_NORMAL, 0, 15),
			specs: func(s *specs.Spec) {
				s.Process.Scheduler = &specs.Scheduler{Policy: specs.SchedIdle}
				nice(s, 5)
			},
			want: schedState{policy: unix.SCHED_NORMAL, nice: 15}},
		{name: "out of the spec's SCHED_IDLE, below RLIMIT_NICE", image: withSched(unix.SCHED_NORMAL, 0, 0),
			specs: func(s *specs.Spec) {
				s.Process.Scheduler = &specs.Scheduler{Policy: specs.SchedIdle}
				nice(s, 5)
			},
			want: schedState{policy: unix.SCHED_NORMAL, nice: 15}},
		{name: "the spec's SCHED_RESET_ON_FORK bounds every thread by the reset state", image: withSched(unix.SCHED_FIFO, 40, 0),
			specs: func(s *specs.Spec) {
				s.Process.Scheduler = &specs.Scheduler{Policy: specs.SchedFIFO, Priority: 40, Flags: []specs.LinuxSchedulerFlag{specs.SchedFlagResetOnFork}}
			},
			want: schedState{policy: unix.SCHED_NORMAL}},
		{name: "SCHED_FLAG_KEEP_POLICY keeps the shim's policy", image: withSched(unix.SCHED_FIFO, 40, 0),
			specs: func(s *specs.Spec) {
				s.Process.Scheduler = &specs.Scheduler{Policy: specs.SchedFIFO, Priority: 40, Flags: []specs.LinuxSchedulerFlag{specs.SchedFlagKeepPolicy}}
			},
			want: schedState{policy: unix.SCHED_NORMAL}},
		{name: "CAP_SYS_RESOURCE raises the limits", image: withSched(unix.SCHED_FIFO, 40, -10), caps: []string{"CAP_SYS_RESOURCE"},
			want: schedState{policy: unix.SCHED_FIFO, prio: 40, nice: -10}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := spec(0, c.caps, false)
			nice(s, 0) // the defaults of a root shell, whatever the test's are
			rtprio(s, 0)
			if c.specs != nil {
				c.specs(s)
			}
			imgs := writeImages(t, task{edit: c.image})
			res, core := applied(t, imgs, s)
			tc := core.GetThreadCore()
			got := schedState{policy: tc.GetSchedPolicy() &^ unix.SCHED_RESET_ON_FORK, prio: tc.GetSchedPrio(), nice: tc.GetSchedNice()}
			if got != c.want {
				t.Errorf("restored as %+v, want %+v", got, c.want)
			}
			if reset := tc.GetSchedPolicy()&unix.SCHED_RESET_ON_FORK != 0; reset != c.reset {
				t.Errorf("SCHED_RESET_ON_FORK %v, want %v", reset, c.reset)
			}
			// A thread that fits keeps its image.
			var image schedState
			if c.image != nil {
				probe := &criucore.CoreEntry{ThreadCore: &criucore.ThreadCoreEntry{}}
				c.image(probe)
				image = schedState{policy: probe.ThreadCore.GetSchedPolicy() &^ unix.SCHED_RESET_ON_FORK, prio: probe.ThreadCore.GetSchedPrio(), nice: probe.ThreadCore.GetSchedNice()}
			}
			if rewritten := res.ImagesDir != imgs; rewritten != (image != c.want) {
				t.Errorf("images rewritten: %v; the image's %+v, restored as %+v", rewritten, image, c.want)
			}
		})
	}
}

func TestSysNiceInAUserNamespaceDoesNotCount(t *testing.T) {
	s := spec(0, []string{"CAP_SYS_NICE"}, false)
	s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace})
	m, err := specMasks(s)
	if err != nil {
		t.Fatal(err)
	}
	limits, err := limitsFor(s, plainHost)
	if err != nil {
		t.Fatal(err)
	}
	b, err := schedFor(s, m, limits, schedState{}, false)
	if err != nil {
		t.Fatal(err)
	}
	tc := &criucore.ThreadCoreEntry{}
	withSched(unix.SCHED_RR, 99, -20)(&criucore.CoreEntry{ThreadCore: tc})
	changed, err := b.fit(tc, "core-1.img")
	if err != nil || !changed || tc.GetSchedPolicy() != unix.SCHED_NORMAL {
		t.Fatalf("changed %v, policy %d, %v: want SCHED_OTHER", changed, tc.GetSchedPolicy(), err)
	}
}

func TestSchedulingPolicyCRIUDoesNotRestore(t *testing.T) {
	imgs := writeImages(t, task{edit: withSched(unix.SCHED_DEADLINE, 0, 0)})
	_, err := apply(imgs, t.TempDir(), spec(0, []string{"CAP_SYS_NICE"}, false), plainHost, onHost)
	if !errors.Is(err, ErrRefused) {
		t.Fatalf("SCHED_DEADLINE in the image: %v, want a refusal", err)
	}
	for _, policy := range []specs.LinuxSchedulerPolicy{specs.SchedDeadline, "SCHED_ISO"} {
		s := spec(0, nil, false)
		s.Process.Scheduler = &specs.Scheduler{Policy: policy}
		_, err := apply(writeImages(t, task{}), t.TempDir(), s, plainHost, onHost)
		if !errors.Is(err, ErrRefused) {
			t.Errorf("%s in the spec: %v, want a refusal", policy, err)
		}
	}
}

func TestLoginuidIsTheColdStarts(t *testing.T) {
	userns := func(s *specs.Spec) {
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace})
	}
	for _, c := range []struct {
		name        string
		image, host uint32 // invalidUID: unset
		noneInImage bool
		specs       func(*specs.Spec)
		want        uint32
		changed     bool
	}{
		{name: "another user than the shim's", image: 1000, host: invalidUID, want: invalidUID, changed: true},
		{name: "root, the shim's unset", image: 0, host: invalidUID, want: invalidUID, changed: true},
		{name: "the shim's", image: 1000, host: 1000, want: 1000},
		{name: "unset where the shim's is set", image: invalidUID, host: 1000, want: 1000, changed: true},
		{name: "none in the image where the shim's is set", noneInImage: true, host: 1000, want: 1000, changed: true},
		{name: "none in the image, the shim's unset", noneInImage: true, host: invalidUID, want: invalidUID},
		{name: "a user namespace", image: 1000, host: invalidUID, specs: userns, want: invalidUID, changed: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := spec(0, nil, false)
			if c.specs != nil {
				c.specs(s)
			}
			host := plainHost
			host.loginuid = c.host
			limits, err := limitsFor(s, host)
			if err != nil {
				t.Fatal(err)
			}
			tc := shimLimitsLeader(t)
			if !c.noneInImage {
				tc.Loginuid = proto.Uint32(c.image)
			}
			if changed := limits.fitTask(tc); changed != c.changed {
				t.Errorf("changed: %v, want %v", changed, c.changed)
			}
			got := invalidUID
			if tc.Loginuid != nil {
				got = tc.GetLoginuid()
			}
			if got != c.want {
				t.Errorf("loginuid %d, want %d", got, c.want)
			}
		})
	}
}

// A cold start in a user namespace inherits the shim's loginuid, which
// the restore cannot give it.
func TestLoginuidWithUserNamespace(t *testing.T) {
	s := spec(0, nil, false)
	s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace})
	host := plainHost
	host.loginuid = 1000
	if _, err := limitsFor(s, host); !errors.Is(err, ErrRefused) {
		t.Fatalf("%v, want a refusal", err)
	}
}
