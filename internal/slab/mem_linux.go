package slab

import "golang.org/x/sys/unix"

// mapMemory maps size bytes of zeroes, private to the process, and asks
// the kernel to leave them out of core dumps.
func mapMemory(size int) ([]byte, error) {
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, err
	}
	// Best effort: kernels before 3.4 lack MADV_DONTDUMP, and the memory
	// is usable without it.
	_ = unix.Madvise(mem, unix.MADV_DONTDUMP)
	return mem, nil
}

func unmapMemory(mem []byte) error { return unix.Munmap(mem) }
