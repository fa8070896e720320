package model

import (
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestCrossCheckRoundTrip stands in for nunchaku's kernels (crosscheck.cu):
// it writes, into the exported directory, outputs made from the emulation
// and checks that compare accepts them, catches a one-ulp difference, and
// tells a down-projection sum that rounds the other way (nunchaku's atomic
// order) from an unexplained difference.
func TestCrossCheckRoundTrip(t *testing.T) {
	model, calib := tinyModel(t)
	out := filepath.Join(t.TempDir(), "q.safetensors")
	opt := fastOptions(model, calib, out)
	if _, err := Quantize(opt); err != nil {
		t.Fatal(err)
	}
	xo := CrossCheckOptions{Model: out, Reference: model, Calib: calib, Rows: 16, Dir: t.TempDir(),
		Layers: mustRegexp(`^transformer_blocks\.0\.(mlp_fc2|qkv_proj)$`)}
	n, err := CrossCheckExport(xo)
	if err != nil || n != 2 {
		t.Fatalf("export: %d layers, %v", n, err)
	}
	list, err := os.ReadFile(filepath.Join(xo.Dir, "layers.txt"))
	if err != nil {
		t.Fatal(err)
	}
	in, err := crossInputs(xo)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	type sim struct {
		l    *packedRows
		lora []float32 // [m, R stored]
		y    []uint16  // [m, NPad]
		dir  string
	}
	var sims []sim
	for i, line := range strings.Split(strings.TrimSpace(string(list)), "\n") {
		f := strings.Fields(line)
		l, err := in.crossLayer(i, xo.Rows)
		if err != nil {
			t.Fatal(err)
		}
		p := l.p
		if f[1] != l.name || f[3] != map[bool]string{true: "1", false: "0"}[p.Unsigned] ||
			f[4] != strconv.Itoa(l.m) || f[5] != strconv.Itoa(p.NPad()) || f[6] != strconv.Itoa(p.KPad()) || f[7] != strconv.Itoa(p.R) {
			t.Fatalf("layers.txt line %q for %s", line, l.name)
		}
		// x.bin: the rows rounded to the 16-bit type.
		xb, _ := os.ReadFile(filepath.Join(xo.Dir, f[0], "x.bin"))
		if len(xb) != 2*l.m*p.KPad() || binary.LittleEndian.Uint16(xb[2:]) != p.DType.Bits(l.x[1]) {
			t.Fatalf("%s: x.bin", l.name)
		}
		s := sim{l: l, lora: make([]float32, l.m*p.R), y: make([]uint16, l.m*p.NPad()), dir: filepath.Join(xo.Dir, f[0])}
		sums := l.ql.LowRankSums(l.x, l.m)
		for r := 0; r < l.m; r++ {
			copy(s.lora[r*p.R:], sums[r*l.ql.R:(r+1)*l.ql.R])
		}
		sims = append(sims, s)
	}
	write := func(s sim) {
		ql, p := s.l.ql, s.l.p
		lora := make([]float32, s.l.m*ql.R)
		for r := 0; r < s.l.m; r++ {
			copy(lora[r*ql.R:(r+1)*ql.R], s.lora[r*p.R:])
		}
		y := make([]float32, s.l.m*ql.N)
		ql.ForwardLoRA(y, s.l.x, s.l.m, lora, ql.R)
		for r := 0; r < s.l.m; r++ {
			for n := 0; n < ql.N; n++ {
				s.y[r*p.NPad()+n] = p.DType.Bits(y[r*ql.N+n])
			}
		}
		yb := make([]byte, 2*len(s.y))
		for i, v := range s.y {
			binary.LittleEndian.PutUint16(yb[2*i:], v)
		}
		lb := make([]byte, 4*len(s.lora))
		for i, v := range s.lora {
			binary.LittleEndian.PutUint32(lb[4*i:], math.Float32bits(v))
		}
		if os.WriteFile(filepath.Join(s.dir, "y_nk.bin"), yb, 0o644) != nil || os.WriteFile(filepath.Join(s.dir, "lora_nk.bin"), lb, 0o644) != nil {
			t.Fatal("write")
		}
	}
	for _, s := range sims {
		write(s)
	}
	rep, err := CrossCheckCompare(xo, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Passed || rep.Given.Differ() != 0 || rep.Own.Differ() != 0 || rep.Outputs == 0 {
		t.Fatalf("identical outputs: %+v", rep)
	}

	// A sum that rounds to the other 16-bit neighbour, as nunchaku's atomics
	// may make it: the outputs follow it, compare explains the difference.
	s := sims[0]
	dt := s.l.p.DType
	a := s.lora[3*s.l.p.R+1]
	up := dt.Round(a)
	next := math.Nextafter32(up, float32(math.Inf(1)))
	for dt.Round(next) == up {
		next = math.Nextafter32(next, float32(math.Inf(1)))
	}
	s.lora[3*s.l.p.R+1] = next
	write(s)
	rep, err = CrossCheckCompare(xo, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Passed || rep.Layers[0].Sums16Differ != 1 || rep.Layers[0].OwnRowsUnexplained != 0 || rep.Given.Differ() != 0 {
		t.Fatalf("reordered sum: %+v", rep.Layers[0])
	}

	// One output one ulp off: fails.
	s.y[5*s.l.p.NPad()+2]++
	yb := make([]byte, 2*len(s.y))
	for i, v := range s.y {
		binary.LittleEndian.PutUint16(yb[2*i:], v)
	}
	if err := os.WriteFile(filepath.Join(s.dir, "y_nk.bin"), yb, 0o644); err != nil {
		t.Fatal(err)
	}
	rep, err = CrossCheckCompare(xo, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Passed || rep.Given[1] != 1 || rep.Layers[0].OwnRowsUnexplained != 1 {
		t.Fatalf("one ulp off: passed %v, given %v, unexplained %d", rep.Passed, rep.Given, rep.Layers[0].OwnRowsUnexplained)
	}
	// A missing output file is an error naming it.
	os.Remove(filepath.Join(sims[1].dir, "y_nk.bin"))
	if _, err := CrossCheckCompare(xo, nil); err == nil || !strings.Contains(err.Error(), "y_nk.bin") {
		t.Fatalf("missing y_nk.bin: %v", err)
	}
}
