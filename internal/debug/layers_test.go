package debug

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImportsOnlyBelow checks no arrow runs back up from internal/debug:
// it declares what it reads (Secret, PeerCheck, StreamInfo) instead of
// importing the packages that serve them.
func TestImportsOnlyBelow(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	allowed := map[string]bool{"github.com/sdsagent/sdsagent/internal/pki": true}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range af.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if strings.HasPrefix(path, "github.com/sdsagent/sdsagent/") && !allowed[path] {
				t.Errorf("%s imports %s; internal/debug may only import %v of this module", f, path, allowed)
			}
		}
	}
}
