// Package memtrim releases the pages of the agent's own executable that
// only startup needed.
//
// A Go binary linking gRPC and Envoy's protos touches most of its text and
// read-only data while package initialisers register types, and the
// kernel maps neighbouring pages too (fault-around). Those clean,
// file-backed pages count in the process's resident set and in its
// cgroup's memory, though the agent rarely needs them again. Release asks
// the kernel to reclaim them (madvise MADV_PAGEOUT); pages still in use
// fault back in on their next access, so the resident set settles at the
// working set.
package memtrim

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// mapping is one region of the executable mapped into memory.
type mapping struct {
	start, end uintptr
	perms      string
}

// executableMappings returns the read-only and executable mappings of
// the running binary, parsed from /proc/self/maps.
func executableMappings() ([]mapping, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("memtrim: find executable: %w", err)
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return nil, fmt.Errorf("memtrim: %w", err)
	}
	defer f.Close()
	return parseMaps(bufio.NewScanner(f), exe)
}

// parseMaps picks the non-writable mappings of exe from /proc/PID/maps
// lines: "start-end perms offset dev inode path".
func parseMaps(sc *bufio.Scanner, exe string) ([]mapping, error) {
	var out []mapping
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || strings.Join(fields[5:], " ") != exe || strings.Contains(fields[1], "w") {
			continue
		}
		lo, hi, ok := strings.Cut(fields[0], "-")
		if !ok {
			return nil, fmt.Errorf("memtrim: bad maps line %q", sc.Text())
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			return nil, fmt.Errorf("memtrim: bad address range %q", fields[0])
		}
		out = append(out, mapping{start: uintptr(start), end: uintptr(end), perms: fields[1]})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("memtrim: read maps: %w", err)
	}
	return out, nil
}
