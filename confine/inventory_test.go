package confine

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/inventory"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/regfile"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

func TestDumpRunID(t *testing.T) {
	for _, c := range []struct {
		name   string
		id     []byte // nil: none
		refuse bool
	}{
		{name: "none (an older CRIU's image)"},
		{name: "CRIU's", id: []byte("0c5e2f4a-7d1b-4c3e-9f60-1a2b3c4d5e6f")},
		{name: "a command after it", id: []byte("x;flush table ip nat"), refuse: true},
		{name: "a UUID with more after it", id: []byte("0c5e2f4a-7d1b-4c3e-9f60-1a2b3c4d5e6f x"), refuse: true},
	} {
		dir := t.TempDir()
		inv := &inventory.InventoryEntry{ImgVersion: proto.Uint32(2), RootIds: hostIDs()}
		if c.id != nil {
			inv.ProtoReflect().SetUnknown(protowire.AppendBytes(protowire.AppendTag(nil, 13, protowire.BytesType), c.id))
		}
		writeImage(t, filepath.Join(dir, "inventory.img"), "INVENTORY", inv)
		err := checkInventory(dir, []string{"inventory.img"})
		if (err != nil) != c.refuse {
			t.Errorf("%s: %v, want refused %v", c.name, err, c.refuse)
		}
	}
}

func TestTTYFiles(t *testing.T) {
	tty := func(name string, mode uint32) map[uint32]*regfile.RegFileEntry {
		f := regFile(9, name).Reg
		f.Mode = proto.Uint32(mode)
		return map[uint32]*regfile.RegFileEntry{9: f}
	}
	for _, c := range []struct {
		name   string
		regs   map[uint32]*regfile.RegFileEntry
		refuse string
	}{
		{name: "a pty", regs: tty("/dev/pts/3", 0o20620)},
		{name: "the multiplexer", regs: tty("/dev/ptmx", 0o20666)},
		{name: "the console", regs: tty("/dev/console", 0o20620)},
		{name: "a program", regs: tty("/usr/bin/python3", 0o100755), refuse: "not a terminal"},
		{name: "a pty made setuid", regs: tty("/dev/pts/3", 0o24755), refuse: "mode"},
		{name: "a pty through ..", regs: tty("/dev/pts/../../etc/passwd", 0o20620), refuse: "not a terminal"},
		{name: "a file files.img does not have", regs: nil, refuse: "does not have"},
	} {
		err := checkTTYs([]uint32{9}, c.regs)
		switch {
		case c.refuse == "" && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.refuse != "" && (err == nil || !strings.Contains(err.Error(), c.refuse)):
			t.Errorf("%s: %v, want a refusal about %q", c.name, err, c.refuse)
		}
	}
}
