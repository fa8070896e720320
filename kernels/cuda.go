package kernels

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"unsafe"

	"github.com/ebitengine/purego"
)

// The CUDA driver API through purego (dlopen of libcuda.so.1, no cgo). Only
// the functions below are used; each result is checked and an error names
// the call that failed with the driver's own error name and text.

// ErrNoDriver is wrapped by Open's error when no usable CUDA driver or GPU
// is present (no libcuda, a missing symbol, cuInit failing, no device).
var ErrNoDriver = errors.New("no CUDA driver found")

type cuResult int32

// Error is a failed CUDA driver (or cuBLAS) call.
type Error struct {
	Call string // e.g. "cuMemAlloc_v2" or "cuCtxSynchronize after svdq_gemm_int4_bf16_f32_fused"
	Code int
	Name string // e.g. "CUDA_ERROR_OUT_OF_MEMORY"
	Text string
}

func (e *Error) Error() string {
	return fmt.Sprintf("kernels: %s failed: %s (%d): %s", e.Call, e.Name, e.Code, e.Text)
}

// driver holds the libcuda entry points.
type driver struct {
	cuInit                    func(flags uint32) cuResult
	cuDriverGetVersion        func(v *int32) cuResult
	cuDeviceGetCount          func(n *int32) cuResult
	cuDeviceGet               func(dev *int32, ordinal int32) cuResult
	cuDeviceGetName           func(name *byte, n int32, dev int32) cuResult
	cuDeviceGetAttribute      func(v *int32, attr int32, dev int32) cuResult
	cuDeviceTotalMem          func(bytes *uint64, dev int32) cuResult
	cuDevicePrimaryCtxRetain  func(ctx *uintptr, dev int32) cuResult
	cuDevicePrimaryCtxRelease func(dev int32) cuResult
	cuCtxSetCurrent           func(ctx uintptr) cuResult
	cuCtxSynchronize          func() cuResult
	cuModuleLoadDataEx        func(mod *uintptr, image unsafe.Pointer, n uint32, opts *int32, vals *uintptr) cuResult
	cuModuleUnload            func(mod uintptr) cuResult
	cuModuleGetFunction       func(fn *uintptr, mod uintptr, name *byte) cuResult
	cuMemAlloc                func(p *uint64, size uint64) cuResult
	cuMemFree                 func(p uint64) cuResult
	cuMemcpyHtoD              func(dst uint64, src unsafe.Pointer, n uint64) cuResult
	cuMemcpyDtoH              func(dst unsafe.Pointer, src uint64, n uint64) cuResult
	cuMemsetD8                func(dst uint64, v uint8, n uint64) cuResult
	cuLaunchKernel            func(f uintptr, gx, gy, gz, bx, by, bz, shmem uint32, stream uintptr, params, extra unsafe.Pointer) cuResult
	cuFuncSetAttribute        func(f uintptr, attr int32, v int32) cuResult
	cuEventCreate             func(ev *uintptr, flags uint32) cuResult
	cuEventRecord             func(ev, stream uintptr) cuResult
	cuEventSynchronize        func(ev uintptr) cuResult
	cuEventElapsedTime        func(ms *float32, start, end uintptr) cuResult
	cuEventDestroy            func(ev uintptr) cuResult
	cuGetErrorName            func(code cuResult, s **byte) cuResult
	cuGetErrorString          func(code cuResult, s **byte) cuResult
}

