package caclient

// Connect starts connecting to the CA, TLS handshake and verification of
// the CA's certificate included, and returns at once. The first Sign then
// uses that connection, whether it is up or still being set up, instead
// of opening one: the agent calls Connect first thing at start, so that
// the handshake overlaps the rest of its setup and key generation. It
// sends no request and no token. It does nothing after Close.
func (c *Client) Connect() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.cur.cc.Connect()
}
