package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
)

// Secrets is the configuration of `sdsagent secrets`.
type Secrets struct {
	// HTTPAddr is the HTTP address of `sdsagent run`.
	HTTPAddr string
	// Output is "table", "json" or "pem".
	Output string
	// Name selects one secret; empty: all of them.
	Name string
}

// secretsUsage heads `sdsagent secrets --help`.
const secretsUsage = `sdsagent secrets [--http-addr ADDR] [-o table|json|pem] [NAME]

Print the secrets the agent on this host serves over SDS, as
"istioctl proxy-config secret" does. NAME selects one secret; -o pem
prints the PEM certificates of NAME (private keys are never shown).`

// SecretsSettings lists the settings of `sdsagent secrets`: the agent's
// HTTP address, read from the same variable as `sdsagent run`, and -o.
func SecretsSettings() []Setting {
	httpAddr := Setting{Flag: "http-addr"}
	for _, s := range AgentSettings() {
		if s.Flag == "http-addr" {
			httpAddr = s
		}
	}
	return []Setting{
		{httpAddr.Flag, httpAddr.Env, httpAddr.Default, "HTTP address of `sdsagent run`"},
		{"o", "", "table", "output format: table, json or pem"},
	}
}

// ParseSecrets parses the arguments of `sdsagent secrets`: flags, and
// at most one NAME before, between or after them.
func ParseSecrets(args []string, getenv func(string) string, output io.Writer) (Secrets, error) {
	fs := flag.NewFlagSet("sdsagent secrets", flag.ContinueOnError)
	fs.SetOutput(output)
	settings := SecretsSettings()
	fs.Usage = func() { PrintUsage(output, secretsUsage, settings) }
	vals := register(fs, settings)
	var name string
	for rest := args; ; {
		if err := fs.Parse(rest); err != nil {
			return Secrets{}, err
		}
		if fs.NArg() == 0 {
			break
		}
		if name != "" {
			return Secrets{}, fmt.Errorf("unexpected arguments: %v", fs.Args())
		}
		name, rest = fs.Arg(0), fs.Args()[1:]
	}
	r := resolver{fs: fs, vals: vals, getenv: getenv, settings: settings}
	s := Secrets{HTTPAddr: r.str("http-addr"), Output: r.str("o"), Name: name}
	switch s.Output {
	case "table":
	case "json":
		if name != "" {
			return Secrets{}, errors.New("-o json prints the whole dump as received; select with jq instead of NAME")
		}
	case "pem":
		if name == "" {
			return Secrets{}, errors.New("-o pem needs a NAME, e.g. `sdsagent secrets -o pem default`")
		}
	default:
		return Secrets{}, fmt.Errorf("unknown output format %q: want table, json or pem", s.Output)
	}
	return s, nil
}