// driverSymbols maps each entry point to the exported names tried in order
// (the _v2 ABI first where libcuda has one).
func (d *driver) symbols() []struct {
	fn    any
	names []string
} {
	type sym = struct {
		fn    any
		names []string
	}
	return []sym{
		{&d.cuInit, []string{"cuInit"}},
		{&d.cuDriverGetVersion, []string{"cuDriverGetVersion"}},
		{&d.cuDeviceGetCount, []string{"cuDeviceGetCount"}},
		{&d.cuDeviceGet, []string{"cuDeviceGet"}},
		{&d.cuDeviceGetName, []string{"cuDeviceGetName"}},
		{&d.cuDeviceGetAttribute, []string{"cuDeviceGetAttribute"}},
		{&d.cuDeviceTotalMem, []string{"cuDeviceTotalMem_v2"}},
		{&d.cuDevicePrimaryCtxRetain, []string{"cuDevicePrimaryCtxRetain"}},
		{&d.cuDevicePrimaryCtxRelease, []string{"cuDevicePrimaryCtxRelease_v2", "cuDevicePrimaryCtxRelease"}},
		{&d.cuCtxSetCurrent, []string{"cuCtxSetCurrent"}},
		{&d.cuCtxSynchronize, []string{"cuCtxSynchronize"}},
		{&d.cuModuleLoadDataEx, []string{"cuModuleLoadDataEx"}},
		{&d.cuModuleUnload, []string{"cuModuleUnload"}},
		{&d.cuModuleGetFunction, []string{"cuModuleGetFunction"}},
		{&d.cuMemAlloc, []string{"cuMemAlloc_v2"}},
		{&d.cuMemFree, []string{"cuMemFree_v2"}},
		{&d.cuMemcpyHtoD, []string{"cuMemcpyHtoD_v2"}},
		{&d.cuMemcpyDtoH, []string{"cuMemcpyDtoH_v2"}},
		{&d.cuMemsetD8, []string{"cuMemsetD8_v2"}},
		{&d.cuLaunchKernel, []string{"cuLaunchKernel"}},
		{&d.cuFuncSetAttribute, []string{"cuFuncSetAttribute"}},
		{&d.cuEventCreate, []string{"cuEventCreate"}},
		{&d.cuEventRecord, []string{"cuEventRecord"}},
		{&d.cuEventSynchronize, []string{"cuEventSynchronize"}},
		{&d.cuEventElapsedTime, []string{"cuEventElapsedTime_v2", "cuEventElapsedTime"}},
		{&d.cuEventDestroy, []string{"cuEventDestroy_v2", "cuEventDestroy"}},
		{&d.cuGetErrorName, []string{"cuGetErrorName"}},
		{&d.cuGetErrorString, []string{"cuGetErrorString"}},
	}
}

var (
	drvOnce sync.Once
	drv     *driver
	drvErr  error
)

// loadDriver opens libcuda.so.1 once and binds every entry point.
func loadDriver() (*driver, error) {
	drvOnce.Do(func() {
		lib, err := purego.Dlopen("libcuda.so.1", purego.RTLD_NOW|purego.RTLD_GLOBAL)
		if err != nil {
			drvErr = fmt.Errorf("kernels: %w: dlopen libcuda.so.1: %v", ErrNoDriver, err)
			return
		}
		d := &driver{}
		if err := bind(lib, d.symbols()); err != nil {
			drvErr = fmt.Errorf("kernels: %w: libcuda.so.1: %v", ErrNoDriver, err)
			return
		}
		drv = d
	})
	return drv, drvErr
}

// bind resolves each symbol (first name found wins) into its Go func.
func bind(lib uintptr, syms []struct {
	fn    any
	names []string
}) error {
	for _, s := range syms {
		var addr uintptr
		for _, name := range s.names {
			if a, err := purego.Dlsym(lib, name); err == nil && a != 0 {
				addr = a
				break
			}
		}
		if addr == 0 {
			return fmt.Errorf("symbol %s not found", s.names[0])
		}
		purego.RegisterFunc(s.fn, addr)
	}
	return nil
}

// check turns a driver result into an *Error naming call (nil for success).
func (d *driver) check(call string, r cuResult) error {
	if r == 0 {
		return nil
	}
	e := &Error{Call: call, Code: int(r), Name: "CUDA_ERROR_UNKNOWN_CODE", Text: "unknown error"}
	var p *byte
	if d.cuGetErrorName(r, &p) == 0 && p != nil {
		e.Name = cString(p)
	}
	if d.cuGetErrorString(r, &p) == 0 && p != nil {
		e.Text = cString(p)
	}
	return e
}

// cString copies a NUL-terminated C string owned by the driver.
func cString(p *byte) string {
	var b []byte
	for q := unsafe.Pointer(p); *(*byte)(q) != 0; q = unsafe.Add(q, 1) {
		b = append(b, *(*byte)(q))
	}
	return string(b)
}

