package preset

import (
	"fmt"
	"regexp"
	"strings"
)

// generic quantizes every 2-D linear weight selected by --include/--exclude
// as its own W4A4 layer named after its module; everything else stays 16-bit.
// The default selection (no --include) is every 2-D tensor named
// "….weight" with both dimensions ≥ 128 whose module is not an embedder,
// a final projection or a norm by a name component (see
// genericSkip); --include replaces it (a tensor must still be 2-D), and
// --exclude removes from either. Layers share no smoothing group and none
// is shifted: generic knows nothing of the architecture.
type generic struct{}

var _ Family = generic{}

const genericName = "generic"

func init() { register(generic{}) }

func (generic) Name() string { return genericName }

// Detect is false: generic is chosen only by name.
func (generic) Detect(Table) bool { return false }

// genericSkip matches module names the default selection leaves 16-bit: a
// name component that is an input or output projection of the whole model
// (img_in, txt_in, proj_out, lm_head, final_layer), or mentions an
// embedding or a norm (x_embedder, embed_tokens, norm_out, …).
var genericSkip = regexp.MustCompile(`(^|\.)(img_in|txt_in|proj_out|lm_head|final_layer|\w*embed\w*|\w*norm\w*)(\.|$)`)

func (generic) Plan(t Table, opt Options) (*Plan, error) {
	p := newPlanner(t, genericName, "", "generic", "")
	selected := func(name string, s []int64) bool {
		if len(s) != 2 || !strings.HasSuffix(name, ".weight") {
			return false
		}
		if len(opt.Include) > 0 {
			if !anyMatch(opt.Include, name) {
				return false
			}
		} else if s[0] < 128 || s[1] < 128 || genericSkip.MatchString(strings.TrimSuffix(name, ".weight")) {
			return false
		}
		return !anyMatch(opt.Exclude, name)
	}
	for _, name := range t.Names() {
		s, _ := t.Shape(name)
		if !selected(name, s) {
			continue
		}
		module := strings.TrimSuffix(name, ".weight")
		p.block([]layerDecl{{name: module, role: W4A4, reason: "selected linear",
			parts: []part{{module: module}}}}, dims{}, "", "", "", false)
	}
	if len(p.plan.Layers) == 0 {
		return nil, fmt.Errorf("preset generic: no 2-D weight selected (%d tensors)", len(t.Names()))
	}
	p.plan.Config = "{}"
	return p.finish(opt, func(local string) (string, string, bool) { return local, "not selected", true })
}

// Skeleton is not defined for generic.
func (generic) Skeleton(SkeletonOptions) ([]TensorSpec, error) {
	return nil, fmt.Errorf("family generic has no skeleton; name an architecture")
}

func anyMatch(res []*regexp.Regexp, s string) bool {
	for _, re := range res {
		if re.MatchString(s) {
			return true
		}
	}
	return false
}
