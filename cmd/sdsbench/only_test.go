package main

import (
	"maps"
	"slices"
	"testing"
)

func TestParseOnly(t *testing.T) {
	tests := []struct {
		name  string
		list  string
		quick bool
		want  []string
		err   bool
	}{
		{name: "default runs every figure", want: figureKeys},
		{name: "quick leaves out the hostile figures", quick: true, want: []string{"exec", "fanout", "request", "rss"}},
		{name: "a subset", list: "logflood, churn", want: []string{"churn", "logflood"}},
		{name: "quick with -only runs what it names", list: "limits", quick: true, want: []string{"limits"}},
		{name: "unknown figure", list: "exec,flood", err: true},
		{name: "peers only when named", list: "peers", want: []string{"peers"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseOnly(tt.list, tt.quick)
			if (err != nil) != tt.err {
				t.Fatalf("error %v, want error %v", err, tt.err)
			}
			if tt.err {
				return
			}
			want := slices.Sorted(slices.Values(tt.want))
			if keys := slices.Sorted(maps.Keys(got)); !slices.Equal(keys, want) {
				t.Fatalf("got %v, want %v", keys, want)
			}
		})
	}
}

func TestParamsLimitGrowsWithHostileFigures(t *testing.T) {
	p := params{only: map[string]bool{"exec": true}}
	if p.limit() != overallLimit {
		t.Fatalf("limit %s, want %s", p.limit(), overallLimit)
	}
	p.only["churn"] = true
	if p.limit() != overallLimit+hostileLimit {
		t.Fatalf("limit with churn %s, want %s", p.limit(), overallLimit+hostileLimit)
	}
	p.only["conns"] = true
	if p.limit() != overallLimit+hostileLimit+floorLimit {
		t.Fatalf("limit with churn and conns %s, want %s", p.limit(), overallLimit+hostileLimit+floorLimit)
	}
}
