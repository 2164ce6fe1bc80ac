// Package confine makes a checkpoint's process tree fit the restoring
// container's spec. runc builds the container's cgroups and device rules
// from the spec, but CRIU restores the rest from the images: every task's
// credentials, seccomp state, limits, scheduling and audit login uid,
// which namespaces it gets, which cgroups it joins, the whole mount tree,
// and every file and socket, which CRIU makes as root. Before runc
// restores, confine narrows each task's capability sets, limits and
// scheduling to what the spec grants, and refuses a checkpoint whose tasks
// ran as root for a non-root spec, ran without the seccomp filter runc
// installs for the spec's profile, would stay in a host namespace the spec
// replaces or in a cgroup outside the container's, whose mount tree holds
// a mount the spec does not grant or lacks a masked or read-only path the
// spec sets, whose files take a privilege the spec does not grant or
// would be made by CRIU outside the container, or whose locked memory or
// pipe buffers exceed what the kernel lets the cold start have.
package confine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/creds"
	criucore "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/mnt"
	containerdcap "github.com/containerd/containerd/v2/pkg/cap"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// ErrRefused is wrapped when a checkpoint can't be made to fit the spec.
var ErrRefused = errors.New("checkpoint exceeds what the container's spec grants")

// Result says what Apply did.
type Result struct {
	// ImagesDir is the directory runc should restore from: the original one
	// when nothing had to change, otherwise a per-container copy (hard links
	// to the unchanged images, rewritten core images).
	ImagesDir string
	Tasks     int // core images checked
	Narrowed  int // tasks whose capabilities were narrowed
	// External are external mounts the CRIU config must add (values of
	// CRIU's --external): see rebindCgroups.
	External []string
}

// masks are the spec's capability sets as bitmaps.
type masks struct{ eff, prm, inh, bnd, amb uint64 }

func capMask(names []string) (uint64, error) {
	known := containerdcap.Known()
	var m uint64
	for _, n := range names {
		found := false
		for i, k := range known {
			if strings.EqualFold(k, n) {
				m |= 1 << uint(i)
				found = true
				break
			}
		}
		if !found {
			return 0, fmt.Errorf("unknown capability %q in the spec", n)
		}
	}
	return m, nil
}

func specMasks(spec *specs.Spec) (masks, error) {
	var m masks
	if spec.Process == nil || spec.Process.Capabilities == nil {
		return m, nil // no capabilities at all
	}
	c := spec.Process.Capabilities
	var err error
	for _, x := range []struct {
		dst   *uint64
		names []string
	}{{&m.eff, c.Effective}, {&m.prm, c.Permitted}, {&m.inh, c.Inheritable}, {&m.bnd, c.Bounding}, {&m.amb, c.Ambient}} {
		if *x.dst, err = capMask(x.names); err != nil {
			return m, err
		}
	}
	return m, nil
}

func words(w []uint32) uint64 {
	var v uint64
	for i, x := range w {
		if i > 1 {
			break
		}
		v |= uint64(x) << (32 * uint(i))
	}
	return v
}

func setWords(w []uint32, v uint64) []uint32 {
	if len(w) == 0 {
		return w
	}
	out := make([]uint32, len(w))
	out[0] = uint32(v)
	if len(w) > 1 {
		out[1] = uint32(v >> 32)
	}
	return out
}

// Apply checks every core image in imagesDir against spec. When
// capabilities, rlimits, oom_score_adj, scheduling or the loginuid must be
// narrowed, it writes a
// per-container image directory into workDir (which must exist, on the
// same filesystem as imagesDir for the hard links) and returns it.
// seccompFilter is the filter runc installs on this node for the spec's
// seccomp profile (package seccompfilter); nil if the spec has none.
// rootLayers are the directories of the container's root file system,
// topmost first, as its mounts stack them (see remaps.check). tcpRepair:
// the restore keeps established TCP connections (tcp-established).
func Apply(imagesDir, workDir string, spec *specs.Spec, seccompFilter []byte, rootLayers []string, tcpRepair bool) (*Result, error) {
	host, err := readHostState()
	if err != nil {
		return nil, err
	}
	host.seccompFilter = seccompFilter
	host.rootLayers = rootLayers
	host.tcpRepair = tcpRepair
	return apply(imagesDir, workDir, spec, host, hostHas)
}

