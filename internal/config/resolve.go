// The flag and environment machinery every subcommand parses through:
// registering settings, telling which source won, and typed reads.

package config

import (
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sdsagent/sdsagent/internal/pki"
)

// PrintUsage writes a usage line and a table of settings.
func PrintUsage(w io.Writer, usage string, settings []Setting) {
	fmt.Fprintf(w, "Usage: %s\n\n", usage)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "FLAG\tENV\tDEFAULT\tMEANING")
	for _, s := range settings {
		def := s.Default
		if def == "" {
			def = `""`
		}
		dashes := "--"
		if len(s.Flag) == 1 {
			dashes = "-"
		}
		fmt.Fprintf(tw, "%s%s\t%s\t%s\t%s\n", dashes, s.Flag, s.Env, def, s.Usage)
	}
	tw.Flush()
}

// listFlags are the settings that may be given several times; their
// values are joined with commas, as their environment variable lists them.
func listFlags() []string { return []string{"trust-bundle"} }

// register defines a flag per setting that keeps the raw value; typed
// parsing happens in resolver so that flags and env share one parser.
// A setting whose default is true, false or auto is a boolean flag: given
// alone (--ca-plaintext) it means true; other values need "=".
func register(fs *flag.FlagSet, settings []Setting) map[string]*string {
	vals := make(map[string]*string, len(settings))
	for _, s := range settings {
		v := s.Default
		vals[s.Flag] = &v
		switch {
		case slices.Contains(listFlags(), s.Flag):
			fs.Var(&listString{p: &v}, s.Flag, s.Usage)
		case s.Default == "true" || s.Default == "false" || s.Default == string(MountedAuto):
			fs.Var(boolString{&v}, s.Flag, s.Usage)
		default:
			fs.StringVar(&v, s.Flag, s.Default, s.Usage)
		}
	}
	return vals
}

// boolString is a string flag.Value that may be given without a value.
type boolString struct{ p *string }

func (b boolString) String() string {
	if b.p == nil {
		return ""
	}
	return *b.p
}

func (b boolString) Set(v string) error {
	*b.p = v
	return nil
}

// IsBoolFlag lets the flag package accept the flag alone, as "true".
func (boolString) IsBoolFlag() bool { return true }

// listString is a string flag.Value that may be given several times:
// the values are joined with commas.
type listString struct {
	p   *string
	set bool
}

func (l *listString) String() string {
	if l == nil || l.p == nil {
		return ""
	}
	return *l.p
}

func (l *listString) Set(v string) error {
	if l.set {
		*l.p += "," + v
	} else {
		*l.p, l.set = v, true
	}
	return nil
}

// resolver picks flag, then env, then default for each setting and
// collects the first parse error.
type resolver struct {
	fs       *flag.FlagSet
	vals     map[string]*string
	getenv   func(string) string
	settings []Setting
	first    error
}

func (r *resolver) setting(name string) Setting {
	for _, s := range r.settings {
		if s.Flag == name {
			return s
		}
	}
	panic("config: unknown setting " + name) // a programming error, caught by tests
}

// source returns the raw value and where it came from.
func (r *resolver) source(name string) (string, string) {
	s := r.setting(name)
	set := false
	r.fs.Visit(func(f *flag.Flag) {
		if f.Name == name {
			set = true
		}
	})
	if set {
		return *r.vals[name], "--" + name
	}
	if v, ok := r.lookupEnv(s.Env); ok {
		return v, s.Env
	}
	return s.Default, "default of --" + name
}

func (r *resolver) lookupEnv(name string) (string, bool) {
	if name == "" {
		return "", false
	}
	v := r.getenv(name)
	return v, v != ""
}

func (r *resolver) str(name string) string {
	v, _ := r.source(name)
	return strings.TrimSpace(v)
}

func (r *resolver) fail(err error) {
	if r.first == nil {
		r.first = err
	}
}

func (r *resolver) err() error { return r.first }

func (r *resolver) boolean(name string) bool {
	v, from := r.source(name)
	b, err := strconv.ParseBool(strings.TrimSpace(v))
	if err != nil {
		r.fail(fmt.Errorf("%s: %q is not a boolean", from, v))
	}
	return b
}

func (r *resolver) duration(name string) time.Duration {
	v, from := r.source(name)
	d, err := parseDuration(strings.TrimSpace(v))
	if err != nil {
		r.fail(fmt.Errorf("%s: %q is not a duration (e.g. 24h, 90m)", from, v))
	}
	return d
}

