package transport

import (
	"net/url"
	"strings"
)

// sensitiveParam reports whether a query parameter carries a secret.
func sensitiveParam(name string) bool {
	n := strings.ToLower(name)
	for _, s := range []string{"pass", "secret", "token", "cred", "nkey", "apikey", "api_key", "access_key", "private", "auth"} {
		if strings.Contains(n, s) {
			return true
		}
	}
	return false
}

const redacted = "xxxxx"

// Redact returns rawURL fit for errors and logs: the whole user-info
// (user names double as tokens on some brokers) and the values of
// secret-looking query parameters (password, token, secret, credentials,
// nkey, ...) are replaced with "xxxxx". A URL that does not parse is cut
// down to its scheme and host where they can be found.
func Redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		s := rawURL
		scheme := ""
		if i := strings.Index(s, "://"); i >= 0 {
			scheme, s = s[:i+3], s[i+3:]
		}
		if i := strings.LastIndex(s, "@"); i >= 0 {
			s = redacted + "@" + s[i+1:]
		}
		if i := strings.IndexAny(s, "?#"); i >= 0 {
			s = s[:i] + "?" + redacted
		}
		return scheme + s
	}
	return RedactURL(u)
}

// RedactURL is Redact for a parsed URL.
func RedactURL(u *url.URL) string {
	c := *u
	if c.User != nil {
		c.User = url.User(redacted)
	}
	if c.RawQuery != "" {
		q := c.Query()
		for k, vs := range q {
			if sensitiveParam(k) {
				for i := range vs {
					vs[i] = redacted
				}
			}
		}
		c.RawQuery = q.Encode()
	}
	s := c.String()
	if c.Host == "" && c.User == nil && c.Opaque == "" && c.Scheme != "" && !strings.HasPrefix(s, c.Scheme+"://") {
		s = c.Scheme + "://" + strings.TrimPrefix(s, c.Scheme+":")
	}
	return strings.ReplaceAll(s, url.QueryEscape(redacted), redacted)
}

// secretsOf lists the secret strings of u: password, user name (it may be
// a token) and secret-looking query values.
func secretsOf(u *url.URL) []string {
	var s []string
	if u.User != nil {
		if n := u.User.Username(); n != "" {
			s = append(s, n)
		}
		if p, ok := u.User.Password(); ok && p != "" {
			s = append(s, p)
		}
	}
	for k, vs := range u.Query() {
		if sensitiveParam(k) {
			for _, v := range vs {
				if v != "" {
					s = append(s, v)
				}
			}
		}
	}
	return s
}

// scrubbed hides secrets from an error's text while keeping its chain for
// errors.Is and errors.As.
type scrubbed struct {
	err     error
	secrets []string
}

func (e *scrubbed) Error() string { return RedactSecrets(e.err.Error(), e.secrets...) }
func (e *scrubbed) Unwrap() error { return e.err }

func scrub(err error, secrets []string) error {
	if len(secrets) == 0 {
		return err
	}
	return &scrubbed{err: err, secrets: secrets}
}

// RedactSecrets replaces every occurrence of each secret (of at least 3
// bytes; shorter ones would blank out ordinary text) in s with "xxxxx".
// Adapters use it on SDK errors that might echo a credential.
func RedactSecrets(s string, secrets ...string) string {
	for _, sec := range secrets {
		if len(sec) >= 3 {
			s = strings.ReplaceAll(s, sec, redacted)
			if esc := url.QueryEscape(sec); esc != sec {
				s = strings.ReplaceAll(s, esc, redacted)
			}
		}
	}
	return s
}
