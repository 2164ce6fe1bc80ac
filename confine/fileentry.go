package confine

import (
	"fmt"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/fown"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// kindFields are the field of a files.img entry that holds each type's
// own entry (CRIU's images/fdinfo.proto): CRIU reads that one only.
var kindFields = map[fdinfo.FdTypes]protoreflect.FieldNumber{
	fdinfo.FdTypes_REG: 3, fdinfo.FdTypes_INETSK: 4, fdinfo.FdTypes_NS: 5, fdinfo.FdTypes_PACKETSK: 6,
	fdinfo.FdTypes_NETLINKSK: 7, fdinfo.FdTypes_EVENTFD: 8, fdinfo.FdTypes_EVENTPOLL: 9, fdinfo.FdTypes_SIGNALFD: 10,
	fdinfo.FdTypes_TUNF: 11, fdinfo.FdTypes_TIMERFD: 12, fdinfo.FdTypes_INOTIFY: 13, fdinfo.FdTypes_FANOTIFY: 14,
	fdinfo.FdTypes_EXT: 15, fdinfo.FdTypes_UNIXSK: 16, fdinfo.FdTypes_FIFO: 17, fdinfo.FdTypes_PIPE: 18,
	fdinfo.FdTypes_TTY: 19, fdinfo.FdTypes_MEMFD: 20, fdinfo.FdTypes_BPFMAP: 21,
}

// A pidfd, which CRIU 4 restores and go-criu v7 does not know: its entry
// (pidfd_entry) comes as unknown bytes in field 22; the owner is its field 5.
const (
	fdTypePidfd     fdinfo.FdTypes   = 20
	pidfdField      protowire.Number = 22
	pidfdOwnerField protowire.Number = 5
)

// fileKind is what a files.img entry holds, as CRIU reads it.
type fileKind struct {
	msg   protoreflect.Message // the type's own entry; nil for a pidfd
	owner *fown.FownEntry      // its signal owner, if it has one
}

// kindOf returns the entry of fe's type, and refuses an entry CRIU would
// read otherwise than confine: another kind's entry beside or instead of
// its type's (CRIU reads only its type's), a type confine does not know,
// or fields it does not know.
func kindOf(fe *fdinfo.FileEntry) (fileKind, error) {
	var k fileKind
	m := fe.ProtoReflect()
	var set []protoreflect.FieldDescriptor
	m.Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		if fd.Kind() == protoreflect.MessageKind {
			set = append(set, fd)
		}
		return true
	})
	unknown := m.GetUnknown()
	if fe.GetType() == fdTypePidfd {
		if len(set) > 0 {
			return k, fmt.Errorf("file %#x, a pidfd, carries the entry of another kind", fe.GetId())
		}
		owner, err := pidfdOwner(unknown)
		if err != nil {
			return k, fmt.Errorf("file %#x, a pidfd: %w", fe.GetId(), err)
		}
		k.owner = owner
		return k, nil
	}
	if len(unknown) > 0 {
		return k, fmt.Errorf("file %#x (%s) has fields snapboot does not know", fe.GetId(), fe.GetType())
	}
	want, known := kindFields[fe.GetType()]
	if !known {
		return k, fmt.Errorf("file %#x has type %d, which snapboot does not know", fe.GetId(), fe.GetType())
	}
	if len(set) != 1 || set[0].Number() != want {
		return k, fmt.Errorf("file %#x (%s) does not carry exactly its own kind's entry", fe.GetId(), fe.GetType())
	}
	k.msg = m.Get(set[0]).Message()
	if f := k.msg.Descriptor().Fields().ByName("fown"); f != nil && k.msg.Has(f) {
		k.owner, _ = k.msg.Get(f).Message().Interface().(*fown.FownEntry)
	}
	return k, nil
}

