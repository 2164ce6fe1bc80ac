package confine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"slices"

	criucore "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
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
// thread: a task core's old per-task fields replace the thread core's
// (cr-restore.c, check_core).
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

// seccompChecker checks each thread's filters against the spec's.
type seccompChecker struct {
	ref       []byte // runc's filter for the spec
	specAllow bool   // the spec sets SECCOMP_FILTER_FLAG_SPEC_ALLOW
	filters   []*seccomp.SeccompFilter
	same      map[uint32]bool // filter index -> equivalent to ref
}

func newSeccompChecker(imagesDir string, names []string, spec *specs.Spec, ref []byte) (*seccompChecker, error) {
	if spec.Linux == nil || spec.Linux.Seccomp == nil {
		return nil, nil
	}
	if len(ref) == 0 {
		return nil, fmt.Errorf("%w: the spec requires a seccomp profile, and the filter runc installs for it is unknown", ErrRefused)
	}
	c := &seccompChecker{ref: ref, same: map[uint32]bool{},
		specAllow: slices.Contains(spec.Linux.Seccomp.Flags, specs.LinuxSeccompFlagSpecAllow)}
	if slices.Contains(names, "seccomp.img") {
		img, err := decodeOne(filepath.Join(imagesDir, "seccomp.img"), &seccomp.SeccompEntry{})
		if err != nil {
			return nil, err
		}
		c.filters = img.Entries[0].Message.(*seccomp.SeccompEntry).GetSeccompFilters()
	}
	return c, nil
}

// check checks one thread's core.
func (c *seccompChecker) check(core *criucore.CoreEntry, name string) error {
	mode, top := effectiveSeccomp(core)
	switch mode {
	case criucore.SeccompMode_strict:
		return nil // read, write, exit and sigreturn only: stricter than any profile
	case criucore.SeccompMode_filter:
	default:
		return fmt.Errorf("%w: %s ran without seccomp, the spec requires a seccomp profile", ErrRefused, name)
	}
	found := false
	seen := map[uint32]bool{}
	for i, more := top, true; more; {
		if int(i) >= len(c.filters) || seen[i] {
			return fmt.Errorf("%w: %s: seccomp filter %d is not in seccomp.img, or its chain loops", ErrRefused, name, i)
		}
		seen[i] = true
		f := c.filters[i]
		if extra := f.GetFlags() &^ (flagTSYNC | flagLog | flagTSYNCESRCH | flagSpecAllow); extra != 0 || (f.GetFlags()&flagSpecAllow != 0 && !c.specAllow) {
			return fmt.Errorf("%w: %s: seccomp filter %d has flags %#x the spec does not set", ErrRefused, name, i, f.GetFlags())
		}
		if same, ok := c.same[i]; ok {
			found = found || same
		} else {
			same := sameFilter(f.GetFilter(), c.ref) == nil
			c.same[i] = same
			found = found || same
		}
		i, more = f.GetPrev(), f.Prev != nil
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