// Device attributes (CUdevice_attribute).
const (
	attrMultiprocessorCount = 16
	attrComputeCapMajor     = 75
	attrComputeCapMinor     = 76
	attrL2CacheSize         = 38
)

// funcAttrMaxDynamicSmem is CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES:
// kernels that take more than 48 KiB of dynamic shared memory must raise it.
const funcAttrMaxDynamicSmem = 8

// Device is one GPU with its primary context and the svdq module loaded.
// A CUDA context is current per OS thread, so every driver call runs on one
// goroutine locked to its thread; the methods hand work to it and wait.
// A Device is safe for use by several goroutines (calls are serialised).
type Device struct {
	drv    *driver
	calls  chan func()
	mu     sync.Mutex // guards closed
	closed bool

	// Set once by Open.
	ordinal      int32
	ctx          uintptr
	mod          uintptr
	Name         string // e.g. "NVIDIA H100 80GB HBM3"
	Major, Minor int    // compute capability
	SMs          int    // multiprocessors
	L2Bytes      int
	MemBytes     uint64
	DriverVer    int // e.g. 13000 for CUDA 13.0
	PTX          PTXInfo
	// WGMMA: the INT4 GEMM runs on the wgmma kernels (the sm90a PTX,
	// unless GemmEnv said "mma" when Open ran).
	WGMMA      bool
	fns        map[string]uintptr
	smemLimit  map[uintptr]uint32 // dynamic shared memory limits raised so far
	cublas     *cublas
	lastKernel string
}

// Open initialises the driver, retains the primary context of GPU ordinal
// and loads the embedded PTX that suits its compute capability (JIT-compiled
// by the driver). The error wraps ErrNoDriver when there is no usable
// driver or device. Close releases it.
func Open(ordinal int) (*Device, error) {
	dr, err := loadDriver()
	if err != nil {
		return nil, err
	}
	d := &Device{drv: dr, calls: make(chan func()), ordinal: int32(ordinal), fns: map[string]uintptr{},
		smemLimit: map[uintptr]uint32{}}
	ready := make(chan error, 1)
	go d.loop(ready)
	if err := <-ready; err != nil {
		return nil, err
	}
	return d, nil
}

// loop is the device goroutine: it owns an OS thread with the context
// current and runs the calls handed to it until Close.
func (d *Device) loop(ready chan<- error) {
	runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
	if err := d.init(); err != nil {
		ready <- err
		return
	}
	ready <- nil
	for f := range d.calls {
		f()
	}
}

func (d *Device) init() error {
	dr := d.drv
	if r := dr.cuInit(0); r != 0 {
		return fmt.Errorf("kernels: %w: %v", ErrNoDriver, dr.check("cuInit", r))
	}
	var ver, count int32
	if err := dr.check("cuDriverGetVersion", dr.cuDriverGetVersion(&ver)); err != nil {
		return err
	}
	d.DriverVer = int(ver)
	if err := dr.check("cuDeviceGetCount", dr.cuDeviceGetCount(&count)); err != nil {
		return err
	}
	if d.ordinal < 0 || d.ordinal >= count {
		return fmt.Errorf("kernels: %w: GPU %d requested, %d present", ErrNoDriver, d.ordinal, count)
	}
	var dev int32
	if err := dr.check("cuDeviceGet", dr.cuDeviceGet(&dev, d.ordinal)); err != nil {
		return err
	}
	name := make([]byte, 256)
	if err := dr.check("cuDeviceGetName", dr.cuDeviceGetName(&name[0], int32(len(name)), dev)); err != nil {
		return err
	}
	d.Name = cString(&name[0])
	attrs := []struct {
		attr int32
		dst  *int
	}{{attrComputeCapMajor, &d.Major}, {attrComputeCapMinor, &d.Minor}, {attrMultiprocessorCount, &d.SMs}, {attrL2CacheSize, &d.L2Bytes}}
	for _, a := range attrs {
		var v int32
		if err := dr.check("cuDeviceGetAttribute", dr.cuDeviceGetAttribute(&v, a.attr, dev)); err != nil {
			return err
		}
		*a.dst = int(v)
	}
	if err := dr.check("cuDeviceTotalMem_v2", dr.cuDeviceTotalMem(&d.MemBytes, dev)); err != nil {
		return err
	}
	info, err := ptxFor(d.Major, d.Minor)
	if err != nil {
		return err
	}
	d.PTX = info
	d.WGMMA = info.Target == "sm90a" && os.Getenv(GemmEnv) != "mma"
	if err := dr.check("cuDevicePrimaryCtxRetain", dr.cuDevicePrimaryCtxRetain(&d.ctx, dev)); err != nil {
		return err
	}
	if err := dr.check("cuCtxSetCurrent", dr.cuCtxSetCurrent(d.ctx)); err != nil {
		dr.cuDevicePrimaryCtxRelease(d.ordinal)
		return err
	}
	if err := d.loadModule(info.Text); err != nil {
		dr.cuDevicePrimaryCtxRelease(d.ordinal)
		return fmt.Errorf("%w (PTX %s)", err, info.File)
	}
	return nil
}

