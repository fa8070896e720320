package model

import (
	"math/rand/v2"
	"slices"
	"testing"
)

func TestParseShard(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Shard
		ok   bool
	}{
		{"0/4", Shard{0, 4}, true},
		{"3/4", Shard{3, 4}, true},
		{"0/1", Shard{0, 1}, true},
		{" 2 / 5 ", Shard{2, 5}, true},
		{"4/4", Shard{}, false}, // I counts from 0
		{"-1/4", Shard{}, false},
		{"1/0", Shard{}, false},
		{"1", Shard{}, false},
		{"a/4", Shard{}, false},
		{"0/5000", Shard{}, false},
		{"", Shard{}, false},
	} {
		got, err := ParseShard(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseShard(%q) = %v, %v; want %v, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

// TestAssignShardsExample: the greedy deal worked by hand. Costs 5 4 3 3 3
// on 2 shards, largest first: 5→s0, 4→s1, 3 (unit 2)→s1 (7), 3 (unit 3)
// →s0 (8), 3 (unit 4)→s1 (10).
func TestAssignShardsExample(t *testing.T) {
	got := assignShards([]float64{5, 4, 3, 3, 3}, 2)
	want := [][]int{{0, 3}, {1, 2, 4}}
	if !slices.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("assignShards = %v, want %v", got, want)
	}
	// More shards than units: the extra shards are empty.
	got = assignShards([]float64{1, 2}, 4)
	if want := [][]int{{1}, {0}, nil, nil}; !slices.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("assignShards = %v, want %v", got, want)
	}
}

// TestAssignShardsBalance: on random costs every unit is dealt once and
// the heaviest shard is within the greedy rule's bound, average plus
// the largest unit.
func TestAssignShardsBalance(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 200 {
		n := 1 + rng.IntN(8)
		costs := make([]float64, 1+rng.IntN(60))
		var total, biggest float64
		for i := range costs {
			costs[i] = rng.Float64() * 100
			total += costs[i]
			biggest = max(biggest, costs[i])
		}
		deal := assignShards(costs, n)
		seen := make([]int, len(costs))
		heaviest := 0.0
		for _, s := range deal {
			load := 0.0
			for _, u := range s {
				seen[u]++
				load += costs[u]
			}
			heaviest = max(heaviest, load)
			if !slices.IsSorted(s) {
				t.Fatalf("trial %d: shard %v not sorted", trial, s)
			}
		}
		for u, c := range seen {
			if c != 1 {
				t.Fatalf("trial %d: unit %d dealt %d times", trial, u, c)
			}
		}
		if heaviest > total/float64(n)+biggest+1e-9 {
			t.Fatalf("trial %d: heaviest shard %.1f > mean %.1f + largest %.1f", trial, heaviest, total/float64(n), biggest)
		}
		if !slices.EqualFunc(deal, assignShards(costs, n), slices.Equal) {
			t.Fatalf("trial %d: deal not deterministic", trial)
		}
	}
}

// TestShardCostBalance: on the tiny FLUX plan 4 shards are balanced by
// cost: no shard carries more than the mean plus the costliest unit,
// though the shards hold different numbers of layers.
func TestShardCostBalance(t *testing.T) {
	model, cal := tinyModel(t)
	p := shardPlan(t, fastOptions(model, cal, ""))
	ol, err := p.outline("svdq test", map[string]CalibRef{})
	if err != nil {
		t.Fatal(err)
	}
	var total, biggest float64
	for _, c := range ol.Costs {
		total += c
		biggest = max(biggest, c)
	}
	for i, s := range assignShards(ol.Costs, 4) {
		load := 0.0
		for _, u := range s {
			load += ol.Costs[u]
		}
		if load > total/4+biggest {
			t.Errorf("shard %d: cost %.0f, mean %.0f, largest unit %.0f", i, load, total/4, biggest)
		}
	}
}
