package confine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"slices"

	criucore "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/pstree"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Seccomp. CRIU restores each thread's filters from seccomp.img; runc does
// not install the spec's. So for a spec with a seccomp profile, every
// thread must run, among its filters, the one runc installs for that
// profile on this node (the caller derives it: package seccompfilter).
// Filters the app added on top can only make it stricter: the kernel
// takes the strictest answer of all.
//
// runc's filter is not the same bytes every time: runc puts a stub in front
// of libseccomp's program that answers ENOSYS for system calls newer than
// the profile, and the order of its architectures varies from one runc
// run to the next. So two filters are taken as the same when they have
// the same instructions after a prefix, and the prefixes give the same
// outcome for every architecture and system call number (see samePrefix).

// seccompFlagsKnown are the filter flags CRIU may restore that change
// nothing for the policy (TSYNC, LOG, TSYNC_ESRCH). SPEC_ALLOW, which turns
// off the Speculative Store Bypass mitigation, is allowed only when the
// spec sets it; a listener (NEW_LISTENER) never.
const (
	flagTSYNC      = 1 << 0
	flagLog        = 1 << 1
	flagSpecAllow  = 1 << 2
	flagTSYNCESRCH = 1 << 4
)

// effectiveSeccomp is the seccomp mode and filter CRIU restores for a
// task's leader thread: the task core's old per-task fields replace the
// thread core's (cr-restore.c, check_core, which runs on leaders only).
func effectiveSeccomp(core *criucore.CoreEntry) (criucore.SeccompMode, uint32) {
	tc := core.GetThreadCore()
	mode, filter := tc.GetSeccompMode(), tc.GetSeccompFilter()
	if t := core.GetTc(); t != nil {
		if t.OldSeccompMode != nil {
			mode = t.GetOldSeccompMode()
		}
		if t.OldSeccompFilter != nil {
			filter = t.GetOldSeccompFilter()
		}
	}
	return mode, filter
}

// checkSeccomp checks, for a spec with a seccomp profile, every thread of
// every task in pstree.img against ref, the filter runc installs for the
// profile.
//
// CRIU's restorer installs each thread's chain itself, the threads at the
// same time, and takes only a negative return as a failure. A filter with
// SECCOMP_FILTER_FLAG_TSYNC that cannot be synced to another thread (one
// with filters of its own) is not installed, and the kernel returns a
// positive thread id: the thread would run on without it. So TSYNC is
// allowed only as CRIU writes it when all of a task's threads share one
// chain (try_use_tsync): on every filter of the leader's chain, with every
// other thread's seccomp off, to get the leader's filters by the sync.
// Otherwise no filter may have it, and each thread's own chain must hold
// ref.
// cores are the checkpoint's core images, decoded, by file name.
func checkSeccomp(imagesDir string, names []string, spec *specs.Spec, ref []byte, cores map[string]*criucore.CoreEntry) error {
	if spec.Linux == nil || spec.Linux.Seccomp == nil {
		return nil
	}
	if len(ref) == 0 {
		return fmt.Errorf("%w: the spec requires a seccomp profile, and the filter runc installs for it is unknown", ErrRefused)
	}
	c := &seccompChecker{ref: ref, same: map[uint32]bool{},
		specAllow: slices.Contains(spec.Linux.Seccomp.Flags, specs.LinuxSeccompFlagSpecAllow)}
	if slices.Contains(names, "seccomp.img") {
		img, err := decodeOne(filepath.Join(imagesDir, "seccomp.img"), &seccomp.SeccompEntry{})
		if err != nil {
			return err
		}
		c.filters = img.Entries[0].Message.(*seccomp.SeccompEntry).GetSeccompFilters()
	}
	tree, err := decodeImage(filepath.Join(imagesDir, "pstree.img"), &pstree.PstreeEntry{})
	if err != nil {
		return err
	}
	for _, e := range tree.Entries {
		task := e.Message.(*pstree.PstreeEntry)
		if err := c.checkTask(task, cores); err != nil {
			return err
		}
	}
	return nil
}

// seccompChecker checks threads' filters against the spec's.
type seccompChecker struct {
	ref       []byte // runc's filter for the spec
	specAllow bool   // the spec sets SECCOMP_FILTER_FLAG_SPEC_ALLOW
	filters   []*seccomp.SeccompFilter
	same      map[uint32]bool // filter index -> equivalent to ref
}

