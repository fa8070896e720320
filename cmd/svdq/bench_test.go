package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestBenchCPU runs `svdq bench cpu` at a small size: the JSON object has
// the keys with positive values, and the table names every shape.
func TestBenchCPU(t *testing.T) {
	status, out, stderr := runCLI("bench", "cpu", "--json", "--size", "128", "--min-time", "1ms")
	if status != 0 {
		t.Fatalf("bench cpu --json: status %d, stderr %q", status, stderr)
	}
	var r struct {
		GemmG  float64            `json:"gemm_gflops"`
		GonumG float64            `json:"gonum_gflops"`
		RSVD   float64            `json:"rsvd_seconds"`
		Layer  map[string]float64 `json:"layer_seconds"`
		Shapes []benchShape       `json:"shapes"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("bench cpu --json printed %q: %v", out, err)
	}
	if !(r.GemmG > 0 && r.GonumG > 0 && r.RSVD > 0 && r.Layer["fast"] > 0 && r.Layer["full"] > 0) {
		t.Errorf("bench cpu --json: missing or non-positive values in %s", out)
	}
	if len(r.Shapes) != 3 || r.Shapes[0].Name != "128x128x128" || r.Shapes[2].Name != "128x40x512" {
		t.Errorf("bench cpu shapes %+v", r.Shapes)
	}
	status, out, stderr = runCLI("bench", "cpu", "--size", "128", "--min-time", "1ms")
	if status != 0 {
		t.Fatalf("bench cpu: status %d, stderr %q", status, stderr)
	}
	for _, want := range []string{"128x128x128", "10x128x128", "128x40x512", "randomized SVD 128×512 rank 32", "fast search", "full search"} {
		if !strings.Contains(out, want) {
			t.Errorf("bench cpu table lacks %q:\n%s", want, out)
		}
	}
	if status, _, _ := runCLI("bench", "cpu", "--size", "7"); status != exitBadInput {
		t.Errorf("bench cpu --size 7: status %d, want %d", status, exitBadInput)
	}
}