func apply(imagesDir, workDir string, spec *specs.Spec, host hostState, hostHas func(string) bool) (*Result, error) {
	if err := checkIDMappedMounts(spec); err != nil {
		return nil, err
	}
	m, err := specMasks(spec)
	if err != nil {
		return nil, err
	}
	limits, err := limitsFor(spec, host)
	if err != nil {
		return nil, err
	}
	sched, err := schedFor(spec, m, limits, host.sched, host.schedResetOnFork)
	if err != nil {
		return nil, err
	}
	var user specs.User
	if spec.Process != nil {
		user = spec.Process.User
	}
	// Without CAP_SETUID or CAP_SETGID, a cold-started process keeps the
	// spec's ids.
	anyUID, anyGID := m.bnd&(1<<unix.CAP_SETUID) != 0, m.bnd&(1<<unix.CAP_SETGID) != 0

	ents, err := os.ReadDir(imagesDir)
	if err != nil {
		return nil, err
	}
	var cores, names []string
	for _, e := range ents {
		names = append(names, e.Name())
		switch name := e.Name(); {
		case strings.HasPrefix(name, "core-") && strings.HasSuffix(name, ".img"):
			cores = append(cores, filepath.Join(imagesDir, name))
		case name == "apparmor.img":
			// CRIU would load the AppArmor policy in it into the kernel.
			return nil, fmt.Errorf("%w: the checkpoint holds AppArmor policy (apparmor.img), which CRIU would load", ErrRefused)
		case strings.HasPrefix(name, "creds-") && strings.HasSuffix(name, ".img"):
			// CRIU takes a task's credentials from a separate creds image
			// (the image format before CRIU 1.x) when its core image has
			// none; that image would escape every check below.
			return nil, fmt.Errorf("%w: the checkpoint has a separate credentials image (%s), which CRIU would restore unchecked", ErrRefused, name)
		}
	}
	if len(cores) == 0 {
		return nil, fmt.Errorf("%w: no core images in the checkpoint", ErrRefused)
	}
	if err := checkNamespaces(imagesDir, names, spec); err != nil {
		return nil, err
	}
	if err := checkNodePIDs(spec, m); err != nil {
		return nil, err
	}
	mountImages, err := checkMounts(imagesDir, names, spec, hostHas)
	if err != nil {
		return nil, err
	}
	var nodeCgroups map[string]bool
	if host.cgroupNames != nil {
		nodeCgroups = host.cgroupNames()
	}
	if err := checkCgroups(imagesDir, names, spec, nodeCgroups); err != nil {
		return nil, err
	}
	images := make([]*crit.CriuImage, len(cores))
	decoded := map[string]*criucore.CoreEntry{}
	for i, path := range cores {
		img, core, err := decodeCore(path)
		if err != nil {
			return nil, err
		}
		images[i], decoded[filepath.Base(path)] = img, core
	}
	if err := checkSeccomp(imagesDir, names, spec, host.seccompFilter, decoded); err != nil {
		return nil, err
	}
	res := &Result{ImagesDir: imagesDir}
	rewritten := map[string]*crit.CriuImage{}
	taskUIDs := map[uint32]bool{}
	caps, nodeCaps := grantedCaps(spec, m)
	wakeAlarm := nodeCaps && caps&(1<<unix.CAP_WAKE_ALARM) != 0
	for i, path := range cores {
		img, name := images[i], filepath.Base(path)
		core := decoded[name]
		res.Tasks++
		if isZombie(core) {
			continue // CRIU makes it exit at once, with nothing of the image but its name and exit code
		}
		tc := core.GetThreadCore()
		cr := tc.GetCreds()
		if cr == nil {
			return nil, fmt.Errorf("%w: %s has no credentials; CRIU would take them from elsewhere, unchecked", ErrRefused, name)
		}
		if err := checkIDs(cr, name, user, anyUID, anyGID); err != nil {
			return nil, err
		}
		for _, id := range []uint32{cr.GetUid(), cr.GetEuid(), cr.GetSuid(), cr.GetFsuid()} {
			taskUIDs[id] = true
		}
		if err := checkAlarmTimers(core, name, wakeAlarm); err != nil {
			return nil, err
		}
		if tc := core.GetTc(); tc != nil && len(tc.GetRlimits().GetRlimits()) < len(rlimitNames) {
			// CRIU leaves the missing ones as its own: NOFILE raised.
			return nil, fmt.Errorf("%w: %s has %d rlimits, want %d", ErrRefused, name, len(tc.GetRlimits().GetRlimits()), len(rlimitNames))
		}
		changed := limits.fitTask(core.GetTc())
		changed = limits.fitLSM(cr) || changed
		fitted, err := sched.fit(tc, name)
		if err != nil {
			return nil, err
		}
		changed = fitted || changed
		if spec.Process != nil && spec.Process.NoNewPrivileges && !noNewPrivs(cr) {
			// A donor without it could gain privileges through a setuid
			// program of its image where a cold start could not.
			setNoNewPrivs(cr)
			changed = true
		}
		eff, prm, inh, bnd := words(cr.CapEff), words(cr.CapPrm), words(cr.CapInh), words(cr.CapBnd)
		changed = narrowAmbient(cr, m.amb) || changed
		if eff&^m.eff != 0 || prm&^m.prm != 0 || inh&^m.inh != 0 || bnd&^m.bnd != 0 {
			cr.CapEff = setWords(cr.CapEff, eff&m.eff)
			cr.CapPrm = setWords(cr.CapPrm, prm&m.prm)
			cr.CapInh = setWords(cr.CapInh, inh&m.inh)
			cr.CapBnd = setWords(cr.CapBnd, bnd&m.bnd)
			changed = true
		}
		if changed {
			rewritten[name] = img
			res.Narrowed++
		}
	}
	// After the tasks' own checks, which name the first thing wrong.
	var mountEntries []*mnt.MntEntry
	for _, img := range mountImages {
		for _, e := range img.Entries {
			mountEntries = append(mountEntries, e.Message.(*mnt.MntEntry))
		}
	}
	net := netSpecFor(spec, host.netSysctl)
	net.tcpRepair = host.tcpRepair
	if err := checkFiles(imagesDir, names, spec, m, net, mountEntries, host.rootLayers, taskUIDs); err != nil {
		return nil, err
	}
	if err := checkLockedMemory(imagesDir, names, limits.rlimits[unix.RLIMIT_MEMLOCK], nodeCaps && caps&(1<<unix.CAP_IPC_LOCK) != 0); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	maxSize := host.pipeMaxSize
	if maxSize == nil {
		maxSize = pipeMaxSize
	}
	if err := checkPipeSizes(imagesDir, names, maxSize, nodeCaps && caps&(1<<unix.CAP_SYS_RESOURCE) != 0); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	mounts, external, err := rebindCgroups(mountImages, spec, host.cgroupHierarchies)
	if err != nil {
		return nil, err
	}
	for name, img := range mounts {
		rewritten[name] = img
	}
	conntrack, err := emptyConntrack(imagesDir, names, spec, m, net.capsCount)
	if err != nil {
		return nil, err
	}
	for name, img := range conntrack {
		rewritten[name] = img
	}
	if err := checkInventory(imagesDir, names); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	if err := checkDescriptors(imagesDir, names); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	for _, name := range names {
		// CRIU's old format, read for a core image without timers: past
		// checkAlarmTimers.
		if strings.HasPrefix(name, "posix-timers-") {
			return nil, fmt.Errorf("%w: the checkpoint has timers in CRIU's old format (%s)", ErrRefused, name)
		}
	}
	cgroupImage, err := stripCgroupSettings(imagesDir, names)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	for name, img := range cgroupImage {
		rewritten[name] = img
	}
	ipcVars, err := fitIPCSysctls(imagesDir, names, spec, host.ipcSysctls)
	if err != nil {
		return nil, err
	}
	for name, img := range ipcVars {
		rewritten[name] = img
	}
	utsNames, err := fitUTSNames(imagesDir, names, spec, host.utsNames)
	if err != nil {
		return nil, err
	}
	for name, img := range utsNames {
		rewritten[name] = img
	}
	res.External = external
	if len(rewritten) == 0 {
		return res, nil
	}
	dir, err := os.MkdirTemp(workDir, "images-")
	if err != nil {
		return nil, err
	}
	if err := populate(imagesDir, dir, rewritten); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	res.ImagesDir = dir
	return res, nil
}

