//go:build !linux

package peercred

import (
	"errors"
	"net"
)

// errUnsupported: SO_PEERCRED is Linux's; the agent serves Envoy on Linux.
var errUnsupported = errors.New("peercred: peer credentials (SO_PEERCRED) are supported on Linux only")

func supported() error { return errUnsupported }

// Get reads the kernel's record of the process that opened conn; on this
// system it always fails.
func Get(net.Conn) (Cred, error) { return Cred{}, errUnsupported }