// pidfdOwner reads the owner of a pidfd entry from a file entry's unknown
// bytes, which must be that entry and nothing else.
func pidfdOwner(unknown []byte) (*fown.FownEntry, error) {
	var entry []byte
	seen := false
	for len(unknown) > 0 {
		num, typ, n := protowire.ConsumeTag(unknown)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		unknown = unknown[n:]
		if num != pidfdField || typ != protowire.BytesType || seen {
			return nil, fmt.Errorf("unexpected field %d in its entry", num)
		}
		v, n := protowire.ConsumeBytes(unknown)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		entry, seen, unknown = v, true, unknown[n:]
	}
	if !seen {
		return nil, fmt.Errorf("no pidfd entry")
	}
	var owner *fown.FownEntry
	for len(entry) > 0 {
		num, typ, n := protowire.ConsumeTag(entry)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		entry = entry[n:]
		n = protowire.ConsumeFieldValue(num, typ, entry)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		if num == pidfdOwnerField {
			if typ != protowire.BytesType {
				return nil, fmt.Errorf("its owner has wire type %d", typ)
			}
			v, _ := protowire.ConsumeBytes(entry[:n])
			owner = &fown.FownEntry{}
			if err := proto.Unmarshal(v, owner); err != nil {
				return nil, fmt.Errorf("its owner: %w", err)
			}
		}
		entry = entry[n:]
	}
	if owner == nil {
		return nil, fmt.Errorf("no owner in its entry")
	}
	return owner, nil
}

// owner checks the owner CRIU sets for a file's signals (F_SETOWN_EX,
// the fown entry of each kind of file): CRIU takes on the image's uid and
// euid first, as root may, and the kernel records them as the owner's.
// They decide whom the file's SIGIO (or the signal F_SETSIG chose) may
// reach: any process, for an owner whose euid is the node's root. The
// cold start's process records its own ids, so they must be ids the
// checkpoint's tasks run with (which the credential checks hold to the
// spec), unless the spec grants CAP_SETUID (counted in the container's
// user namespace, where CRIU sets them). CRIU sets no owner for a file
// whose owner pid is 0.
func (c *fileChecks) owner(fe *fdinfo.FileEntry, o *fown.FownEntry) error {
	if o == nil || o.GetPid() == 0 || c.caps&(1<<unix.CAP_SETUID) != 0 {
		return nil
	}
	for _, id := range []uint32{o.GetUid(), o.GetEuid()} {
		if id != c.uid && !c.taskUIDs[id] {
			return fmt.Errorf("file %#x (%s) sends its signals to pid %d as uid %d, euid %d, which no task runs as (the spec's user is %d); the spec does not grant CAP_SETUID", fe.GetId(), fe.GetType(), o.GetPid(), o.GetUid(), o.GetEuid(), c.uid)
		}
	}
	return nil
}

// socketKinds are the kinds of file CRIU makes in a network namespace of
// the image's (set_netns, by the entry's ns_id).
var socketKinds = map[fdinfo.FdTypes]bool{
	fdinfo.FdTypes_INETSK: true, fdinfo.FdTypes_UNIXSK: true, fdinfo.FdTypes_PACKETSK: true,
	fdinfo.FdTypes_NETLINKSK: true, fdinfo.FdTypes_TUNF: true,
}

// netnsOf checks the network namespace CRIU makes a socket (or opens a
// TUN device) in: the ns_id of its entry, where 0 (or none) is the
// tasks'. It must be the tasks' own (see checkpointNetns): CRIU would
// otherwise switch to another namespace of the checkpoint's, which it
// made and filled itself, as root.
func (c *fileChecks) netnsOf(fe *fdinfo.FileEntry, k fileKind) error {
	if !socketKinds[fe.GetType()] {
		return nil
	}
	f := k.msg.Descriptor().Fields().ByName("ns_id")
	if f == nil || !k.msg.Has(f) {
		return nil
	}
	if id := uint32(k.msg.Get(f).Uint()); id != 0 && (!c.netnsKnown || id != c.netns) {
		return fmt.Errorf("file %#x (%s) is in network namespace %d, not the tasks'", fe.GetId(), fe.GetType(), id)
	}
	return nil
}