// JIT options (CUjit_option).
const (
	jitInfoLogBuffer      = 3
	jitInfoLogBufferSize  = 4
	jitErrorLogBuffer     = 5
	jitErrorLogBufferSize = 6
)

// loadModule JIT-compiles PTX text; a failure carries the JIT error log.
func (d *Device) loadModule(text []byte) error {
	img := make([]byte, len(text)+1) // NUL-terminated copy
	copy(img, text)
	errLog := make([]byte, 1<<14)
	opts := []int32{jitErrorLogBuffer, jitErrorLogBufferSize}
	vals := []uintptr{uintptr(unsafe.Pointer(&errLog[0])), uintptr(len(errLog))}
	r := d.drv.cuModuleLoadDataEx(&d.mod, unsafe.Pointer(&img[0]), uint32(len(opts)), &opts[0], &vals[0])
	runtime.KeepAlive(errLog)
	runtime.KeepAlive(img)
	if err := d.drv.check("cuModuleLoadDataEx", r); err != nil {
		if log := cString(&errLog[0]); log != "" {
			return fmt.Errorf("%w\nJIT log:\n%s", err, log)
		}
		return err
	}
	return nil
}

// do runs f on the device goroutine and returns its error.
func (d *Device) do(f func() error) error {
	d.mu.Lock()
	closed := d.closed
	d.mu.Unlock()
	if closed {
		return errors.New("kernels: device is closed")
	}
	errc := make(chan error, 1)
	d.calls <- func() { errc <- f() }
	return <-errc
}

// Close unloads the module and releases the context. The Device must not be
// used afterwards; Close is idempotent.
func (d *Device) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.mu.Unlock()
	err := d.do(func() error {
		if d.cublas != nil {
			d.cublas.destroy()
		}
		err := d.drv.check("cuModuleUnload", d.drv.cuModuleUnload(d.mod))
		if e := d.drv.check("cuDevicePrimaryCtxRelease", d.drv.cuDevicePrimaryCtxRelease(d.ordinal)); err == nil {
			err = e
		}
		return err
	})
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	close(d.calls)
	return err
}

// String describes the device in one line.
func (d *Device) String() string {
	return fmt.Sprintf("%s (sm_%d%d, %d SMs, %.0f GiB, driver %d.%d, PTX %s)", d.Name, d.Major, d.Minor, d.SMs,
		float64(d.MemBytes)/(1<<30), d.DriverVer/1000, d.DriverVer%1000/10, d.PTX.Target)
}

// ---- helpers that run on the device goroutine (inside do) ----

// fn returns the kernel called name, looked up once.
func (d *Device) fn(name string) (uintptr, error) {
	if f, ok := d.fns[name]; ok {
		return f, nil
	}
	cname := append([]byte(name), 0)
	var f uintptr
	if err := d.drv.check("cuModuleGetFunction("+name+")", d.drv.cuModuleGetFunction(&f, d.mod, &cname[0])); err != nil {
		return 0, err
	}
	d.fns[name] = f
	return f, nil
}