func (c *seccompChecker) checkTask(task *pstree.PstreeEntry, cores map[string]*criucore.CoreEntry) error {
	pid := task.GetPid()
	leaderName := fmt.Sprintf("core-%d.img", pid)
	leader := cores[leaderName]
	if leader == nil {
		return fmt.Errorf("%w: pstree.img names a task without a core image (%s)", ErrRefused, leaderName)
	}
	if isZombie(leader) {
		return nil // it runs nothing
	}
	mode, top := effectiveSeccomp(leader)
	chain, err := c.chain(mode, top, leaderName)
	if err != nil {
		return err
	}
	type thread struct {
		name string
		mode criucore.SeccompMode
		top  uint32
	}
	var others []thread
	othersOff := true
	for _, tid := range task.GetThreads() {
		if tid == pid {
			continue
		}
		name := fmt.Sprintf("core-%d.img", tid)
		core := cores[name]
		if core == nil {
			return fmt.Errorf("%w: pstree.img names a thread without a core image (%s)", ErrRefused, name)
		}
		if core.GetTc() != nil {
			// CRIU refuses a thread with task fields; its old seccomp
			// fields would apply to no thread.
			return fmt.Errorf("%w: %s, a thread, has task fields", ErrRefused, name)
		}
		tc := core.GetThreadCore()
		others = append(others, thread{name, tc.GetSeccompMode(), tc.GetSeccompFilter()})
		othersOff = othersOff && tc.GetSeccompMode() == criucore.SeccompMode_disabled
	}
	if len(others) == 0 {
		// No thread to sync: TSYNC cannot fail.
		return c.checkChainOf(mode, top, leaderName, true)
	}
	if othersOff {
		// CRIU's shared chain: the leader's installs sync the others,
		// which then run the leader's filters, if every one syncs.
		for _, i := range chain {
			if c.filters[i].GetFlags()&flagTSYNC == 0 {
				return fmt.Errorf("%w: %s ran without seccomp (the leader's filter %d would not be synced to it), the spec requires a seccomp profile", ErrRefused, others[0].name, i)
			}
		}
		if len(chain) == 0 {
			return fmt.Errorf("%w: %s ran without seccomp, the spec requires a seccomp profile", ErrRefused, others[0].name)
		}
		return c.checkChainOf(mode, top, leaderName, true)
	}
	if err := c.checkChainOf(mode, top, leaderName, false); err != nil {
		return err
	}
	for _, t := range others {
		if err := c.checkChainOf(t.mode, t.top, t.name, false); err != nil {
			return err
		}
	}
	return nil
}

// chain returns the filter indexes a thread installs, top first.
func (c *seccompChecker) chain(mode criucore.SeccompMode, top uint32, name string) ([]uint32, error) {
	if mode != criucore.SeccompMode_filter {
		return nil, nil
	}
	var out []uint32
	seen := map[uint32]bool{}
	for i, more := top, true; more; {
		if int(i) >= len(c.filters) || seen[i] {
			return nil, fmt.Errorf("%w: %s: seccomp filter %d is not in seccomp.img, or its chain loops", ErrRefused, name, i)
		}
		seen[i] = true
		out = append(out, i)
		f := c.filters[i]
		i, more = f.GetPrev(), f.Prev != nil
	}
	return out, nil
}

// checkChainOf checks one thread's chain: its mode, its flags (TSYNC only
// where tsyncOK), and that it holds ref.
func (c *seccompChecker) checkChainOf(mode criucore.SeccompMode, top uint32, name string, tsyncOK bool) error {
	switch mode {
	case criucore.SeccompMode_strict:
		return nil // read, write, exit and sigreturn only: stricter than any profile
	case criucore.SeccompMode_filter:
	default:
		return fmt.Errorf("%w: %s ran without seccomp, the spec requires a seccomp profile", ErrRefused, name)
	}
	chain, err := c.chain(mode, top, name)
	if err != nil {
		return err
	}
	allowed := uint32(flagLog | flagTSYNCESRCH)
	if tsyncOK {
		allowed |= flagTSYNC
	}
	if c.specAllow {
		allowed |= flagSpecAllow
	}
	found := false
	for _, i := range chain {
		f := c.filters[i]
		if f.GetFlags()&^allowed != 0 {
			return fmt.Errorf("%w: %s: seccomp filter %d has flags %#x that the spec does not set, or that could leave a thread without it", ErrRefused, name, i, f.GetFlags())
		}
		same, ok := c.same[i]
		if !ok {
			same = sameFilter(f.GetFilter(), c.ref) == nil
			c.same[i] = same
		}
		found = found || same
	}
	if !found {
		err := sameFilter(c.filters[top].GetFilter(), c.ref)
		return fmt.Errorf("%w: %s does not run the seccomp filter runc installs for the spec's profile on this node (%v)", ErrRefused, name, err)
	}
	return nil
}

// sameFilter returns nil if img gives the same answer as ref for every
// system call: the same instructions from some index on, and before it
// prefixes of runc's stub that agree (samePrefix).
func sameFilter(img, ref []byte) error {
	if len(img) != len(ref) || len(img)%8 != 0 {
		return fmt.Errorf("%d instructions, want %d", len(img)/8, len(ref)/8)
	}
	n := len(ref) / 8
	diff := -1 // the last instruction that differs
	for i := n - 1; i >= 0; i-- {
		if string(img[i*8:i*8+8]) != string(ref[i*8:i*8+8]) {
			diff = i
			break
		}
	}
	if diff < 0 {
		return nil
	}
	if diff >= maxPrefix {
		return fmt.Errorf("instruction %d differs", diff)
	}
	return samePrefix(decodeInsns(img), decodeInsns(ref), diff+1)
}

// maxPrefix bounds the prefix compared by outcome: runc's stub is a dozen
// instructions or so per architecture.
const maxPrefix = 128

