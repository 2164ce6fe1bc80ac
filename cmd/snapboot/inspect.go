//go:build linux

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/urfave/cli/v3"

	"github.com/snapboot/snapboot/restore"
)

var inspectCommand = &cli.Command{
	Name:      "inspect",
	Usage:     "show a checkpoint's metadata and layers, and whether this node can restore it (reads no layer)",
	ArgsUsage: "REF",
	Flags:     []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print JSON"}},
	Action: func(ctx context.Context, cmd *cli.Command) error {
		a, err := args(cmd, "REF")
		if err != nil {
			return err
		}
		cfg, cfgErr := loadConfig(cmd)
		in, err := restore.New(cfg, cfgErr).Inspect(ctx, a[0])
		if err != nil {
			return err
		}
		if cmd.Bool("json") {
			out := map[string]any{
				"reference": in.Ref, "digest": in.Descriptor.Digest, "manifest": in.Checkpoint.Manifest,
				"metadata": in.Metadata, "cached": in.Unpacked,
				"allowed": in.Allowed == nil, "compatible": in.Compatible == nil,
			}
			if in.Allowed != nil {
				out["allowedReason"] = in.Allowed.Error()
			}
			if in.Namespaces != nil {
				out["namespaces"] = in.Namespaces
			}
			if in.Compatible != nil {
				out["compatibleReason"] = in.Compatible.Error()
			}
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			if err := enc.Encode(out); err != nil {
				return err
			}
		} else {
			printInspection(os.Stdout, in)
		}
		if in.Allowed != nil {
			return in.Allowed
		}
		return in.Compatible
	},
}

// printInspection prints in as a table. Every string from the checkpoint
// (its metadata, its manifest) or naming it is shown through shown: a
// checkpoint is untrusted, and its strings could hold a terminal's control
// sequences.
func printInspection(out io.Writer, in *restore.Inspection) {
	m := in.Metadata
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "reference\t%s\n", shown(in.Ref))
	fmt.Fprintf(w, "digest\t%s\n", in.Descriptor.Digest)
	if !m.Created.IsZero() {
		fmt.Fprintf(w, "created\t%s\n", m.Created.UTC().Format(time.RFC3339))
	}
	fmt.Fprintf(w, "format\tv%d\n", m.FormatVersion)
	fmt.Fprintf(w, "criu\t%s\n", shown(m.CRIU.Version))
	if m.Runc.Version != "" {
		fmt.Fprintf(w, "runc\t%s\n", shown(m.Runc.Version))
	}
	fmt.Fprintf(w, "architecture\t%s\n", shown(m.Host.Architecture))
	if m.Host.Kernel != "" {
		fmt.Fprintf(w, "kernel\t%s\n", shown(m.Host.Kernel))
	}
	if m.Host.CPU.Model != "" {
		fmt.Fprintf(w, "cpu\t%s (%d flags)\n", shown(m.Host.CPU.Model), len(m.Host.CPU.Flags))
	}
	if m.Source.Image != "" {
		fmt.Fprintf(w, "source image\t%s %s\n", shown(m.Source.Image), shown(m.Source.ImageDigest))
	}
	if m.Source.Container != "" {
		fmt.Fprintf(w, "source container\t%s\n", shown(m.Source.Container))
	}
	if len(m.DumpOptions) > 0 {
		fmt.Fprintf(w, "dump options\t%s\n", shown(strings.Join(m.DumpOptions, ", ")))
	}
	if s := in.Checkpoint.Manifest.Subject; s != nil {
		fmt.Fprintf(w, "subject\t%s\n", s.Digest)
	}
	fmt.Fprintf(w, "cached on this node\t%v\n", in.Unpacked)
	if in.Node != nil {
		fmt.Fprintf(w, "this node\t%s, kernel %s, CRIU %s\n", in.Node.Architecture, in.Node.Kernel, in.Node.CRIUVersionString())
	}
	verdict := "yes"
	switch {
	case in.Allowed != nil:
		verdict = "no: " + in.Allowed.Error()
	case in.Compatible != nil:
		verdict = "no: " + in.Compatible.Error()
	}
	fmt.Fprintf(w, "restorable here\t%s\n", shown(verdict))
	if in.Namespaces != nil {
		pods := "none ([namespaces] lists no namespace for this repository)"
		if len(in.Namespaces) > 0 {
			pods = strings.Join(in.Namespaces, ", ")
		}
		fmt.Fprintf(w, "for pods of namespaces\t%s\n", shown(pods))
	}
	w.Flush()
	fmt.Fprintln(out, "layers:")
	w = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	for _, l := range in.Checkpoint.Layers() {
		fmt.Fprintf(w, "  %s\t%s\t%s\t%s\n", shown(l.MediaType), human(l.Size), l.Digest, layerNote(in, l))
	}
	w.Flush()
}

// escapeControls is s with each character that is not printable, but for
// line breaks and tabs, escaped as in a Go string.
func escapeControls(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r == '\n' || r == '\t' || unicode.IsPrint(r) {
			b.WriteRune(r)
			continue
		}
		q := strconv.QuoteRune(r)
		b.WriteString(q[1 : len(q)-1])
	}
	return b.String()
}

// shown is s as printed in a table: quoted, with escapes, if it holds a
// character that is not printable (a control sequence, a tab or a line
// break that would make a row of its own).
func shown(s string) string {
	if strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
		return strconv.Quote(s)
	}
	return s
}

// layerNote says how a node gets layer l: whether it comes in the manifest,
// and whether the CRIU layer restores while it downloads.
func layerNote(in *restore.Inspection, l ocispec.Descriptor) string {
	var notes []string
	if l.Data != nil {
		notes = append(notes, "in the manifest")
	}
	if l.Digest == in.Checkpoint.CRIU.Digest {
		switch st := in.Checkpoint.Stream; {
		case st == nil:
			notes = append(notes, "downloaded whole before the restore (no stream index)")
		case st.Head != nil:
			notes = append(notes, fmt.Sprintf("streamed: %d frames, the first in the manifest", len(st.Frames)))
		default:
			notes = append(notes, fmt.Sprintf("streamed: %d frames", len(st.Frames)))
		}
	}
	return strings.Join(notes, "; ")
}
