package memtrim

import (
	"bufio"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

func TestParseMaps(t *testing.T) {
	maps := `00400000-00b46000 r-xp 00000000 fd:00 123 /usr/bin/sdsagent
00b46000-01536000 r--p 00746000 fd:00 123 /usr/bin/sdsagent
01536000-01590000 rw-p 01136000 fd:00 123 /usr/bin/sdsagent
c000000000-c000400000 rw-p 00000000 00:00 0
7f0000000000-7f0000001000 r--p 00000000 fd:00 99 /usr/bin/other
`
	got, err := parseMaps(bufio.NewScanner(strings.NewReader(maps)), "/usr/bin/sdsagent")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].start != 0x400000 || got[0].end != 0xb46000 || got[1].perms != "r--p" {
		t.Fatalf("parseMaps = %+v, want the r-xp and r--p mappings of the binary", got)
	}
	if _, err := parseMaps(bufio.NewScanner(strings.NewReader("zz-yy r--p 0 0 0 /x\n")), "/x"); err == nil {
		t.Fatal("bad range accepted")
	}
}

func TestReleaseLowersFileBackedResidentSet(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("linux only")
	}
	before := rssFileKB(t)
	n, err := Release()
	if err != nil {
		t.Skipf("kernel does not support MADV_PAGEOUT: %v", err)
	}
	if n == 0 {
		t.Fatal("no executable mappings found")
	}
	after := rssFileKB(t)
	if after >= before {
		t.Fatalf("RssFile %d kB -> %d kB: want it to drop", before, after)
	}
	// The code keeps working: pages fault back in as needed.
	if got := strconv.Itoa(42); got != "42" {
		t.Fatal("code broken after release")
	}
}

func rssFileKB(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "RssFile:" {
			n, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no RssFile in /proc/self/status")
	return 0
}
