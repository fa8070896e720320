//go:build !unix

package model

// dropPages does nothing here: safetensors reads files into memory instead
// of mapping them on this system.
func dropPages(b []byte) {}