// checkIDs refuses a thread that ran as root for a non-root spec, or, where
// the spec's capabilities could not change them, with other user or group
// ids than the spec's.
func checkIDs(cr *creds.CredsEntry, name string, user specs.User, anyUID, anyGID bool) error {
	uids := []uint32{cr.GetUid(), cr.GetEuid(), cr.GetSuid(), cr.GetFsuid()}
	for _, id := range uids {
		if user.UID != 0 && id == 0 {
			return fmt.Errorf("%w: %s ran as root, the spec's user is %d", ErrRefused, name, user.UID)
		}
		if !anyUID && id != user.UID {
			return fmt.Errorf("%w: %s ran as user %d, the spec's user is %d", ErrRefused, name, id, user.UID)
		}
	}
	gids := []uint32{cr.GetGid(), cr.GetEgid(), cr.GetSgid(), cr.GetFsgid()}
	if user.GID != 0 && !contains(user.AdditionalGids, 0) && (contains(gids, 0) || contains(cr.GetGroups(), 0)) {
		return fmt.Errorf("%w: %s had group root, the spec's group is %d", ErrRefused, name, user.GID)
	}
	if !anyGID {
		for _, id := range append(gids, cr.GetGroups()...) {
			if id != user.GID && !contains(user.AdditionalGids, id) {
				return fmt.Errorf("%w: %s had group %d, which the spec does not give", ErrRefused, name, id)
			}
		}
	}
	return nil
}

