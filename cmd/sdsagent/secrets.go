package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/sdsagent/sdsagent/internal/config"
	"github.com/sdsagent/sdsagent/internal/debug"
)

// httpAddrEnv sets the agent's HTTP address, as for `sdsagent run`.
const httpAddrEnv = "SDSAGENT_HTTP_ADDR"

// runSecrets is `sdsagent secrets`: it prints the secrets the local agent
// serves, read from its /debug/secrets endpoint.
func runSecrets(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sdsagent secrets", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("http-addr", httpAddrDefault(), "HTTP address of `sdsagent run` (env "+httpAddrEnv+")")
	output := fs.String("o", "table", "output format: table, json or pem")
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: sdsagent secrets [--http-addr ADDR] [-o table|json|pem] [NAME]

Print the secrets the agent on this host serves over SDS, as
"istioctl proxy-config secret" does. NAME selects one secret; -o pem
prints the PEM certificates of NAME (private keys are never shown).

`)
		fs.PrintDefaults()
	}
	var name string
	for rest := args; ; {
		if err := fs.Parse(rest); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		if name != "" {
			return fmt.Errorf("unexpected arguments: %v", fs.Args())
		}
		name, rest = fs.Arg(0), fs.Args()[1:]
	}
	if !flagSet(fs, "http-addr") {
		if v := getenv(httpAddrEnv); v != "" {
			*addr = v
		}
	}
	switch *output {
	case "table", "json":
		if *output == "json" && name != "" {
			return errors.New("-o json prints the whole dump as received; select with jq instead of NAME")
		}
	case "pem":
		if name == "" {
			return errors.New("-o pem needs a NAME, e.g. `sdsagent secrets -o pem default`")
		}
	default:
		return fmt.Errorf("unknown output format %q: want table, json or pem", *output)
	}

	raw, err := debug.FetchSecrets(ctx, *addr)
	if err != nil {
		return err
	}
	if *output == "json" {
		_, err := stdout.Write(raw)
		return err
	}
	dump, err := debug.ParseSecrets(raw)
	if err != nil {
		return err
	}
	if *output == "pem" {
		pem, err := debug.SecretPEM(dump, name)
		if err != nil {
			return err
		}
		_, err = stdout.Write(pem)
		return err
	}
	if name != "" {
		if dump, err = debug.Select(dump, name); err != nil {
			return err
		}
	}
	return debug.WriteTable(stdout, dump, time.Now())
}

// httpAddrDefault is `sdsagent run`'s default HTTP address.
func httpAddrDefault() string {
	for _, s := range config.AgentSettings() {
		if s.Flag == "http-addr" {
			return s.Default
		}
	}
	return ""
}

// flagSet reports whether the flag name was given on the command line.
func flagSet(fs *flag.FlagSet, name string) bool {
	found := false
	fs.Visit(func(f *flag.Flag) { found = found || f.Name == name })
	return found
}
