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

var policyColors = map[string]color.Color{
	"sdsagent":        color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	"istio":           color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
	"spire":           color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
	"sdsagent-before": color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff},
}

// plotScenario draws one PNG per scenario: CSRs offered per second by
// each policy (with the CA's capacity) and, below, agents not ready.
// Steady rotation shows the whole run in 10-minute means; the others a
// window around the disturbance, in minutes from its end (from its
// start for a restart wave).
func plotScenario(path string, sc Scenario, rs []result) error {
	top, bottom := plot.New(), plot.New()
	var from, to, zero int // seconds
	scale, unit := 60.0, "minutes"
	switch {
	case sc.Window.To == 0:
		from, to, scale, unit = 0, len(rs[0].S.Offered), 3600, "hours"
	case sc.Restart:
		zero = int(sc.Window.From / 1000)
		from, to = zero-60, zero+20*60
	default:
		zero = int(sc.Window.To / 1000)
		from, to = zero-2*60, zero+10*60
	}
	to = min(to, len(rs[0].S.Offered))
	top.Title.Text = sc.Title
	top.Y.Label.Text = "CSRs offered / s"
	bottom.Y.Label.Text = "agents not ready"
	for _, p := range []*plot.Plot{top, bottom} {
		p.X.Label.Text = unit
		if sc.Window.To > 0 {
			if sc.Restart {
				p.X.Label.Text = "minutes from the start of the restart wave"
			} else {
				p.X.Label.Text = "minutes from the CA's return"
			}
		}
		p.Add(plotter.NewGrid())
		p.Legend.Top = true
	}
	step := 1
	if sc.Window.To == 0 {
		step = 600 // 10-minute means over the run
		top.Y.Min = 0
	}
	for _, r := range rs {
		off := make(plotter.XYs, 0, (to-from)/step+1)
		nr := make(plotter.XYs, 0, (to-from)/step+1)
		for i := from; i+step <= to; i += step {
			var sum, nsum float64
			for j := i; j < i+step; j++ {
				sum += float64(r.S.Offered[j])
				nsum += float64(r.S.NotReady[j])
			}
			x := float64(i-zero) / scale
			off = append(off, plotter.XY{X: x, Y: sum / float64(step)})
			nr = append(nr, plotter.XY{X: x, Y: nsum / float64(step)})
		}
		for _, l := range []struct {
			p   *plot.Plot
			xys plotter.XYs
		}{{top, off}, {bottom, nr}} {
			line, err := plotter.NewLine(l.xys)
			if err != nil {
				return fmt.Errorf("plot %s: %w", sc.Name, err)
			}
			line.Color = policyColors[r.Policy]
			line.Width = vg.Points(1)
			l.p.Add(line)
			l.p.Legend.Add(r.Policy, line)
		}
	}
	if sc.Window.To > 0 {
		capLine := plotter.NewFunction(func(float64) float64 { return sc.Capacity })
		capLine.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		capLine.Color = color.Gray{Y: 0x60}
		top.Add(capLine)
		top.Legend.Add(fmt.Sprintf("CA capacity %.0f/s", sc.Capacity), capLine)
	}
	if sc.Window.To == 0 { // nothing is ever not ready: one panel
		top.X.Label.Text = "hours (10-minute means)"
		img := vgimg.New(vg.Points(720), vg.Points(300))
		top.Draw(draw.New(img))
		return savePNG(path, img)
	}
	img := vgimg.New(vg.Points(720), vg.Points(560))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 2, Cols: 1, PadX: vg.Points(6), PadY: vg.Points(10),
		PadTop: vg.Points(4), PadBottom: vg.Points(4), PadLeft: vg.Points(4), PadRight: vg.Points(10)}
	canvases := plot.Align([][]*plot.Plot{{top}, {bottom}}, tiles, dc)
	top.Draw(canvases[0][0])
	bottom.Draw(canvases[1][0])
	return savePNG(path, img)
}

func savePNG(path string, img *vgimg.Canvas) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("write png: %w", err)
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("write png: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write png: %w", err)
	}
	return nil
}
