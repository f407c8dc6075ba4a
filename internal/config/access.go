package config

import (
	"fmt"
	"strconv"
	"strings"
)

// ids parses a comma-separated list of numeric user or group ids. Names
// are refused rather than looked up: the agent's /etc/passwd and
// /etc/group need not be those of the container that connects.
func (r *resolver) ids(name, what string) []uint32 {
	v, from := r.source(name)
	var out []uint32
	for _, item := range strings.Split(v, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		n, err := strconv.ParseUint(item, 10, 32)
		if err != nil {
			r.fail(fmt.Errorf("%s: %q is not a numeric %s (give numbers such as 1337; names are not looked up, since this container's users need not be the caller's)", from, item, what))
			return nil
		}
		out = append(out, uint32(n))
	}
	return out
}

// checkJWT checks that the token settings of `sdsagent ca` go together.
func (c CA) checkJWT() error {
	switch {
	case c.JWKSFile == "" && c.JWTIssuer != "":
		return fmt.Errorf("--jwt-issuer needs --jwks: the keys that sign the tokens")
	case c.JWKSFile != "" && c.JWTIssuer == "":
		return fmt.Errorf("--jwks needs --jwt-issuer: the issuer the tokens must carry (see the iss field of a token, or kubectl get --raw /.well-known/openid-configuration)")
	case c.JWKSFile != "" && c.JWTAudience == "":
		return fmt.Errorf("--jwt-audience must not be empty with --jwks")
	}
	return nil
}