// launch starts kernel name on the default stream. Each argument is a
// uint64 (device pointer or size_t), int32, uint32 or float32, passed by
// address as cuLaunchKernel wants.
func (d *Device) launch(name string, grid, block [3]uint32, args ...any) error {
	return d.launchSmem(name, grid, block, 0, args...)
}

// launchSmem is launch with smem bytes of dynamic shared memory (the
// kernel's limit raised first where it exceeds the default 48 KiB).
func (d *Device) launchSmem(name string, grid, block [3]uint32, smem uint32, args ...any) error {
	f, err := d.fn(name)
	if err != nil {
		return err
	}
	if smem > 48<<10 && d.smemLimit[f] < smem {
		if err := d.drv.check("cuFuncSetAttribute("+name+", max dynamic shared memory)",
			d.drv.cuFuncSetAttribute(f, funcAttrMaxDynamicSmem, int32(smem))); err != nil {
			return err
		}
		d.smemLimit[f] = smem
	}
	vals := make([]uint64, len(args)) // one 8-byte slot per argument (little-endian)
	ptrs := make([]unsafe.Pointer, len(args)+1)
	for i, a := range args {
		switch v := a.(type) {
		case uint64:
			vals[i] = v
		case int32:
			*(*int32)(unsafe.Pointer(&vals[i])) = v
		case uint32:
			*(*uint32)(unsafe.Pointer(&vals[i])) = v
		case float32:
			*(*float32)(unsafe.Pointer(&vals[i])) = v
		default:
			panic(fmt.Sprintf("kernels: launch %s: argument %d has unsupported type %T", name, i, a))
		}
		ptrs[i] = unsafe.Pointer(&vals[i])
	}
	r := d.drv.cuLaunchKernel(f, grid[0], grid[1], grid[2], block[0], block[1], block[2], smem, 0, unsafe.Pointer(&ptrs[0]), nil)
	runtime.KeepAlive(vals)
	runtime.KeepAlive(ptrs)
	d.lastKernel = name
	return d.drv.check("cuLaunchKernel("+name+")", r)
}

// sync waits for the device; an error is attributed to the last kernel.
func (d *Device) sync() error {
	call := "cuCtxSynchronize"
	if d.lastKernel != "" {
		call += " after " + d.lastKernel
	}
	return d.drv.check(call, d.drv.cuCtxSynchronize())
}

func (d *Device) alloc(n int) (uint64, error) {
	var p uint64
	if n == 0 {
		n = 16 // a valid pointer for empty tensors
	}
	if err := d.drv.check(fmt.Sprintf("cuMemAlloc_v2(%d bytes)", n), d.drv.cuMemAlloc(&p, uint64(n))); err != nil {
		return 0, err
	}
	return p, nil
}

func (d *Device) free(p uint64) error {
	if p == 0 {
		return nil
	}
	return d.drv.check("cuMemFree_v2", d.drv.cuMemFree(p))
}

// upload allocates device memory for b and copies it there.
func (d *Device) upload(b []byte) (uint64, error) {
	p, err := d.alloc(len(b))
	if err != nil {
		return 0, err
	}
	if len(b) > 0 {
		if err := d.drv.check("cuMemcpyHtoD_v2", d.drv.cuMemcpyHtoD(p, unsafe.Pointer(&b[0]), uint64(len(b)))); err != nil {
			d.free(p)
			return 0, err
		}
	}
	return p, nil
}

func (d *Device) download(dst []byte, src uint64) error {
	if len(dst) == 0 {
		return nil
	}
	return d.drv.check("cuMemcpyDtoH_v2", d.drv.cuMemcpyDtoH(unsafe.Pointer(&dst[0]), src, uint64(len(dst))))
}

func (d *Device) memset(p uint64, v uint8, n int) error {
	return d.drv.check("cuMemsetD8_v2", d.drv.cuMemsetD8(p, v, uint64(n)))
}

// ptrOf returns the address of b's first byte (b must be non-empty).
func ptrOf(b []byte) unsafe.Pointer { return unsafe.Pointer(&b[0]) }
