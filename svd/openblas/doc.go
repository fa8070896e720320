// Package openblas measures OpenBLAS's sgemm, the reference point for
// svd.Gemm in `svdq bench cpu`. The measurement exists only in builds with
// the openblas tag (cgo, linking -lopenblas; Debian libopenblas-dev); the
// default build is pure Go and Bench returns 0 with BuiltIn false. It is a
// separate package because a package using cgo cannot hold Go assembly.
package openblas
