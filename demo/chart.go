package main

import (
	"fmt"
	"image/color"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// bar is one bar of the chart: the median of a figure, with its range.
type bar struct {
	name string
	s    stat
}

// writeChart draws the bench's two comparisons as a PNG: the time to the
// first 200 cold and restored, and snapboot's restore against the runc
// restore floor. Bars are medians; whiskers span min to max.
func writeChart(path string, r *results) error {
	left, err := barPlot("time to first HTTP 200 (s)", []bar{
		{"cold start", stats(r.Cold)},
		{"restored,\nempty cache", stats(r.RestoreCold)},
		{"restored,\nwarm cache", stats(r.RestoreWarm)},
	}, color.RGBA{R: 70, G: 110, B: 180, A: 255})
	if err != nil {
		return err
	}
	panels := []*plot.Plot{left}
	if len(r.Floor) > 0 {
		bars := []bar{
			{"runc restore,\nlocal disk", stats(r.Floor)},
			{"snapboot,\nwarm cache", stats(r.ClientWarm)},
			{"snapboot,\nempty cache", stats(r.ClientCold)},
		}
		if len(r.LZ4ClientCold) > 0 {
			bars = append(bars, bar{"snapboot, empty\ncache, lz4", stats(r.LZ4ClientCold)})
		}
		right, err := barPlot("restore vs the runc floor (s)", bars, color.RGBA{R: 90, G: 160, B: 90, A: 255})
		if err != nil {
			return err
		}
		panels = append(panels, right)
	}
	left.Title.Text = fmt.Sprintf("snapboot bench: Rails app, %d models, %d runs (%s)", r.Models, r.Runs, r.Date.Format("2006-01-02"))

	const w, h = 10 * vg.Inch, 4.5 * vg.Inch
	img := vgimg.New(w, h)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: len(panels), PadX: vg.Inch / 3, PadTop: vg.Inch / 8, PadBottom: vg.Inch / 8, PadLeft: vg.Inch / 8, PadRight: vg.Inch / 8}
	canvases := plot.Align([][]*plot.Plot{panels}, tiles, dc)
	for i, p := range panels {
		p.Draw(canvases[0][i])
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("chart: %w", err)
	}
	return f.Close()
}

// barPlot is a bar chart of medians with min–max whiskers and the median
// written above each bar.
func barPlot(ylabel string, bars []bar, fill color.Color) (*plot.Plot, error) {
	p := plot.New()
	p.Y.Label.Text = ylabel
	p.Y.Min = 0
	values := make(plotter.Values, len(bars))
	names := make([]string, len(bars))
	errs := make(errPoints, len(bars))
	labels := plotter.XYLabels{XYs: make(plotter.XYs, len(bars)), Labels: make([]string, len(bars))}
	top := 0.0
	for i, b := range bars {
		values[i], names[i] = b.s.Median, b.name
		errs[i] = errPoint{x: float64(i), y: b.s.Median, low: b.s.Median - b.s.Min, high: b.s.Max - b.s.Median}
		labels.XYs[i] = plotter.XY{X: float64(i), Y: b.s.Max}
		labels.Labels[i] = fmt.Sprintf("%.2f s", b.s.Median)
		top = max(top, b.s.Max)
	}
	bc, err := plotter.NewBarChart(values, vg.Points(40))
	if err != nil {
		return nil, err
	}
	bc.Color, bc.LineStyle.Width = fill, 0
	eb, err := plotter.NewYErrorBars(errs)
	if err != nil {
		return nil, err
	}
	lb, err := plotter.NewLabels(labels)
	if err != nil {
		return nil, err
	}
	for i := range lb.TextStyle {
		lb.TextStyle[i].XAlign, lb.TextStyle[i].YAlign = draw.XCenter, draw.YBottom
	}
	p.Add(bc, eb, lb)
	p.NominalX(names...)
	p.Y.Max = top * 1.15
	return p, nil
}

// errPoint is a bar's median and its distance to min and max.
type errPoint struct{ x, y, low, high float64 }

type errPoints []errPoint

func (e errPoints) Len() int                         { return len(e) }
func (e errPoints) XY(i int) (float64, float64)      { return e[i].x, e[i].y }
func (e errPoints) YError(i int) (low, high float64) { return e[i].low, e[i].high }
