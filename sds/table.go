package sds

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// secretType is the type URL of every resource served: the value of
// go-control-plane's resource.SecretType, whose package would link every
// xDS resource type (listeners, routes, HTTP filters) into the agent.
const secretType = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

// entry is one served secret, marshalled once for every stream.
type entry struct {
	name string
	// seq is the table update at which the secret last changed.
	seq uint64
	// version is prefix + seq: the resource version streams see.
	version string
	res     *anypb.Any
	// expires is when the secret stops being sent to streams that do not
	// hold it yet (the workload certificate's NotAfter); zero: never.
	expires time.Time
}

// expired reports whether e is past its expiry at now.
func (e *entry) expired(now time.Time) bool {
	return !e.expires.IsZero() && !now.Round(0).Before(e.expires)
}

// table holds the secrets being served, each with the version at which it
// last changed. Every update closes the channel returned by watch, so
// stream goroutines wake and send what changed. It is safe for
// concurrent use.
type table struct {
	// prefix makes versions unique per process and start, so a version a
	// client kept from an earlier agent never matches one of ours.
	prefix string

	mu      sync.RWMutex
	entries map[string]*entry
	seq     uint64
	changed chan struct{}
}

func newTable(prefix string) *table {
	return &table{prefix: prefix, entries: map[string]*entry{}, changed: make(chan struct{})}
}

// update is one secret to set in apply, with its expiry (zero: none).
type update struct {
	secret  *tlsv3.Secret
	expires time.Time
}

// apply sets and deletes secrets in one table update. Deleting a name the
// table does not hold is a no-op.
func (t *table) apply(set []update, del []string) error {
	entries := make([]*entry, 0, len(set))
	for _, u := range set {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(u.secret)
		if err != nil {
			return fmt.Errorf("marshal secret %s: %w", u.secret.GetName(), err)
		}
		entries = append(entries, &entry{
			name:    u.secret.GetName(),
			res:     &anypb.Any{TypeUrl: secretType, Value: b},
			expires: u.expires,
		})
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var gone []string
	for _, name := range del {
		if _, ok := t.entries[name]; ok {
			gone = append(gone, name)
		}
	}
	if len(entries) == 0 && len(gone) == 0 {
		return nil
	}
	t.seq++
	for _, e := range entries {
		e.seq, e.version = t.seq, t.version(t.seq)
		t.entries[e.name] = e
	}
	for _, name := range gone {
		delete(t.entries, name)
	}
	close(t.changed)
	t.changed = make(chan struct{})
	return nil
}

// watch returns a channel closed at the next update.
func (t *table) watch() <-chan struct{} {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.changed
}

// get returns the entry named name.
func (t *table) get(name string) (*entry, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	e, ok := t.entries[name]
	return e, ok
}

// versions returns the version of each served secret.
func (t *table) versions() map[string]string {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := make(map[string]string, len(t.entries))
	for name, e := range t.entries {
		out[name] = e.version
	}
	return out
}

// version returns the version string of update seq.
func (t *table) version(seq uint64) string { return t.prefix + strconv.FormatUint(seq, 10) }

// parseVersion returns the update a version of this table names; ok is
// false for a version from another process or none.
func (t *table) parseVersion(v string) (uint64, bool) {
	rest, ok := strings.CutPrefix(v, t.prefix)
	if !ok {
		return 0, false
	}
	seq, err := strconv.ParseUint(rest, 10, 64)
	return seq, err == nil
}