type insn struct {
	code   uint16
	jt, jf uint8
	k      uint32
}

func decodeInsns(b []byte) []insn {
	out := make([]insn, len(b)/8)
	for i := range out {
		out[i] = insn{code: binary.NativeEndian.Uint16(b[i*8:]), jt: b[i*8+2], jf: b[i*8+3], k: binary.NativeEndian.Uint32(b[i*8+4:])}
	}
	return out
}

// seccomp_data offsets the prefix may load.
const (
	offNr   = 0
	offArch = 4
)

// outcome is where a prefix leaves a system call: an answer (ret), or an
// instruction of the common rest (at) with the accumulator holding one of
// the words of seccomp_data, or nothing loaded (-1).
type outcome struct {
	ret    bool
	k      uint32 // the answer
	at     int
	loaded int
}

var errNotStub = errors.New("the differing instructions are not a stub of architecture and system call number checks")

// samePrefix compares the first n instructions of a and b, whose rest is
// the same, by outcome. The prefixes may only load the system call number
// or the architecture, compare them with constants (==, >, >=, and a test
// of one of the two top bits), jump forward and answer. The constants split
// each word into ranges in which every comparison of both prefixes comes
// out the same, and the prefixes are run on the first value of each range,
// for every pair of ranges of the two words: together, every input.
func samePrefix(a, b []insn, n int) error {
	points := []uint32{0}
	for _, prog := range [][]insn{a, b} {
		p, err := stubPoints(prog[:n])
		if err != nil {
			return err
		}
		points = append(points, p...)
	}
	slices.Sort(points)
	points = slices.Compact(points)
	for _, arch := range points {
		for _, nr := range points {
			oa, err := runPrefix(a, n, nr, arch)
			if err != nil {
				return err
			}
			ob, err := runPrefix(b, n, nr, arch)
			if err != nil {
				return err
			}
			if oa != ob {
				return fmt.Errorf("architecture %#x, system call %d: %+v against runc's %+v", arch, nr, oa, ob)
			}
		}
	}
	return nil
}

// stubPoints checks that prog uses only the instructions a stub may, and
// returns where its comparisons split a word: for each constant c, the
// ranges start at c and c+1 (or, for a bit test, at each multiple of the
// bit). Both words get every point: a jump may reach a comparison with
// either word loaded.
func stubPoints(prog []insn) ([]uint32, error) {
	var points []uint32
	for _, in := range prog {
		switch in.code {
		case unix.BPF_LD | unix.BPF_W | unix.BPF_ABS:
			if in.k != offNr && in.k != offArch {
				return nil, errNotStub
			}
		case unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, unix.BPF_JMP | unix.BPF_JGT | unix.BPF_K, unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K:
			points = append(points, in.k, in.k+1)
		case unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K:
			if in.k != 1<<30 && in.k != 1<<31 {
				return nil, errNotStub
			}
			for v := uint64(in.k); v < 1<<32; v += uint64(in.k) {
				points = append(points, uint32(v))
			}
		case unix.BPF_JMP | unix.BPF_JA, unix.BPF_RET | unix.BPF_K:
		default:
			return nil, errNotStub
		}
	}
	return points, nil
}

// runPrefix runs prog from its start until it answers or reaches
// instruction n, on a system call number and architecture.
func runPrefix(prog []insn, n int, nr, arch uint32) (outcome, error) {
	var acc uint32
	loaded := -1 // nothing loaded: the accumulator is 0
	pc := 0
	for steps := 0; pc < n; steps++ {
		if steps > n {
			return outcome{}, errNotStub
		}
		in := prog[pc]
		pc++
		switch in.code {
		case unix.BPF_LD | unix.BPF_W | unix.BPF_ABS:
			loaded = int(in.k)
			if in.k == offNr {
				acc = nr
			} else {
				acc = arch
			}
		case unix.BPF_JMP | unix.BPF_JA:
			pc += int(in.k)
		case unix.BPF_RET | unix.BPF_K:
			return outcome{ret: true, k: in.k, at: -1, loaded: -1}, nil
		default:
			var taken bool
			switch in.code {
			case unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K:
				taken = acc == in.k
			case unix.BPF_JMP | unix.BPF_JGT | unix.BPF_K:
				taken = acc > in.k
			case unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K:
				taken = acc >= in.k
			case unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K:
				taken = acc&in.k != 0
			default:
				return outcome{}, errNotStub
			}
			if taken {
				pc += int(in.jt)
			} else {
				pc += int(in.jf)
			}
		}
	}
	// Into the common rest: its jumps are the same for every input, and a
	// stub may end on one of them, or on an answer of the rest.
	for steps := 0; pc < len(prog) && steps < maxPrefix; steps++ {
		switch in := prog[pc]; in.code {
		case unix.BPF_JMP | unix.BPF_JA:
			pc += 1 + int(in.k)
			continue
		case unix.BPF_RET | unix.BPF_K:
			return outcome{ret: true, k: in.k, at: -1, loaded: -1}, nil
		}
		return outcome{at: pc, loaded: loaded}, nil
	}
	return outcome{}, errNotStub
}
