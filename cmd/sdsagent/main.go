// Command sdsagent is a node-local certificate agent for Envoy: it keeps a
// workload certificate signed by an Istio-compatible CA and serves it over
// the Secret Discovery Service on a Unix socket.
//
//	sdsagent run      run the agent
//	sdsagent ca       run a development CA that speaks Istio's CA protocol,
//	                  with a self-signed root or a plugged-in intermediate
//	sdsagent ca init-root, sdsagent ca init-intermediate
//	                  create an offline root and an intermediate per mesh
//	sdsagent ca revoke
//	                  revoke a serial and publish the CA's CRL
//	sdsagent secrets  show what a running agent serves
//	sdsagent version  print the version
//
// This package only wires. Its files:
//
//   - main.go: the subcommand switch.
//   - command.go: the preamble every subcommand shares (parse, logger, flush).
//   - agent.go: `run`: builds the components from config and runs them.
//   - signer.go: builds the CA client config.CertPlan chose.
//   - peercheck.go: the SDS server behind the --allowed-uids/gids check.
//   - adapt.go, debugwire.go: adapters from one component's types to
//     another's (sds and cache to internal/debug, memtrim).
//   - group.go: runAll, which runs tasks until the first fails.
//   - ca.go: `ca` and its init and revoke subcommands.
//   - secrets.go: `secrets`.
//   - logger.go: the zap logger the settings ask for.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	rtdebug "runtime/debug"
	"syscall"
)

// version is set at link time by the Makefile (-X main.version=...).
var version = ""

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run dispatches a subcommand and returns the process exit code.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	var err error
	switch args[0] {
	case "run":
		err = runAgent(ctx, args[1:], getenv, stderr)
	case "ca":
		err = runCA(ctx, args[1:], getenv, stderr)
	case "secrets":
		err = runSecrets(ctx, args[1:], getenv, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "sdsagent", versionString())
		return 0
	case "help", "-h", "--help":
		usage(stdout)
		return 0
	default:
		fmt.Fprintf(stderr, "sdsagent: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	default:
		fmt.Fprintf(stderr, "sdsagent %s: %v\n", args[0], err)
		return 1
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, `Usage: sdsagent <command> [flags]

Commands:
  run      run the agent: renew the workload certificate, serve it over SDS
  ca       run a development CA speaking Istio's CA protocol, signing with
           a self-signed root or a plugged-in intermediate (Istio's cacerts)
  ca init-root, ca init-intermediate
           create an offline root, and an intermediate CA per mesh under it
  secrets  show the secrets a running agent serves (table, json or pem)
  version  print the version

Run "sdsagent <command> --help" for the flags of a command.
`)
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := rtdebug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}
