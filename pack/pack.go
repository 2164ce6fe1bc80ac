// Package pack compresses checkpoint layers: the CRIU image directory as a
// zstd-compressed tar of regular files, and an existing tar stream (the
// rootfs changes) as zstd. It is the write side of package unpack.
package pack

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/snapboot/snapboot/oci"
)

// Sizes of one packed layer.
type Sizes struct {
	Raw        int64 // bytes before compression (the tar stream)
	Compressed int64
	// Stream is the index that lets a node restore a CRIU images layer
	// while it downloads (its zstd frames and trailing page images); nil
	// for other layers.
	Stream *oci.Stream
}

// newEncoder compresses into independent frames of FrameSize at zstd's
// default level. On CRIU page images it packs about 6:1 and, measured on a
// 294 MB page image, decodes 1.8x faster than the fastest level (0.45 s
// against 0.83 s on one core) for 25% more packing time: the restore, not the
// checkpoint, is what has to be fast.
func newEncoder(w io.Writer) (*frameWriter, error) {
	return newFrameWriter(w)
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// TarZstdDir writes dir's regular files and directories as a zstd-compressed
// tar to w, with the page images (pages-N.img, at the top) last: a node can
// start restoring from the other images while the page images still
// download. Anything else (links, devices, sockets) is an error: a CRIU
// image directory holds none.
func TarZstdDir(ctx context.Context, dir string, w io.Writer) (Sizes, error) {
	cw := &countingWriter{w: w}
	enc, err := newEncoder(cw)
	if err != nil {
		return Sizes{}, err
	}
	raw := &countingWriter{w: enc}
	tw := tar.NewWriter(raw)
	var pages []string
	add := func(path string, info fs.FileInfo) error {
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
		if info.IsDir() {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
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
		return add(path, info)
	})
	for _, path := range pages {
		if err != nil {
			break
		}
		var info fs.FileInfo
		if info, err = os.Lstat(path); err == nil {
			err = add(path, info)
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
	if len(st.Tail) > 0 {
		st.Frames = enc.Frames()
		sizes.Stream = st
	}
	return sizes, nil
}

// Zstd compresses r into w.
func Zstd(ctx context.Context, r io.Reader, w io.Writer) (Sizes, error) {
	cw := &countingWriter{w: w}
	enc, err := newEncoder(cw)
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
