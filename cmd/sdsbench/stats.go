package main

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// summary describes a set of durations.
type summary struct {
	n                int
	min, max, median time.Duration
	p50, p90, p99    time.Duration
}

// summarize returns the summary of ds (which it does not modify).
// Percentiles use the nearest-rank method; the median of an even count is
// the mean of the two middle values.
func summarize(ds []time.Duration) summary {
	if len(ds) == 0 {
		return summary{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	n := len(s)
	med := s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return summary{
		n: n, min: s[0], max: s[n-1], median: med,
		p50: percentile(s, 0.50), p90: percentile(s, 0.90), p99: percentile(s, 0.99),
	}
}

// percentile returns the nearest-rank q-quantile of sorted.
func percentile(sorted []time.Duration, q float64) time.Duration {
	rank := int(math.Ceil(q * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// ms formats d in milliseconds with two decimals.
func ms(d time.Duration) string { return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond)) }

// us formats d in whole microseconds.
func us(d time.Duration) string { return fmt.Sprintf("%dµs", d.Microseconds()) }

// verdict says whether a figure met its product target.
func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}
