package preset

import "fmt"

// Elems returns the number of elements of the output shape.
func (k *Kept) Elems() int64 {
	n := int64(1)
	for _, d := range k.Shape {
		n *= d
	}
	return n
}

// Assemble builds the output bytes of a kept tensor. read returns the raw
// little-endian bytes and shape of a file tensor; elem is the bytes per
// element (all pieces share the dtype). With Transform "" the tensor's bytes
// are returned as they are. Otherwise a new zeroed buffer of Shape is
// filled: rows Rows of the output (dim 0; a row is the product of the other
// dimensions) receive rows SrcRows of each piece's tensor. Pieces whose row
// width differs from the output's are an error.
func (k *Kept) Assemble(read func(tensor string) ([]byte, []int64, error), elem int) ([]byte, error) {
	if k.Transform == "" {
		b, _, err := read(k.Tensor)
		return b, err
	}
	if len(k.Shape) == 0 {
		return nil, fmt.Errorf("preset: kept %s: no output shape", k.Name)
	}
	rowElems := int64(1)
	for _, d := range k.Shape[1:] {
		rowElems *= d
	}
	row := int(rowElems) * elem
	out := make([]byte, int(k.Shape[0])*row)
	for _, pc := range k.Pieces {
		b, s, err := read(pc.Tensor)
		if err != nil {
			return nil, err
		}
		if len(s) == 0 {
			return nil, fmt.Errorf("tensor %s: scalar cannot be a piece of %s", pc.Tensor, k.Name)
		}
		srcRow := int64(1)
		for _, d := range s[1:] {
			srcRow *= d
		}
		if srcRow != rowElems || pc.SrcRows.Hi > int(s[0]) || pc.Rows.Hi > int(k.Shape[0]) ||
			pc.SrcRows.Len() != pc.Rows.Len() || len(b) != int(s[0])*row {
			return nil, fmt.Errorf("tensor %s: shape %v does not fit rows %v -> %v of %s %v",
				pc.Tensor, s, pc.SrcRows, pc.Rows, k.Name, k.Shape)
		}
		copy(out[pc.Rows.Lo*row:pc.Rows.Hi*row], b[pc.SrcRows.Lo*row:pc.SrcRows.Hi*row])
	}
	return out, nil
}
