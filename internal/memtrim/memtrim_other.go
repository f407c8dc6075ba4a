//go:build !linux

package memtrim

import "errors"

// Release is only implemented on Linux.
func Release() (int, error) { return 0, errors.New("memtrim: not supported on this system") }
