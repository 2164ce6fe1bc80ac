package confine

import (
	"github.com/checkpoint-restore/go-criu/v7/crit/images/creds"
	"google.golang.org/protobuf/encoding/protowire"
)

// noNewPrivsField is creds_entry's no_new_privs (CRIU 3.x and later),
// which the go-criu types do not have yet: it travels in the message's
// unknown fields, and CRIU's restorer sets PR_SET_NO_NEW_PRIVS from it.
const noNewPrivsField protowire.Number = 18

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