// maxDurationSeconds is the most seconds a time.Duration holds (about
// 292 years); more would wrap around.
const maxDurationSeconds = int64(math.MaxInt64 / time.Second)

// parseDuration accepts Go durations and, as Istio does for SECRET_TTL,
// plain seconds.
func parseDuration(v string) (time.Duration, error) {
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs > maxDurationSeconds || secs < -maxDurationSeconds {
			return 0, fmt.Errorf("%d seconds is out of range", secs)
		}
		return time.Duration(secs) * time.Second, nil
	}
	return time.ParseDuration(v)
}

// optionalDuration is duration, with an empty value meaning zero.
func (r *resolver) optionalDuration(name string) time.Duration {
	if v, _ := r.source(name); strings.TrimSpace(v) == "" {
		return 0
	}
	return r.duration(name)
}

// trustBundles parses a comma-separated list of TD=PATH: each trust
// domain valid, once, and not own, the agent's own.
func (r *resolver) trustBundles(name, own string) []TrustBundle {
	v, from := r.source(name)
	var out []TrustBundle
	seen := map[string]bool{}
	for _, item := range strings.Split(v, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		td, path, ok := strings.Cut(item, "=")
		td, path = strings.TrimSpace(td), strings.TrimSpace(path)
		switch {
		case !ok || td == "" || path == "":
			r.fail(fmt.Errorf("%s: %q is not TD=PATH, e.g. mesh-b.example=/etc/bundles/mesh-b.pem", from, item))
			return nil
		case td == own:
			r.fail(fmt.Errorf("%s: %q is this workload's own trust domain, whose roots come from the CA; add extra roots for it with --trust-anchors", from, td))
			return nil
		case seen[td]:
			r.fail(fmt.Errorf("%s: trust domain %q given twice", from, td))
			return nil
		}
		if err := pki.CheckTrustDomain(td); err != nil {
			r.fail(fmt.Errorf("%s: %w", from, err))
			return nil
		}
		seen[td] = true
		out = append(out, TrustBundle{TrustDomain: td, Path: path})
	}
	return out
}

func (r *resolver) float(name string) float64 {
	v, from := r.source(name)
	f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
	if err != nil {
		r.fail(fmt.Errorf("%s: %q is not a number", from, v))
	}
	return f
}

// mountedCerts accepts "auto" and anything strconv.ParseBool does.
func (r *resolver) mountedCerts(name string) MountedCerts {
	v, from := r.source(name)
	v = strings.TrimSpace(v)
	if strings.EqualFold(v, string(MountedAuto)) {
		return MountedAuto
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		r.fail(fmt.Errorf("%s: %q is not true, false or auto", from, v))
		return MountedAuto
	}
	if b {
		return MountedOn
	}
	return MountedOff
}

func (r *resolver) mode(name string) os.FileMode {
	v, from := r.source(name)
	m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32)
	if err != nil || m > 0o777 {
		r.fail(fmt.Errorf("%s: %q is not an octal file mode such as 0660", from, v))
	}
	return os.FileMode(m)
}

// keyType resolves --key-type, then SDSAGENT_KEY_TYPE, then Istio's
// ECC_SIGNATURE_ALGORITHM / ECC_CURVE / WORKLOAD_RSA_KEY_SIZE, then the
// default.
func (r *resolver) keyType() pki.KeyType {
	v, from := r.source("key-type")
	if strings.HasPrefix(from, "default") {
		alg, _ := r.lookupEnv("ECC_SIGNATURE_ALGORITHM")
		curve, _ := r.lookupEnv("ECC_CURVE")
		bits, haveBits := r.lookupEnv("WORKLOAD_RSA_KEY_SIZE")
		if alg != "" || haveBits {
			n := 0
			if haveBits {
				var err error
				if n, err = strconv.Atoi(strings.TrimSpace(bits)); err != nil {
					r.fail(fmt.Errorf("WORKLOAD_RSA_KEY_SIZE: %q is not a number", bits))
					return ""
				}
			}
			kt, err := pki.KeyTypeFromIstio(alg, curve, n)
			if err != nil {
				r.fail(err)
			}
			return kt
		}
	}
	kt, err := pki.ParseKeyType(v)
	if err != nil {
		r.fail(fmt.Errorf("%s: %w", from, err))
	}
	return kt
}
