package main

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Scenario is one disturbance of the fleet, the same for every policy.
type Scenario struct {
	Name, Title string
	Capacity    float64
	Outages     []Outage
	// Restart makes every pod restart at a random time in Window.
	Restart bool
	// Window is the outage or restart wave (zero for steady rotation).
	Window Outage
	// ShorterThanGrace marks outages shorter than the grace period: no
	// certificate may expire.
	ShorterThanGrace bool
	// Pushback makes the CA answer overload with ResourceExhausted and a
	// pushback (our dev CA) instead of queueing to the deadline (istiod).
	Pushback bool
}

// eventAt is when the disturbance of every scenario begins: after a day
// of steady rotation.
const eventAt = 24 * time.Hour

func scenarioNames() []string {
	return []string{"steady", "outage-30m", "outage-long", "outage-long-pushback", "restart", "half-capacity"}
}

// scenarios returns every scenario for a CA of capacity and certificates
// of lifetime ttl.
func scenarios(capacity float64, ttl time.Duration) []Scenario {
	at := eventAt.Milliseconds()
	// Longer than the grace period (half the lifetime) by an hour.
	long := ttl/2 + time.Hour
	o30 := Outage{at, at + (30 * time.Minute).Milliseconds()}
	oLong := Outage{at, at + long.Milliseconds()}
	return []Scenario{
		{Name: "steady", Title: "Steady rotation", Capacity: capacity},
		{Name: "outage-30m", Title: "CA down 30 min", Capacity: capacity,
			Outages: []Outage{o30}, Window: o30, ShorterThanGrace: true},
		{Name: "outage-long", Title: fmt.Sprintf("CA down %s (longer than the grace period)", fmtDur(long)), Capacity: capacity,
			Outages: []Outage{oLong}, Window: oLong},
		{Name: "outage-long-pushback", Title: fmt.Sprintf("CA down %s, then answering overload with pushback", fmtDur(long)), Capacity: capacity,
			Outages: []Outage{oLong}, Window: oLong, Pushback: true},
		{Name: "restart", Title: "Every pod restarts within 1 min", Capacity: capacity,
			Restart: true, Window: Outage{at, at + time.Minute.Milliseconds()}},
		{Name: "half-capacity", Title: fmt.Sprintf("CA capacity halved (%.0f/s), down 30 min", capacity/2), Capacity: capacity / 2,
			Outages: []Outage{o30}, Window: o30, ShorterThanGrace: true},
	}
}

func pickScenarios(list string, capacity float64, ttl, dur time.Duration) ([]Scenario, error) {
	all := scenarios(capacity, ttl)
	if list == "all" {
		return all, nil
	}
	var out []Scenario
	for _, name := range strings.Split(list, ",") {
		i := slices.IndexFunc(all, func(s Scenario) bool { return s.Name == name })
		if i < 0 {
			return nil, fmt.Errorf("unknown scenario %q (known: %s)", name, strings.Join(scenarioNames(), ", "))
		}
		out = append(out, all[i])
	}
	for _, s := range out {
		if s.Window.To > dur.Milliseconds() {
			return nil, fmt.Errorf("scenario %s ends after the run: raise -hours", s.Name)
		}
	}
	return out, nil
}

func fmtDur(d time.Duration) string {
	s := d.String()
	s = strings.TrimSuffix(s, "0s")
	return strings.TrimSuffix(s, "0m")
}
