package devca

// HoldCSRSlots takes n of ca's MaxPendingCSRs slots, as n requests in
// progress would, until release is called: the tests' way to put the CA
// over its bound without racing real requests.
func HoldCSRSlots(ca *CA, n int) (release func()) {
	var leaves []func()
	for range n {
		leave, _, _ := ca.admission.enter()
		if leave == nil {
			panic("devca test: slot not free")
		}
		leaves = append(leaves, leave)
	}
	return func() {
		for _, l := range leaves {
			l()
		}
	}
}
