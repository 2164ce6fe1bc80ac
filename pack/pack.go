// Package pack compresses checkpoint layers: the CRIU image directory as a
// zstd- (or LZ4-) compressed tar of regular files, and an existing tar
// stream (the rootfs changes) as zstd. It is the write side of package
// unpack.
package pack

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"

	"github.com/snapboot/snapboot/oci"
)

// Sizes of one packed layer.
type Sizes struct {
	Raw        int64 // bytes before compression (the tar stream)
	Compressed int64
	// Stream is the index that lets a node restore a CRIU images layer
	// while it downloads (its frames and trailing page images); nil
	// for other layers.
	Stream *oci.Stream
}

// Level is how hard a checkpoint's layers are packed: one of Levels.
// The zero value is DefaultLevel.
type Level string

// Levels are the packing levels, from the fastest to pack to the fastest to
// restore where the network is fast. The zstd levels' frames all decode
// with the same decoder; LZ4 packs the CRIU images as LZ4 instead (other
// layers as "best").
var Levels = []Level{"fastest", "default", "better", "best", LZ4}

// LZ4 packs the CRIU images layer as LZ4 frames: about 1.5 times the size
// of "best" for the demo app's page image (83 against 54 MiB), decoded
// about three times faster (0.15–0.19 s on one core against 0.49–0.53 s,
// the same hour). It suits nodes short of CPU that pull from a registry
// nearby; over a slower link, the larger download costs more than the
// decoding saves.
const LZ4 Level = "lz4"

// DefaultLevel packs hardest: a checkpoint is packed once and restored on
// every start of every node. Measured on the demo app's 387 MiB page
// image, "best" packs it to 54 MiB against 62 MiB for "default", and one
// core decodes it in 0.43 s against 0.60 s (medians of 10), for about 10x
// the packing time (24 s against 2.5 s on one core; 10.5 s on 2 CPUs).
// Restored with an empty cache on 2 CPUs, the demo app answered in 0.94 s
// against 1.03 s (medians of 8 alternating rounds, `make compare
// LEVELS=default,best`).
const DefaultLevel Level = "best"

// ParseLevel checks a level's name; "" is DefaultLevel.
func ParseLevel(s string) (Level, error) {
	if s == "" {
		return DefaultLevel, nil
	}
	for _, l := range Levels {
		if string(l) == s {
			return l, nil
		}
	}
	return "", fmt.Errorf("unknown compression level %q (one of %v)", s, Levels)
}

func (l Level) zstd() (zstd.EncoderLevel, error) {
	l, err := ParseLevel(string(l))
	if err != nil {
		return 0, err
	}
	switch l {
	case "fastest":
		return zstd.SpeedFastest, nil
	case "default":
		return zstd.SpeedDefault, nil
	case "better":
		return zstd.SpeedBetterCompression, nil
	}
	return zstd.SpeedBestCompression, nil
}

type countingWriter struct {
	w io.Writer
	n int64
	// head keeps the first bytes written, up to keep.
	head []byte
	keep int
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	if room := c.keep - len(c.head); room > 0 {
		c.head = append(c.head, p[:min(room, n)]...)
	}
	c.n += int64(n)
	return n, err
}

// CRIUImagesMediaType is the media type of a CRIU images layer packed at
// level l.
func (l Level) CRIUImagesMediaType() string {
	if l == LZ4 {
		return oci.MediaTypeCRIUImagesLZ4
	}
	return oci.MediaTypeCRIUImages
}

// pageNumber is N in a page image's path, .../pages-N.img.
func pageNumber(path string) int {
	n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(filepath.Base(path), "pages-"), ".img"))
	return n
}

// TarDir writes dir's regular files and directories as a tar compressed at
// level (zstd, or LZ4 for LZ4) to w, with the page images (pages-N.img, at the top) last: a node can
// start restoring from the other images while the page images still
// download. Anything else (links, devices, sockets) is an error: a CRIU
// image directory holds none.
func TarDir(ctx context.Context, dir string, w io.Writer, level Level) (Sizes, error) {
	cw := &countingWriter{w: w, keep: oci.MaxEmbeddedHead}
	enc, err := newFrameWriter(cw, level)
	if err != nil {
		return Sizes{}, err
	}
	raw := &countingWriter{w: enc}
	tw := tar.NewWriter(raw)
	var pages []string
	// afterHeader, when set, is called between an entry's header and its
	// content.
	add := func(path string, info fs.FileInfo, afterHeader func()) error {
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		if !info.Mode().IsRegular() && !info.IsDir() {
			return fmt.Errorf("%s: only regular files and directories can be packed, found %s", rel, info.Mode().Type())
		}
		hdr, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if info.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uname, hdr.Gname = "", ""
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if afterHeader != nil {
			afterHeader()
		}
		if info.IsDir() {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, ctxReader{ctx, f}) // a page image may be GiBs
		return err
	}
	st := &oci.Stream{}
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if path == dir {
			return nil
		}
		if filepath.Dir(path) == dir && d.Type().IsRegular() && oci.IsPageImage(d.Name()) {
			pages = append(pages, path)
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		return add(path, info, nil)
	})
	// In the order of their numbers, not of their names: CRIU numbers
	// them as it dumps the tree, parents first, and restores a parent's
	// memory before it forks the children, so a streamed restore reads
	// pages-2 before pages-10.
	sort.SliceStable(pages, func(i, j int) bool { return pageNumber(pages[i]) < pageNumber(pages[j]) })
	for _, path := range pages {
		if err != nil {
			break
		}
		var info fs.FileInfo
		if info, err = os.Lstat(path); err == nil {
			// The first frame ends with the first page image's header: a
			// streamed restore begins once it has everything before the
			// page images, and then waits for one small frame, not for
			// the first 4 MiB of pages as well.
			var endFrame func()
			if len(st.Tail) == 0 {
				endFrame = enc.flush
			}
			err = add(path, info, endFrame)
			st.Tail = append(st.Tail, oci.TailFile{Name: filepath.Base(path), Size: info.Size()})
		}
	}
	if err == nil {
		err = tw.Close()
	}
	if cerr := enc.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return Sizes{}, fmt.Errorf("pack %s: %w", dir, err)
	}
	sizes := Sizes{Raw: raw.n, Compressed: cw.n}
	// An index of more page images than nodes take would make every node
	// refuse the checkpoint: without one, it is pulled whole instead.
	if len(st.Tail) > 0 && len(st.Tail) <= oci.MaxTail {
		st.Frames = enc.Frames()
		if first := st.Frames[0].Size; first <= int64(len(cw.head)) {
			// Every image but the page images, small enough to go in
			// the manifest (see oci.AnnotationHead).
			st.Head = cw.head[:first]
		}
		sizes.Stream = st
	}
	return sizes, nil
}

// Zstd compresses r into w; at level LZ4, as "best".
func Zstd(ctx context.Context, r io.Reader, w io.Writer, level Level) (Sizes, error) {
	if level == LZ4 {
		level = "best" // LZ4 is for the CRIU images layer
	}
	cw := &countingWriter{w: w}
	enc, err := newFrameWriter(cw, level)
	if err != nil {
		return Sizes{}, err
	}
	n, err := io.Copy(enc, ctxReader{ctx, r})
	if cerr := enc.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return Sizes{}, fmt.Errorf("compress: %w", err)
	}
	return Sizes{Raw: n, Compressed: cw.n}, nil
}

// ctxReader reads from r until ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
