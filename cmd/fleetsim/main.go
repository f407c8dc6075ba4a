// Command fleetsim simulates a fleet of node agents renewing their
// certificates against one CA, on a virtual clock, to see what the fleet
// does to the CA: in steady rotation, after an outage, after a mass
// restart, with less CA capacity.
//
// Each agent of policy "sdsagent" is driven by package cache's own
// functions (RenewTime, ClassifyFailure, RetryWaitFor, InLastTenth), the
// ones cache.Manager calls; "sdsagent-before" is the same with every
// failure taken as an outage and pushback ignored, as the agent was
// before; "istio" and "spire" model those agents from their source (see
// policy.go). The CA signs -capacity CSRs per second in arrival order
// and fails a CSR that would wait longer than -deadline; in the
// -pushback scenario it refuses a CSR that finds -max-pending ahead of
// it at once, with a pushback to the next free slot.
//
// Usage:
//
//	go run ./cmd/fleetsim [-n 100000] [-out bin/fleetsim] [-capacity 500] [-scenarios all]
//
// It writes one CSV per scenario and policy (per second: CSRs offered,
// accepted, rejected, refused while the CA was down, probes, agents not
// ready, certificates expired) and one PNG per scenario into -out, and
// prints a summary table and the targets with PASS or FAIL. It exits 1 if
// a target of our policy fails, 2 on bad flags.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// Defaults of the simulation.
const (
	// defaultCapacity is istiod's CSR signing rate we assume for one
	// replica: an ECDSA P-256 signature plus the JWT review and gRPC
	// costs about 1–2 ms of CPU, so one or two cores give a few hundred to
	// ~1,000 CSRs/s; 500/s is the middle of that range.
	defaultCapacity = 500
	// defaultDeadline is how long a CSR may wait for its turn at the CA
	// before it fails (a caller's gRPC deadline; the CA drops it unsigned).
	defaultDeadline = 10 * time.Second
	// defaultMaxPending is the queue of the CA that answers overload with
	// pushback: `sdsagent ca`'s default --max-pending-csrs.
	defaultMaxPending = 100
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("fleetsim", flag.ContinueOnError)
	n := fs.Int("n", 100000, "number of agents")
	out := fs.String("out", "bin/fleetsim", "directory for the CSV and PNG files")
	capacity := fs.Float64("capacity", defaultCapacity, "CA capacity in CSRs per second")
	deadline := fs.Duration("deadline", defaultDeadline, "longest wait of a CSR in the CA's queue")
	ttl := fs.Duration("ttl", 24*time.Hour, "certificate lifetime")
	hours := fs.Int("hours", 72, "simulated hours per run")
	seed := fs.Uint64("seed", 1, "random seed")
	scen := fs.String("scenarios", "all", "comma-separated scenarios: "+strings.Join(scenarioNames(), ","))
	noCSV := fs.Bool("no-csv", false, "write no CSV files")
	maxPending := fs.Int("max-pending", defaultMaxPending, "CSRs in the queue of the CA that answers overload with pushback (the -pushback scenarios)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *n <= 0 || *capacity <= 0 || *deadline <= 0 || *ttl <= 0 || *hours <= 0 || *maxPending <= 0 {
		fmt.Fprintln(os.Stderr, "fleetsim: -n, -capacity, -deadline, -ttl, -hours and -max-pending must be positive")
		return 2
	}
	dur := time.Duration(*hours) * time.Hour
	scenarios, err := pickScenarios(*scen, *capacity, *ttl, dur)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleetsim:", err)
		return 2
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "fleetsim:", err)
		return 1
	}
	fmt.Printf("fleetsim: %d agents, ttl %s, %d h per run, ca %.0f csr/s, deadline %s, seed %d, GOMAXPROCS %d\n",
		*n, *ttl, *hours, *capacity, *deadline, *seed, runtime.GOMAXPROCS(0))
	var results []result
	for _, sc := range scenarios {
		var runs []result
		for _, p := range policies() {
			ca := &CA{Capacity: sc.Capacity, Deadline: deadline.Milliseconds(), Outages: sc.Outages}
			if sc.Pushback {
				ca.MaxPending = *maxPending
			}
			start, cpu0 := time.Now(), cpuTime()
			s := NewSim(p, ca, *n, *ttl, dur, *seed)
			s.Window = sc.Window
			if sc.Restart {
				s.ScheduleRestarts(sc.Window.From, sc.Window.To-sc.Window.From, *seed)
			}
			s.Run()
			r := summarize(sc, s, time.Since(start))
			r.CPU = cpuTime() - cpu0
			runs = append(runs, r)
			if !*noCSV {
				if err := writeCSV(filepath.Join(*out, sc.Name+"-"+p.Name()+".csv"), s); err != nil {
					fmt.Fprintln(os.Stderr, "fleetsim:", err)
					return 1
				}
			}
		}
		if err := plotScenario(filepath.Join(*out, sc.Name+".png"), sc, runs); err != nil {
			fmt.Fprintln(os.Stderr, "fleetsim:", err)
			return 1
		}
		results = append(results, runs...)
	}
	printTable(os.Stdout, results)
	if !printTargets(os.Stdout, results) {
		return 1
	}
	return 0
}

// cpuTime returns the CPU time this process used so far (user and
// system): on a shared machine it is fairer than wall time, the run
// being single-threaded but for the garbage collector.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// policies are the agents compared: ours, ours before overload was told
// apart from an outage, Istio's and SPIRE's.
func policies() []Policy {
	return []Policy{NewOurs(), NewOursBefore(), Istio{}, Spire{}}
}
