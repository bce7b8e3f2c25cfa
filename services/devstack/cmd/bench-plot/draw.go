package main

import (
	"fmt"
	"os"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

// drawPanels writes four panels: throughput and p99 against concurrency, for the
// HealthKit push (top) and GetLatest (bottom), bridge and baseline on the
// same axes, as SVG or (path ending in .png) PNG.
func drawPanels(res results, path string) error {
	type panel struct {
		title, ylabel string
		ss            []series
		y             func(point) float64
	}
	thr := func(p point) float64 { return p.Throughput }
	p99 := func(p point) float64 { return p.P99ms }
	panels := []panel{
		{"HealthKit push: throughput", "readings/s", res.HealthKit, thr},
		{"HealthKit push: p99 latency", "ms per push", res.HealthKit, p99},
		{"GetLatest: throughput", "requests/s", res.GetLatest, thr},
		{"GetLatest: p99 latency", "ms per call", res.GetLatest, p99},
	}
	const rows, cols = 2, 2
	plots := make([][]*plot.Plot, rows)
	for i, pn := range panels {
		p := plot.New()
		p.Title.Text = pn.title
		p.X.Label.Text = "concurrent clients"
		p.Y.Label.Text = pn.ylabel
		p.X.Scale = plot.LogScale{}
		var ticks []plot.Tick
		p.Legend.Top = true
		p.Legend.Left = true
		var args []any
		top := 0.0
		for _, s := range pn.ss {
			xys := make(plotter.XYs, len(s.Points))
			for j, pt := range s.Points {
				xys[j] = plotter.XY{X: float64(pt.Concurrency), Y: pn.y(pt)}
				top = max(top, xys[j].Y)
				if len(ticks) < len(s.Points) {
					ticks = append(ticks, plot.Tick{Value: xys[j].X, Label: fmt.Sprint(pt.Concurrency)})
				}
			}
			args = append(args, s.Name, xys)
		}
		p.X.Tick.Marker = plot.ConstantTicks(ticks)
		if err := plotutil.AddLinePoints(p, args...); err != nil {
			return fmt.Errorf("plot %s: %w", pn.title, err)
		}
		// Room above the curves for the legend.
		p.Y.Min, p.Y.Max = 0, top*1.3
		if plots[i/cols] == nil {
			plots[i/cols] = make([]*plot.Plot, cols)
		}
		plots[i/cols][i%cols] = p
	}
	w, h := 30*vg.Centimeter, 22*vg.Centimeter
	var img vg.CanvasWriterTo = vgsvg.New(w, h)
	if strings.HasSuffix(path, ".png") {
		img = vgimg.PngCanvas{Canvas: vgimg.NewWith(vgimg.UseWH(w, h), vgimg.UseDPI(110))}
	}
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: rows, Cols: cols, PadX: vg.Centimeter, PadY: vg.Centimeter,
		PadTop: vg.Millimeter * 5, PadBottom: vg.Millimeter * 5, PadLeft: vg.Millimeter * 5, PadRight: vg.Millimeter * 5}
	canvases := plot.Align(plots, tiles, dc)
	for r := range rows {
		for c := range cols {
			plots[r][c].Draw(canvases[r][c])
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := img.WriteTo(f); err != nil {
		_ = f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}
