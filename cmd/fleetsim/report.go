package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"time"
)

// result is what one run of one policy in one scenario measured.
type result struct {
	Scenario Scenario
	Policy   string
	S        Series
	T        Totals
	// MeanOffered is CSRs offered per second over the run; PeakMinute the
	// highest one-minute mean of CSRs offered per second.
	MeanOffered, PeakMinute float64
	// PeakAfter is the most CSRs offered in one second from the end of
	// the disturbance on (from its start for a restart wave).
	PeakAfter int32
	// CatchUp is how long after the disturbance ended the last agent it
	// delayed got its certificate (-1: none was delayed).
	CatchUp time.Duration
	// MaxNotReady is the most agents not ready at once; ReadyAfter how
	// long after the disturbance ended every agent was ready again (-1:
	// none was ever not ready after it, or never again).
	MaxNotReady int32
	ReadyAfter  time.Duration
	// Runtime and CPU are the run's wall and CPU time (CSV and plot
	// excluded).
	Runtime, CPU time.Duration
	Events       int64
}

func summarize(sc Scenario, s *Sim, took time.Duration) result {
	r := result{Scenario: sc, Policy: s.Policy.Name(), S: s.S, T: s.T, Runtime: took, Events: s.Events, CatchUp: -1}
	secs := len(s.S.Offered)
	r.MeanOffered = float64(s.T.Offered) / float64(secs)
	var win int64
	for i, v := range s.S.Offered {
		win += int64(v)
		if i >= 60 {
			win -= int64(s.S.Offered[i-60])
		}
		if i >= 59 {
			r.PeakMinute = max(r.PeakMinute, float64(win)/60)
		}
	}
	if sc.Window.To > 0 {
		from := sc.Window.To / 1000
		if sc.Restart {
			from = sc.Window.From / 1000
		}
		for _, v := range s.S.Offered[from:] {
			r.PeakAfter = max(r.PeakAfter, v)
		}
		if s.T.CatchUp > 0 {
			r.CatchUp = time.Duration(s.T.CatchUp-sc.Window.To) * time.Millisecond
		}
	}
	for _, v := range s.S.NotReady {
		r.MaxNotReady = max(r.MaxNotReady, v)
	}
	r.ReadyAfter = -1
	if end := sc.Window.To / 1000; end > 0 {
		for i := end; i < int64(len(s.S.NotReady)); i++ {
			if s.S.NotReady[i] == 0 {
				if i > end || s.S.NotReady[end-1] > 0 {
					r.ReadyAfter = time.Duration(i-end) * time.Second
				}
				break
			}
		}
	}
	return r
}

func printTable(w io.Writer, rs []result) {
	fmt.Fprintf(w, "\n%-20s %-15s %9s %9s %9s %10s %10s %10s %8s %9s %7s %9s %7s %7s %7s\n",
		"scenario", "policy", "mean/s", "peak1m/s", "peak/s", "rejected", "refused", "probes",
		"expired", "notready", "ready", "catchup", "wall_s", "cpu_s", "events")
	for _, r := range rs {
		cu := "-"
		if r.CatchUp >= 0 {
			cu = r.CatchUp.Round(time.Second).String()
		}
		ready := "-"
		if r.ReadyAfter >= 0 {
			ready = r.ReadyAfter.String()
		}
		peak := "-"
		if r.Scenario.Window.To > 0 {
			peak = fmt.Sprint(r.PeakAfter)
		}
		fmt.Fprintf(w, "%-20s %-15s %9.2f %9.1f %9s %10d %10d %10d %8d %9d %7s %9s %7.1f %7.1f %6.0fM\n",
			r.Scenario.Name, r.Policy, r.MeanOffered, r.PeakMinute, peak, r.T.Rejected, r.T.Refused, r.T.Probes,
			r.T.ExpiredAgents, r.MaxNotReady, ready, cu, r.Runtime.Seconds(), r.CPU.Seconds(), float64(r.Events)/1e6)
	}
	fmt.Fprintln(w, "\nmean/s: CSRs offered per second over the run; peak1m/s: highest 1-minute mean; peak/s: most CSRs offered")
	fmt.Fprintln(w, "in one second after the outage (from the start of a restart wave); rejected: CSRs failed at the CA's")
	fmt.Fprintln(w, "deadline; refused: CSR attempts while the CA was down; probes: successful connection checks (no CSR);")
	fmt.Fprintln(w, "expired: certificates that reached NotAfter before renewal; notready: most agents without a valid")
	fmt.Fprintln(w, "certificate at once; ready: from the end of the disturbance until every agent is ready; catchup: from the end of the disturbance to the last delayed agent renewed;")
	fmt.Fprintln(w, "wall_s, cpu_s: the run's wall and CPU time (one thread), events: agent events simulated.")
}

