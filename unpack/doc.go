// Package unpack extracts checkpoint layers — zstd- or LZ4-compressed tar
// streams — into a directory, confined with os.Root so that no entry can write outside
// it.
//
// Archives are untrusted and extraction runs as root, so every entry is
// checked before anything is written: names must be relative and free of
// "..", only the entry types the [Mode] allows are accepted, and the total
// number of entries and bytes of content are bounded (see [Options]).
// Rejections wrap [ErrUnsafe] or [ErrTooLarge].
package unpack