func contains(ids []uint32, id uint32) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

// checkAlarmTimers refuses a task's POSIX timer on an alarm clock
// (CLOCK_REALTIME_ALARM, CLOCK_BOOTTIME_ALARM, which wake the node from
// suspend) without CAP_WAKE_ALARM on the node (wakeAlarm: the spec grants
// it): CRIU's restorer creates the timers before it gives the task its
// own credentials.
func checkAlarmTimers(core *criucore.CoreEntry, name string, wakeAlarm bool) error {
	if wakeAlarm {
		return nil
	}
	for _, t := range core.GetTc().GetTimers().GetPosix() {
		if id := t.GetClockId(); id == unix.CLOCK_REALTIME_ALARM || id == unix.CLOCK_BOOTTIME_ALARM {
			return fmt.Errorf("%w: %s has a timer on an alarm clock, which takes CAP_WAKE_ALARM; the spec does not grant it", ErrRefused, name)
		}
	}
	return nil
}

// taskDead is CRIU's task state of a zombie (TASK_DEAD).
const taskDead = 2

// isZombie reports whether a core image is a zombie's: a task that had
// exited, which CRIU restores as one that exits at once, and dumps
// without credentials or any other thread state.
func isZombie(core *criucore.CoreEntry) bool {
	return core.GetTc() != nil && core.GetTc().GetTaskState() == taskDead
}

func decodeCore(path string) (*crit.CriuImage, *criucore.CoreEntry, error) {
	img, err := decodeOne(path, &criucore.CoreEntry{})
	if err != nil {
		return nil, nil, err
	}
	core, ok := img.Entries[0].Message.(*criucore.CoreEntry)
	if !ok {
		return nil, nil, fmt.Errorf("decode %s: not a core entry", filepath.Base(path))
	}
	return img, core, nil
}

// decodeImage decodes a CRIU image whose entries are of msg's type. The
// image's magic must be that type's (go-criu decodes most kinds as the
// type it is given), and every entry must fit in the file: go-criu
// allocates what an entry's header says before it reads it.
func decodeImage(path string, msg proto.Message) (*crit.CriuImage, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if err := checkFraming(f, magics[msg.ProtoReflect().Descriptor().FullName()]); err != nil {
		return nil, fmt.Errorf("decode %s: %w", filepath.Base(path), err)
	}
	img, err := crit.New(f, nil, "", false, false).Decode(msg)
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", filepath.Base(path), err)
	}
	return img, nil
}

