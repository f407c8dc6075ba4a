//go:build linux

package memtrim

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Release asks the kernel to reclaim the executable's read-only pages. It
// returns how many bytes of mappings it advised. Kernels before 5.4 do not
// know MADV_PAGEOUT; Release then returns an error and changes nothing.
func Release() (int, error) {
	maps, err := executableMappings()
	if err != nil {
		return 0, err
	}
	total := 0
	for _, m := range maps {
		// The raw syscall takes the addresses as integers: these mappings
		// are not Go memory, so no unsafe.Pointer is made of them.
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, m.start, m.end-m.start, unix.MADV_PAGEOUT); errno != 0 {
			return total, fmt.Errorf("memtrim: madvise %x-%x: %w", m.start, m.end, errno)
		}
		// Without read-around, a page faulted back in later brings only
		// itself, not its neighbours, so the resident set stays the
		// working set.
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, m.start, m.end-m.start, unix.MADV_RANDOM); errno != 0 {
			return total, fmt.Errorf("memtrim: madvise random %x-%x: %w", m.start, m.end, errno)
		}
		total += int(m.end - m.start)
	}
	return total, nil
}
