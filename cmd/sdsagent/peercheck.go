package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"sync/atomic"

	"github.com/sdsagent/sdsagent/internal/peercred"
	"github.com/sdsagent/sdsagent/sds"
)

// guardedSDS runs the SDS server on its socket guarded by the
// --allowed-uids/--allowed-gids check: what sds.Server.Run does, with
// the listener wrapped before the server sees a connection.
type guardedSDS struct {
	srv  *sds.Server
	path string
	mode os.FileMode
	cfg  peercred.Config
	lis  atomic.Pointer[peercred.Listener]
}

// Run listens, serves until ctx ends, and removes the socket file.
func (g *guardedSDS) Run(ctx context.Context) error {
	lis, err := sds.Listen(g.path, g.mode)
	if err != nil {
		return err
	}
	pl, err := peercred.Wrap(lis, g.cfg)
	if err != nil {
		_ = lis.Close()
		_ = removeSocketFile(g.path)
		return fmt.Errorf("sds socket check: %w", err)
	}
	g.lis.Store(pl)
	err = g.srv.Serve(ctx, pl)
	if rmErr := removeSocketFile(g.path); rmErr != nil && err == nil {
		err = rmErr
	}
	return err
}

// Stats returns the check's allowlist and refusals, for /debug/sds.
func (g *guardedSDS) Stats() peercred.Stats {
	if l := g.lis.Load(); l != nil {
		return l.Stats()
	}
	return peercred.Stats{AllowedUIDs: slices.Clone(g.cfg.UIDs), AllowedGIDs: slices.Clone(g.cfg.GIDs)}
}

// removeSocketFile removes path if it is still a socket.
func removeSocketFile(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && fi.Mode().Type() != fs.ModeSocket) {
		return nil
	}
	if err == nil {
		err = os.Remove(path)
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove socket: %w", err)
	}
	return nil
}
