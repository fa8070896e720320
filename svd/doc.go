// Package svd holds the dense float32 kernels that SVDQuant needs and the
// truncated singular value decompositions built on them.
//
// Gemm is a BLIS-style matrix product (Goto & van de Geijn, "Anatomy of
// high-performance matrix multiplication", ACM TOMS 34(3), 2008): kc-deep
// passes, op(B) packed into nr-wide panels shared by all workers, op(A)
// packed per worker into mr-high panels (or read in place for narrow
// products), and an mr×nr register-tile micro-kernel in Go assembly:
// AVX-512 12×32 and 8×48 tiles, AVX2+FMA 6×16, chosen at run time with
// golang.org/x/sys/cpu, and a portable 4×4 Go kernel (the only one off
// amd64, or with the purego build tag). A cost model picks the tile and
// whether to compute C or Cᵀ. GemmRef is the plain reference it is tested
// against.
//
// Randomized is the rank-R randomized SVD of Halko, Martinsson & Tropp
// ("Finding structure with randomness", SIAM Review 53(2), 2011): range
// finder with power (subspace) iterations, thin Householder QR in float64,
// small exact SVD, with an optional warm start from a previous right basis.
// Exact goes through gonum's mat.SVD and exists to verify it.
//
// Matrices are row-major float32 slices with an explicit leading dimension
// (the row stride), as in BLAS's row-major convention. The package imports
// nothing of this module.
package svd
