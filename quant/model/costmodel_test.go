package model

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"testing"

	"github.com/svdq/svdq/formats/preset"
)

// TestCostModelReport prints the numbers of docs/cost-model.md from a
// measured run: SVDQ_COST_MODEL=checkpoint SVDQ_COST_REPORT=report.json
// go test -run CostModelReport -v ./quant/model. For each role, the
// measured seconds per million weights (N·K) of its units; the measured
// total; and, dealing the units to n shards as --shard does, the measured
// seconds of the busiest shard (the wall time of n identical machines,
// before hashing and merge). Skipped without the variables.
func TestCostModelReport(t *testing.T) {
	model, report := os.Getenv("SVDQ_COST_MODEL"), os.Getenv("SVDQ_COST_REPORT")
	if model == "" || report == "" {
		t.Skip("set SVDQ_COST_MODEL and SVDQ_COST_REPORT")
	}
	p, r, err := QuantizePlan(PlanOptions{Model: model})
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	b, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	var rep QuantizeReport
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	secs := map[string]float64{}
	for _, l := range rep.Layers {
		secs[l.Name] = l.Seconds
	}
	units := p.units()
	measured := make([]float64, len(units))
	costs := make([]float64, len(units))
	type acc struct{ s, w float64 }
	byRole := map[preset.Role]*acc{}
	byShape := map[string]*acc{}
	var total float64
	for i, u := range units {
		l := &p.Layers[u.layers[0]]
		s, ok := secs[l.Name]
		if !ok {
			t.Fatalf("report has no layer %s", l.Name)
		}
		measured[i], costs[i] = s, p.unitCost(u)
		total += s
		var w float64
		shape := ""
		for _, li := range u.layers {
			w += float64(p.Layers[li].N) * float64(p.Layers[li].K)
			shape += fmt.Sprintf("[%d %d]", p.Layers[li].N, p.Layers[li].K)
		}
		if byRole[l.Role] == nil {
			byRole[l.Role] = &acc{}
		}
		byRole[l.Role].s += s
		byRole[l.Role].w += w
		key := l.Role.String() + " " + shape
		if byShape[key] == nil {
			byShape[key] = &acc{}
		}
		byShape[key].s += s
		byShape[key].w += w
	}
	fmt.Printf("%d units, %d layers, measured %.0f s of unit time (workers overlap: wall is less)\n", len(units), len(p.Layers), total)
	for role, a := range byRole {
		fmt.Printf("role %-10v %8.1f s  %8.3f s per million weights\n", role, a.s, a.s/a.w*1e6)
	}
	keys := make([]string, 0, len(byShape))
	for k := range byShape {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		a := byShape[k]
		fmt.Printf("  %-60s %8.1f s  %8.3f s/Mweight\n", k, a.s, a.s/a.w*1e6)
	}
	counts := make([]float64, len(units))
	for i, u := range units {
		counts[i] = float64(len(u.layers))
	}
	busiest := func(deal [][]int) float64 {
		b := 0.0
		for _, s := range deal {
			load := 0.0
			for _, u := range s {
				load += measured[u]
			}
			b = max(b, load)
		}
		return b
	}
	for _, n := range []int{1, 2, 4, 8, 16} {
		// For comparison: dealt by layer count, and in n contiguous runs
		// of units (plan order, equal counts).
		runs := make([][]int, n)
		for u := range units {
			runs[u*n/len(units)] = append(runs[u*n/len(units)], u)
		}
		b, bc, br := busiest(assignShards(costs, n)), busiest(assignShards(counts, n)), busiest(runs)
		fmt.Printf("shards %2d: busiest shard %7.0f s of unit time, speed-up %.2f (ideal %d); by layer count %.2f; contiguous %.2f\n",
			n, b, total/b, n, total/bc, total/br)
	}
}