// magics are the image magics of the entry types confine decodes.
var magics = map[protoreflect.FullName]string{
	"core_entry": "CORE", "inventory_entry": "INVENTORY", "task_kobj_ids_entry": "IDS", "mnt_entry": "MNTS",
	"cgroup_entry": "CGROUP", "userns_entry": "USERNS", "pstree_entry": "PSTREE", "seccomp_entry": "SECCOMP",
	"ipc_var_entry": "IPC_VAR", "utsns_entry": "UTSNS", "file_entry": "FILES", "remap_file_path_entry": "REMAP_FPATH",
	"mm_entry": "MM", "fs_entry": "FS", "file_lock_entry": "FILE_LOCKS", "fdinfo_entry": "FDINFO",
}

// openImage opens a CRIU image, past its magic, which must be want.
func openImage(path, want string) (*os.File, os.FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err == nil {
		var magic string
		if magic, err = crit.ReadMagic(f); err == nil && magic != want {
			err = fmt.Errorf("a %s image, want %s", magic, want)
		}
	}
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%s: %w", filepath.Base(path), err)
	}
	return f, fi, nil
}

// checkFraming reads f's magic and entry headers, and leaves f at its
// start: the magic must be want, each entry no longer than what is left.
func checkFraming(f *os.File, want string) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	magic, err := crit.ReadMagic(f)
	if err != nil {
		return err
	}
	if want == "" || magic != want {
		return fmt.Errorf("a %s image, want %s", magic, want)
	}
	if err := walkEntries(f, fi.Size(), fi.Size(), nil); err != nil {
		return err
	}
	_, err = f.Seek(0, io.SeekStart)
	return err
}

// walkEntries walks the entries of an image of size bytes from f's
// offset (past its magic): each a 4-byte length and that many bytes, no
// more than limit, nor than what is left. visit, if set, gets each
// entry's bytes and its offset, and returns how many bytes follow the
// entry before the next one (a pipe's data); without it, the entries are
// skipped unread.
func walkEntries(f *os.File, size, limit int64, visit func(entry []byte, at int64) (int64, error)) error {
	pos, err := f.Seek(0, io.SeekCurrent)
	if err != nil {
		return err
	}
	var header [4]byte
	for pos < size {
		if _, err := io.ReadFull(f, header[:]); err != nil {
			return fmt.Errorf("entry header at %d: %w", pos, err)
		}
		at, n := pos, int64(binary.LittleEndian.Uint32(header[:]))
		pos += 4
		if n > size-pos || n > limit {
			return fmt.Errorf("entry at %d of %d bytes, past the end of the image or larger than its kind's entries", at, n)
		}
		skip := n
		if visit != nil {
			entry := make([]byte, n)
			if _, err := io.ReadFull(f, entry); err != nil {
				return fmt.Errorf("entry at %d: %w", at, err)
			}
			pos += n
			if skip, err = visit(entry, at); err != nil {
				return err
			}
			if skip > size-pos {
				return fmt.Errorf("entry at %d has %d bytes after it, past the end of the image", at, skip)
			}
		}
		if pos, err = f.Seek(skip, io.SeekCurrent); err != nil {
			return err
		}
	}
	return nil
}

// populate fills dir with the images of src: rewritten ones encoded anew,
// the others hard-linked (the cache's copies are never modified), symlinks
// copied.
func populate(src, dir string, rewritten map[string]*crit.CriuImage) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range entries {
		name := e.Name()
		if e.Type()&os.ModeSymlink != 0 {
			// A page image still streaming in (see package restore): the
			// link is relative, and dir sits beside src.
			target, err := os.Readlink(filepath.Join(src, name))
			if err == nil {
				err = os.Symlink(target, filepath.Join(dir, name))
			}
			if err != nil {
				return fmt.Errorf("link %s: %w", name, err)
			}
			continue
		}
		if !e.Type().IsRegular() {
			continue
		}
		if img, ok := rewritten[name]; ok {
			f, err := os.OpenFile(filepath.Join(dir, name), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err != nil {
				return err
			}
			if img != nil { // nil: an empty raw image
				err = crit.New(nil, f, "", false, false).Encode(img)
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("encode %s: %w", name, err)
			}
			continue
		}
		if err := os.Link(filepath.Join(src, name), filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("link %s: %w", name, err)
		}
	}
	return nil
}
