package config

// Logged is the configuration of a subcommand that logs: every one but
// `sdsagent secrets`.
type Logged interface {
	// Logging returns the --log-level and --log-format settings.
	Logging() Log
}

// Logging returns the log settings of `sdsagent run`.
func (a Agent) Logging() Log { return a.Log }

// Logging returns the log settings of `sdsagent ca`.
func (c CA) Logging() Log { return c.Log }

// Logging returns the log settings of `sdsagent ca init-root`.
func (c CAInitRoot) Logging() Log { return c.Log }

// Logging returns the log settings of `sdsagent ca init-intermediate`.
func (c CAInitIntermediate) Logging() Log { return c.Log }

// Logging returns the log settings of `sdsagent ca revoke`.
func (c CARevoke) Logging() Log { return c.Log }
