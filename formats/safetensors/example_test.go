package safetensors_test

import (
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/svdq/svdq/formats/safetensors"
)

// A quantizer declares its outputs up front, writes them as they are
// produced, and records parameters it only learns at the end.
func ExampleCreate() {
	dir, err := os.MkdirTemp("", "st-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "out.safetensors")

	specs := []safetensors.Spec{
		{Name: "proj.qweight", DType: safetensors.I8, Shape: []int64{4, 2}},
		{Name: "proj.wscales", DType: safetensors.BF16, Shape: []int64{1, 4}},
	}
	w, err := safetensors.Create(path, specs, map[string]string{"format": "pt"}, safetensors.ReserveHeader(256))
	if err != nil {
		log.Fatal(err)
	}
	defer w.Abort() // no-op once Close succeeded
	if err := w.Write("proj.wscales", make([]byte, 8)); err != nil {
		log.Fatal(err)
	}
	if err := w.Write("proj.qweight", []byte{1, 2, 3, 4, 5, 6, 7, 8}); err != nil {
		log.Fatal(err)
	}
	if err := w.SetMetadata(map[string]string{"format": "pt", "alpha": "0.5"}); err != nil {
		log.Fatal(err)
	}
	if err := w.Close(); err != nil {
		log.Fatal(err)
	}

	r, err := safetensors.OpenCheckpoint(dir)
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()
	for _, name := range r.Names() {
		info, _ := r.Info(name)
		b, _ := r.Bytes(name)
		fmt.Println(name, info.DType, info.Shape, len(b), "bytes")
	}
	fmt.Println(r.Metadata()["alpha"])
	// Output:
	// proj.qweight I8 [4 2] 8 bytes
	// proj.wscales BF16 [1 4] 8 bytes
	// 0.5
}
