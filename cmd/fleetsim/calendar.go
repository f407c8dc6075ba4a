package main

import "math/bits"

// ringSize is the horizon of the calendar of near events in ms: most
// events (retries, CA answers) land within it and are O(1); renewals,
// hours away, go to a heap.
const ringSize = 1 << 16

type entry struct {
	id   int32
	gen  uint32
	kind uint8
}

type farEvent struct {
	t int64
	e entry
}

type farHeap []farEvent

func (h farHeap) Len() int           { return len(h) }
func (h farHeap) Less(i, j int) bool { return h[i].t < h[j].t }
func (h farHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *farHeap) Push(x any)        { *h = append(*h, x.(farEvent)) }
func (h *farHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

func (s *Sim) near(t int64, e entry) {
	i := t % ringSize
	s.ring[i] = append(s.ring[i], e)
	s.used[i/64] |= 1 << (i % 64)
	s.nRing++
}

// nextUsed returns the first time at or after s.now whose bucket holds
// events; the ring must not be empty.
func (s *Sim) nextUsed() int64 {
	i := s.now % ringSize
	w := i / 64
	word := s.used[w] &^ (1<<(i%64) - 1)
	for word == 0 {
		w = (w + 1) % (ringSize / 64)
		word = s.used[w]
	}
	j := w*64 + int64(bits.TrailingZeros64(word))
	return s.now + (j-i+ringSize)%ringSize
}
