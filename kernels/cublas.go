package kernels

import (
	"fmt"
	"os"
	"path/filepath"
	"unsafe"

	"github.com/ebitengine/purego"
)

// cuBLAS through purego, for the BF16 baseline of the benchmark only.

type cublas struct {
	lib    string
	handle uintptr
	create func(h *uintptr) int32
	destr  func(h uintptr) int32
	gemmEx func(h uintptr, ta, tb int32, m, n, k int32, alpha unsafe.Pointer, a uint64, atype int32, lda int32,
		b uint64, btype int32, ldb int32, beta unsafe.Pointer, c uint64, ctype int32, ldc int32, compute int32, algo int32) int32
}

// cublasCandidates are the places libcublas is looked for, in order:
// $SVDQ_CUBLAS, the loader's search path, then the CUDA toolkit and the
// Python wheels' usual folders.
func cublasCandidates() []string {
	var c []string
	if p := os.Getenv("SVDQ_CUBLAS"); p != "" {
		c = append(c, p)
	}
	c = append(c, "libcublas.so.13", "libcublas.so.12", "libcublas.so")
	for _, pat := range []string{
		"/usr/local/cuda/lib64/libcublas.so*",
		"/usr/local/cuda/targets/*/lib/libcublas.so*",
		"/usr/local/cuda-*/lib64/libcublas.so*",
		"/usr/lib/x86_64-linux-gnu/libcublas.so*",
		"/opt/*/.venv/lib/python3*/site-packages/nvidia/cu*/lib/libcublas.so*",
		"/opt/*/.venv/lib/python3*/site-packages/nvidia/cublas/lib/libcublas.so*",
		"/usr/local/lib/python3*/dist-packages/nvidia/cu*/lib/libcublas.so*",
		"/usr/local/lib/python3*/dist-packages/nvidia/cublas/lib/libcublas.so*",
	} {
		m, _ := filepath.Glob(pat)
		c = append(c, m...)
	}
	return c
}

// loadCublas opens libcublas and creates a handle (device goroutine).
func (d *Device) loadCublas() (*cublas, error) {
	if d.cublas != nil {
		return d.cublas, nil
	}
	var errs []string
	for _, path := range cublasCandidates() {
		lib, err := purego.Dlopen(path, purego.RTLD_NOW|purego.RTLD_GLOBAL)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		cb := &cublas{lib: path}
		type sym = struct {
			fn    any
			names []string
		}
		if err := bind(lib, []sym{{&cb.create, []string{"cublasCreate_v2"}}, {&cb.destr, []string{"cublasDestroy_v2"}},
			{&cb.gemmEx, []string{"cublasGemmEx"}}}); err != nil {
			errs = append(errs, path+": "+err.Error())
			continue
		}
		if st := cb.create(&cb.handle); st != 0 {
			return nil, &Error{Call: "cublasCreate_v2 (" + path + ")", Code: int(st), Name: cublasStatus(st), Text: "cuBLAS status"}
		}
		d.cublas = cb
		return cb, nil
	}
	return nil, fmt.Errorf("kernels: cuBLAS not found (set SVDQ_CUBLAS to libcublas.so): %v", errs)
}

func (c *cublas) destroy() {
	if c.handle != 0 {
		c.destr(c.handle)
		c.handle = 0
	}
}

func cublasStatus(st int32) string {
	names := map[int32]string{1: "CUBLAS_STATUS_NOT_INITIALIZED", 3: "CUBLAS_STATUS_ALLOC_FAILED",
		7: "CUBLAS_STATUS_INVALID_VALUE", 8: "CUBLAS_STATUS_ARCH_MISMATCH", 11: "CUBLAS_STATUS_MAPPING_ERROR",
		13: "CUBLAS_STATUS_EXECUTION_FAILED", 14: "CUBLAS_STATUS_INTERNAL_ERROR", 15: "CUBLAS_STATUS_NOT_SUPPORTED"}
	if n, ok := names[st]; ok {
		return n
	}
	return fmt.Sprintf("CUBLAS_STATUS_%d", st)
}

// cuBLAS / CUDA data type constants.
const (
	cublasOpN       = 0
	cublasOpT       = 1
	cudaR16BF       = 14
	cudaR32F        = 0
	cublasCompute32 = 68
	cublasGemmDflt  = -1
)

// gemmBF16 enqueues y [m, n] = x [m, k] · w [n, k]ᵀ with BF16 operands and
// output, FP32 accumulation (device goroutine). In cuBLAS's column-major
// terms: yᵀ (n×m) = wᵀᵀ·xᵀ, i.e. op(A) = Aᵀ with A = w seen as k×n.
func (c *cublas) gemmBF16(y, x, w uint64, m, n, k int) error {
	alpha, beta := float32(1), float32(0)
	st := c.gemmEx(c.handle, cublasOpT, cublasOpN, int32(n), int32(m), int32(k), unsafe.Pointer(&alpha),
		w, cudaR16BF, int32(k), x, cudaR16BF, int32(k), unsafe.Pointer(&beta), y, cudaR16BF, int32(n),
		cublasCompute32, cublasGemmDflt)
	if st != 0 {
		return &Error{Call: "cublasGemmEx (BF16)", Code: int(st), Name: cublasStatus(st), Text: "cuBLAS status"}
	}
	return nil
}
