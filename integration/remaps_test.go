//go:build integration && linux

package integration

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/fown"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/regfile"
	remapfilepath "github.com/checkpoint-restore/go-criu/v7/crit/images/remap-file-path"
	"google.golang.org/protobuf/proto"
)

// TestCraftedLinkRemapRemovesNoFile restores a checkpoint whose deleted
// file (a ghost, as dumped) was edited into one CRIU reopens through a
// link, the link named as a file of the node's in a volume: CRIU opens
// the deleted file through it and, once the restore is done, removes the
// link from its own process, as the node's root. The clone runs as nobody,
// who may write the file but not remove it from the volume's root. The
// previous build restored it, and CRIU removed the node's file.
func TestCraftedLinkRemapRemovesNoFile(t *testing.T) {
	requireShim(t)
	volume := testDir(t) // root's, mode 755
	flags := []string{"--mount", "type=bind,src=" + volume + ",dst=/data,options=rbind:rw"}
	const count = `i=0; while true; do i=$((i+1)); echo $i; sleep 0.1; done`
	const script = `exec 5>/data/ghost; echo secret >&5; rm /data/ghost; ` + count
	donor, donorLog := startScriptClone(t, "", script, flags...)
	waitCount(t, donorLog, 5)
	victim := filepath.Join(volume, "victim")
	if err := os.WriteFile(victim, []byte("the node's\n"), 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(victim, 0o666); err != nil { // whatever the umask
		t.Fatal(err)
	}
	ck := packAndPush(t, donor, registryAddr+"/it/crafted:link-remap", packOptions{tamper: func(t *testing.T, dir string) {
		asNobody(t, dir)
		linkRemapTo(t, dir, "/data/ghost", "/data/victim")
	}})
	offset := containerdLogOffset()
	clone, cloneLog := startScriptClone(t, ck.Ref, count, append(append([]string{"--user", "65534:65534"}, dropAll...), flags...)...)
	waitCount(t, cloneLog, 3) // restored or cold-started
	if data, err := os.ReadFile(victim); err != nil || string(data) != "the node's\n" {
		t.Errorf("the node's file %s: %q, %v", victim, data, err)
	}
	expectSpecFallback(t, offset, clone, cloneLog, "the link /data/victim to deleted file /data/ghost is not the link_remap.")
}

// linkRemapTo edits the deleted file named deleted in the images of dir,
// dumped as a ghost, into one CRIU opens through a link named link in the
// same mount (a linked remap). Its size and mode go, which CRIU would
// otherwise compare with the link's.
func linkRemapTo(t *testing.T, dir, deleted, link string) {
	t.Helper()
	var orig *regfile.RegFileEntry
	var next uint32 // the link's id
	editImages(t, dir, "files.img", &fdinfo.FileEntry{}, func(img *crit.CriuImage) {
		for _, e := range img.Entries {
			fe := e.Message.(*fdinfo.FileEntry)
			next = max(next, fe.GetId()+1)
			if reg := fe.GetReg(); reg != nil && reg.GetName() == deleted {
				orig = reg
			}
		}
		if orig == nil {
			t.Fatalf("no file named %s in the checkpoint", deleted)
		}
		orig.Size, orig.Mode = nil, nil
		zero := proto.Uint32(0)
		img.Entries = append(img.Entries, &crit.CriuEntry{Message: &fdinfo.FileEntry{
			Type: fdinfo.FdTypes_REG.Enum(), Id: proto.Uint32(next),
			Reg: &regfile.RegFileEntry{Id: proto.Uint32(next), Flags: zero, Pos: proto.Uint64(0), Name: proto.String(link), MntId: orig.MntId,
				Fown: &fown.FownEntry{Uid: zero, Euid: zero, Signum: zero, PidType: zero, Pid: zero}},
		}})
	})
	edited := 0
	editImages(t, dir, "remap-fpath.img", &remapfilepath.RemapFilePathEntry{}, func(img *crit.CriuImage) {
		for _, e := range img.Entries {
			if rp := e.Message.(*remapfilepath.RemapFilePathEntry); rp.GetOrigId() == orig.GetId() {
				rp.RemapType = remapfilepath.RemapType_LINKED.Enum()
				rp.RemapId = proto.Uint32(next)
				edited++
			}
		}
	})
	if edited != 1 {
		t.Fatalf("%d remaps of %s in the checkpoint, want 1", edited, deleted)
	}
}
