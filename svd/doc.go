// Package svd holds the dense float32 kernels that SVDQuant needs and the
// truncated singular value decompositions built on them: a rank-R randomized
// SVD (Halko, Martinsson & Tropp, "Finding structure with randomness",
// SIAM Review 53(2), 2011: range finder with power iterations, thin QR, small
// exact SVD) and an exact path through gonum's mat.SVD used to verify it.
//
// Matrices are row-major float32 slices with an explicit leading dimension
// (the row stride), as in BLAS's row-major convention. The package imports
// nothing of this module.
package svd
