package quant

import "fmt"

// layerRelError returns ‖Y_q − (X·Wᵀ + b)‖_F / ‖X·Wᵀ‖_F for the stored
// layer l on the rows x ([s, k]), with yref = X·Wᵀ (float64, bias
// excluded): Y_q from Layer.ForwardFast, the original bias b taken out of
// it so that only the bias's rounding and correction count.
func layerRelError(l *Layer, in Input, x []float32, s int, yref []float64) (float64, error) {
	yq := make([]float32, s*l.N)
	l.ForwardFast(yq, x, s)
	if in.Bias != nil {
		for i := 0; i < s; i++ {
			row := yq[i*l.N : (i+1)*l.N]
			for j, b := range in.Bias {
				row[j] -= b
			}
		}
	}
	e := RelError(yq, yref)
	if e != e {
		return 0, fmt.Errorf("%s: the quantized layer's output is not finite", in.Name)
	}
	return e, nil
}