// catchUpTarget is the stated time within which the whole fleet is
// renewed after the 30-minute outage: RetryMax (30s) spaces the retries
// of a renewal past its time, so every agent tries within it once the
// CA is back, and a second try covers one lost to the queue.
const catchUpTarget = time.Minute

// printTargets prints the targets for our policy and reports
// whether all passed.
func printTargets(w io.Writer, rs []result) bool {
	ok := true
	check := func(name string, pass bool, figure string) {
		verdict := "PASS"
		if !pass {
			verdict, ok = "FAIL", false
		}
		fmt.Fprintf(w, "%-4s %-62s %s\n", verdict, name, figure)
	}
	fmt.Fprintln(w, "\ntargets (policy sdsagent):")
	for _, r := range rs {
		if r.Policy != (&Ours{}).Name() {
			continue
		}
		sc := r.Scenario
		switch {
		case sc.Name == "steady":
			ratio := r.PeakMinute / r.MeanOffered
			check("steady: peak CA load (1-min mean) <= 1.5x mean", ratio <= 1.5,
				fmt.Sprintf("%.2fx (%.1f vs %.2f CSR/s)", ratio, r.PeakMinute, r.MeanOffered))
		case sc.ShorterThanGrace:
			limit := 1.2 * sc.Capacity
			check(sc.Name+": offered after the outage <= 1.2x capacity", float64(r.PeakAfter) <= limit,
				fmt.Sprintf("peak %d CSR/s vs %.0f (%.2fx capacity)", r.PeakAfter, limit, float64(r.PeakAfter)/sc.Capacity))
			check(sc.Name+": whole fleet renewed within "+catchUpTarget.String()+" of the CA's return",
				r.CatchUp >= 0 && r.CatchUp <= catchUpTarget, "last renewed "+r.CatchUp.Round(time.Second).String()+" after")
			check(sc.Name+": zero expired certificates", r.T.ExpiredAgents == 0, fmt.Sprintf("%d expired", r.T.ExpiredAgents))
		default:
			fmt.Fprintf(w, "info %-62s peak %d CSR/s (%.1fx capacity), %d expired, fleet renewed %s after\n",
				sc.Name+": (no target)", r.PeakAfter, float64(r.PeakAfter)/sc.Capacity, r.T.ExpiredAgents,
				r.CatchUp.Round(time.Second))
		}
	}
	var slow result
	for _, r := range rs {
		if r.CPU > slow.CPU {
			slow = r
		}
	}
	check("every run (one scenario, one policy) under 60s of CPU", slow.CPU < time.Minute,
		fmt.Sprintf("slowest %s/%s: %.1fs CPU, %.1fs wall on a shared machine", slow.Scenario.Name, slow.Policy,
			slow.CPU.Seconds(), slow.Runtime.Seconds()))
	return ok
}

func writeCSV(path string, s *Sim) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("write csv: %w", err)
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	fmt.Fprintln(bw, "second,offered,accepted,rejected,refused,probes,not_ready,expired")
	for i := range s.S.Offered {
		fmt.Fprintf(bw, "%d,%d,%d,%d,%d,%d,%d,%d\n", i, s.S.Offered[i], s.S.Accepted[i], s.S.Rejected[i],
			s.S.Refused[i], s.S.Probes[i], s.S.NotReady[i], s.S.Expired[i])
	}
	if err := bw.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("write csv: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write csv: %w", err)
	}
	return nil
}
