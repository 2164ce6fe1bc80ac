package confine

import (
	"github.com/checkpoint-restore/go-criu/v7/crit/images/creds"
	"google.golang.org/protobuf/encoding/protowire"
)

// Fields of creds_entry that the go-criu types do not have yet: they
// travel in the message's unknown fields. CRIU's restorer sets
// PR_SET_NO_NEW_PRIVS from no_new_privs, and raises the ambient
// capabilities cap_amb lists (two 32-bit words).
const (
	noNewPrivsField protowire.Number = 18
	capAmbField     protowire.Number = 19
)

// noNewPrivs reports whether the credentials keep no_new_privs set.
func noNewPrivs(cr *creds.CredsEntry) bool {
	set := false
	forEachField(cr.ProtoReflect().GetUnknown(), func(num protowire.Number, typ protowire.Type, v uint64, _ []byte) {
		if num == noNewPrivsField && typ == protowire.VarintType {
			set = v != 0 // the last one wins, as in protobuf
		}
	})
	return set
}

// setNoNewPrivs makes the credentials set no_new_privs, replacing any
// value the image had.
func setNoNewPrivs(cr *creds.CredsEntry) {
	var out []byte
	forEachField(cr.ProtoReflect().GetUnknown(), func(num protowire.Number, typ protowire.Type, _ uint64, raw []byte) {
		if num != noNewPrivsField {
			out = append(out, raw...)
		}
	})
	out = protowire.AppendTag(out, noNewPrivsField, protowire.VarintType)
	out = protowire.AppendVarint(out, 1)
	cr.ProtoReflect().SetUnknown(out)
}

// narrowAmbient keeps in cap_amb only the capabilities mask has, and
// reports whether that changed anything. The words keep their number.
func narrowAmbient(cr *creds.CredsEntry, mask uint64) bool {
	var amb []uint32
	var rest []byte
	forEachField(cr.ProtoReflect().GetUnknown(), func(num protowire.Number, typ protowire.Type, v uint64, raw []byte) {
		switch {
		case num == capAmbField && typ == protowire.VarintType:
			amb = append(amb, uint32(v))
		case num == capAmbField && typ == protowire.BytesType: // packed
			b, _ := protowire.ConsumeBytes(raw[protowire.SizeTag(num):])
			for len(b) > 0 {
				x, n := protowire.ConsumeVarint(b)
				if n < 0 {
					break
				}
				amb = append(amb, uint32(x))
				b = b[n:]
			}
		default:
			rest = append(rest, raw...)
		}
	})
	if len(amb) == 0 || words(amb)&^mask == 0 {
		return false
	}
	for _, w := range setWords(amb, words(amb)&mask) {
		rest = protowire.AppendTag(rest, capAmbField, protowire.VarintType)
		rest = protowire.AppendVarint(rest, uint64(w))
	}
	cr.ProtoReflect().SetUnknown(rest)
	return true
}

// forEachField calls fn with each field of b: its number, type, value if
// a varint, and its raw bytes. It stops at bytes it cannot parse.
func forEachField(b []byte, fn func(num protowire.Number, typ protowire.Type, v uint64, raw []byte)) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return
		}
		m := protowire.ConsumeFieldValue(num, typ, b[n:])
		if m < 0 {
			return
		}
		var v uint64
		if typ == protowire.VarintType {
			v, _ = protowire.ConsumeVarint(b[n:])
		}
		fn(num, typ, v, b[:n+m])
		b = b[n+m:]
	}
}
