package main

import (
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestWriteChart(t *testing.T) {
	r := &results{Date: time.Date(2026, 11, 26, 2, 3, 0, 0, time.UTC), Models: 1500, Runs: 3,
		Cold: []float64{20, 21, 30}, RestoreCold: []float64{1.0, 1.1, 1.2}, RestoreWarm: []float64{0.5, 0.6, 0.7},
		Floor: []float64{0.45, 0.48, 0.5}, ClientCold: []float64{1.0, 1.05, 1.1}, ClientWarm: []float64{0.5, 0.52, 0.55}}
	path := filepath.Join(t.TempDir(), "results.png")
	if err := writeChart(path, r); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("results.png: %v", err)
	}
	if b := img.Bounds(); b.Dx() < 600 || b.Dy() < 300 {
		t.Errorf("chart is %dx%d", b.Dx(), b.Dy())
	}
	// Both panels' bars are drawn.
	for _, want := range []color.RGBA{{R: 70, G: 110, B: 180, A: 255}, {R: 90, G: 160, B: 90, A: 255}} {
		if n := countColor(img, want); n < 500 {
			t.Errorf("%d pixels of bar color %v, want a bar's worth", n, want)
		}
	}

	// Without the floor (make demo), one panel: the first one's bars, not
	// the floor panel's.
	r.Floor, r.ClientCold, r.ClientWarm = nil, nil, nil
	if err := writeChart(path, r); err != nil {
		t.Fatal(err)
	}
	g, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if img, err = png.Decode(g); err != nil {
		t.Fatalf("results.png without the floor: %v", err)
	}
	if n := countColor(img, color.RGBA{R: 70, G: 110, B: 180, A: 255}); n < 500 {
		t.Errorf("no floor: %d pixels of the first panel's bars", n)
	}
	if n := countColor(img, color.RGBA{R: 90, G: 160, B: 90, A: 255}); n != 0 {
		t.Errorf("no floor: %d pixels of the floor panel's bars, want none", n)
	}
}

func countColor(img image.Image, c color.RGBA) int {
	n := 0
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, a := img.At(x, y).RGBA()
			if uint8(r>>8) == c.R && uint8(g>>8) == c.G && uint8(bl>>8) == c.B && uint8(a>>8) == c.A {
				n++
			}
		}
	}
	return n
}

func TestRatiosPairRuns(t *testing.T) {
	// a[i] is paired with b[i]: the pairs' ratios are 1, 3 and 0.5, while
	// the medians' ratio (2/1) would say 2.
	a := []float64{1, 3, 2}
	b := []float64{1, 1, 4}
	if got, want := ratios(a, b), "1.00x (0.50–3.00)"; got != want {
		t.Errorf("ratios = %q, want %q", got, want)
	}
	if got, want := ratios([]float64{1.1}, []float64{1.0, 2.0}), "1.10x"; got != want {
		t.Errorf("unequal lengths: ratios = %q, want %q", got, want)
	}
	// Each round's cold start over that round's restore, not the medians'
	// quotient (22/1 = 22.0x).
	cold, restored := []float64{20, 22, 30}, []float64{1, 0.5, 1.5}
	if got, want := speedups(cold, restored), "20.0x (20.0–44.0)"; got != want {
		t.Errorf("speedups = %q, want %q", got, want)
	}
}

func TestCPUBusy(t *testing.T) {
	a := cpuBusy()
	deadline := time.Now().Add(200 * time.Millisecond)
	for time.Now().Before(deadline) {
	}
	b := cpuBusy()
	if a <= 0 || b-a < 0.05 {
		t.Errorf("cpuBusy went from %.2f to %.2f over 200 ms of spinning", a, b)
	}
}
