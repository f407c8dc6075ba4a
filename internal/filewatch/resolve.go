package filewatch

import (
	"os"
	"path/filepath"
	"strings"
)

// maxLinks bounds the symlinks followed for one path, as the kernel's
// ELOOP limit does (40 on Linux).
const maxLinks = 40

// chain is what a path depends on: the names whose creation, removal,
// rename or modification can change what the path refers to, and the
// directories to watch to see those events.
type chain struct {
	// names are absolute paths whose parent directory is free of
	// symlinks: every symlink met while resolving, then the final target
	// (or the first name that does not exist yet).
	names []string
	// dirs are the directories watched for names: each name's parent, or
	// for a missing name the deepest existing directory above it.
	dirs []string
}

// resolve follows path component by component as the kernel does,
// recording every symlink it meets (kubelet's "..data", a CSI driver's
// chain of links) and the final target. It never fails: a missing
// component or a loop ends the chain where it stops, at a name whose
// appearance an event on its directory will report.
func resolve(path string) chain {
	var c chain
	add := func(name, dir string) {
		c.names = append(c.names, name)
		for _, d := range c.dirs {
			if d == dir {
				return
			}
		}
		c.dirs = append(c.dirs, dir)
	}
	dest := string(filepath.Separator)
	rest := split(path)
	links := 0
	for len(rest) > 0 {
		comp := rest[0]
		rest = rest[1:]
		switch comp {
		case ".":
			continue
		case "..":
			dest = filepath.Dir(dest)
			continue
		}
		next := filepath.Join(dest, comp)
		fi, err := os.Lstat(next)
		if err != nil {
			add(filepath.Join(append([]string{next}, rest...)...), dest)
			return c
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			add(next, dest)
			links++
			if links > maxLinks {
				return c
			}
			target, err := os.Readlink(next)
			if err != nil {
				return c
			}
			if filepath.IsAbs(target) {
				dest = string(filepath.Separator)
			}
			rest = append(split(target), rest...)
			continue
		}
		if len(rest) > 0 && !fi.IsDir() {
			// A file used as a directory: watch for it to be replaced.
			add(filepath.Join(append([]string{next}, rest...)...), dest)
			return c
		}
		dest = next
	}
	add(dest, filepath.Dir(dest))
	return c
}

// split returns the non-empty components of p.
func split(p string) []string {
	parts := strings.Split(p, string(filepath.Separator))
	out := parts[:0]
	for _, s := range parts {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}

// affects reports whether an event on name can change what c resolves
// to: name is one of c's names or a directory above one of them (a
// directory removed, renamed or created along the way).
func (c chain) affects(name string) bool {
	for _, n := range c.names {
		if n == name || strings.HasPrefix(n, name+string(filepath.Separator)) {
			return true
		}
	}
	return false
}
