// This file is the demand for file-backed names: which file-cert: and
// file-root: names streams want, within the watched-files limit, and why
// a wanted name cannot be served.

package cache

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	"go.uber.org/zap"
)

// setDemand makes the file-backed names among names the ones served:
// new ones are loaded by run, the others dropped at once.
func (r *fileRegistry) setDemand(names []string) {
	wanted := slices.Clone(names)
	slices.Sort(wanted)
	wanted = slices.Compact(wanted)

	r.mu.Lock()
	nameErrs := map[string]string{}
	keep := map[string]bool{}
	added := false
	// Names already served keep their files; new names get what is left
	// of the watched-files limit, in name order.
	files := map[string]struct{}{}
	var fresh []string
	specs := map[string]fileSpec{}
	for _, name := range wanted {
		if !isFileName(name) {
			continue
		}
		spec, err := parseFileName(name)
		if err != nil {
			nameErrs[name] = err.Error()
			continue
		}
		e, ok := r.entries[name]
		switch {
		case !ok:
			fresh = append(fresh, name)
			specs[name] = spec
			continue
		case !e.static:
			for _, p := range spec.paths(r.systemRoots) {
				files[p] = struct{}{}
			}
		}
		keep[name] = true
	}
	for _, name := range fresh {
		spec := specs[name]
		if err := r.admitLocked(files, spec); err != nil {
			if r.nameErrs[name] != err.Error() {
				r.metrics.LimitRejections.WithLabelValues("watched_files").Inc()
			}
			nameErrs[name] = err.Error()
			continue
		}
		keep[name] = true
		r.entries[name] = &fileEntry{name: name, spec: spec}
		added = true
	}
	var dropped []string
	for name, e := range r.entries {
		if !e.static && !keep[name] {
			delete(r.entries, name)
			dropped = append(dropped, name)
		}
	}
	r.wanted, r.nameErrs = wanted, nameErrs
	if len(dropped) > 0 {
		// Under mu, so that a load finishing now cannot publish a
		// dropped name again.
		r.store.Update(nil, dropped)
		for _, name := range dropped {
			r.metrics.CertExpiryTimestamp.DeleteLabelValues(name)
		}
	}
	r.mu.Unlock()

	slices.Sort(dropped)
	for _, name := range dropped {
		r.log.Info("file secret dropped; no stream wants it", zap.String("resource", name))
	}
	if added || len(dropped) > 0 {
		select {
		case r.signal <- struct{}{}:
		default:
		}
	}
}

// admitLocked adds spec's files to files unless that takes files over
// the watched-files limit.
func (r *fileRegistry) admitLocked(files map[string]struct{}, spec fileSpec) error {
	var more []string
	for _, p := range spec.paths(r.systemRoots) {
		if _, ok := files[p]; !ok && !slices.Contains(more, p) {
			more = append(more, p)
		}
	}
	if r.maxFiles > 0 && len(files)+len(more) > r.maxFiles {
		return fmt.Errorf("not served: its files would take the files watched for file-cert: and file-root: names over the limit of %d; raise --max-watched-files or ask for fewer names", r.maxFiles)
	}
	for _, p := range more {
		files[p] = struct{}{}
	}
	return nil
}

// nameErrors returns, for the names streams want and the static entries,
// why each cannot be served now, and the wanted names.
func (r *fileRegistry) nameErrors() (map[string]string, []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := maps.Clone(r.nameErrs)
	for name, e := range r.entries {
		if e.err != nil && e.trust == nil {
			out[name] = e.err.Error()
		}
	}
	return out, slices.Clone(r.wanted)
}

// notReady says why name is not served yet.
func (r *fileRegistry) notReady(name string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.entries[name]
	switch {
	case !ok:
		return fmt.Errorf("%s is not file-backed", name)
	case e.err != nil:
		return e.err
	default:
		return errors.New("files not read yet")
	}
}
