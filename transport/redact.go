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
// (user names double as tokens on some brokers), the values of
// secret-looking query parameters (password, token, secret, credentials,
// nkey, ...) and the user-info of URLs inside other parameter values
// ("scheme://user:password@host" entries of a comma-separated list, such
// as NATS's servers) are replaced with "xxxxx". A URL that does not parse is cut
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
			for i := range vs {
				if sensitiveParam(k) {
					vs[i] = redacted
				} else {
					vs[i], _ = embeddedUserInfo(vs[i])
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
		for _, v := range vs {
			if !sensitiveParam(k) {
				_, sec := embeddedUserInfo(v)
				s = append(s, sec...)
			} else if v != "" {
				s = append(s, v)
			}
		}
	}
	return s
}

// embeddedUserInfo finds the URLs with user-info in a parameter value (a
// URL or a comma-separated list, such as NATS's servers): it returns v
// with each "scheme://user:password@" cut to "scheme://xxxxx@", and the
// user names and passwords it held. Only entries with "://" count.
func embeddedUserInfo(v string) (string, []string) {
	if !strings.Contains(v, "@") {
		return v, nil
	}
	var sec []string
	items := strings.Split(v, ",")
	for n, it := range items {
		i := strings.Index(it, "://")
		if i < 0 {
			continue
		}
		auth := it[i+3:]
		if j := strings.IndexAny(auth, "/?#"); j >= 0 {
			auth = auth[:j]
		}
		at := strings.LastIndex(auth, "@")
		if at < 0 {
			continue
		}
		for _, f := range strings.SplitN(auth[:at], ":", 2) {
			if f != "" {
				sec = append(sec, f)
				if dec, err := url.PathUnescape(f); err == nil && dec != f {
					sec = append(sec, dec)
				}
			}
		}
		items[n] = it[:i+3] + redacted + it[i+3+at:]
	}
	return strings.Join(items, ","), sec
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

// RedactSecrets replaces every occurrence of each secret of at least 3
// bytes in s (also in its URL query escaping) with "xxxxx". Adapters use
// it on SDK errors that might echo a credential.
//
// A secret of 1 or 2 bytes would blank out ordinary text as a substring,
// so it is replaced only where it stands whole (as written or
// percent-decoded) in one of two places: a URL's user-info field, that
// is the user name or the password between "scheme://" and the "@" of
// the same authority (no "/", "?", "#", space or quote in between); or
// the value of a key=value pair whose key looks secret (password, token,
// secret, credentials, nkey, ..., as in Redact), the value ending at
// "&", ";", ",", a space, a quote, ")" or the end of s. Elsewhere (a
// user-info without "scheme://", a value under an ordinary key, free
// text) a secret shorter than 3 bytes stays visible.
func RedactSecrets(s string, secrets ...string) string {
	var short []string
	for _, sec := range secrets {
		switch {
		case sec == "":
		case len(sec) < 3:
			short = append(short, sec)
		default:
			s = strings.ReplaceAll(s, sec, redacted)
			if esc := url.QueryEscape(sec); esc != sec {
				s = strings.ReplaceAll(s, esc, redacted)
			}
		}
	}
	if len(short) > 0 {
		s = redactUserInfo(s, short)
		s = redactParams(s, short)
	}
	return s
}

// isShortSecret reports whether field, as written or percent-decoded, is
// one of secrets.
func isShortSecret(field string, secrets []string) bool {
	if field == "" || len(field) > 6 { // "%XX%XX" at most
		return false
	}
	dec, err := url.PathUnescape(field)
	if err != nil {
		dec = field
	}
	for _, sec := range secrets {
		if field == sec || dec == sec {
			return true
		}
	}
	return false
}

// redactUserInfo replaces the user-info fields of the URLs in s that are
// one of secrets.
func redactUserInfo(s string, secrets []string) string {
	var b strings.Builder
	for {
		i := strings.Index(s, "://")
		if i < 0 {
			break
		}
		b.WriteString(s[:i+3])
		s = s[i+3:]
		auth := s
		if j := strings.IndexAny(auth, "/?# \t\r\n\"'`<>"); j >= 0 {
			auth = auth[:j]
		}
		at := strings.LastIndex(auth, "@")
		if at < 0 {
			continue
		}
		user, pass, hasPass := strings.Cut(auth[:at], ":")
		if isShortSecret(user, secrets) {
			user = redacted
		}
		if hasPass && isShortSecret(pass, secrets) {
			pass = redacted
		}
		b.WriteString(user)
		if hasPass {
			b.WriteString(":" + pass)
		}
		s = s[at:]
	}
	b.WriteString(s)
	return b.String()
}

// redactParams replaces the values of secret-looking key=value pairs in s
// that are one of secrets.
func redactParams(s string, secrets []string) string {
	var b strings.Builder
	for {
		i := strings.IndexByte(s, '=')
		if i < 0 {
			break
		}
		k := i
		for k > 0 && isKeyByte(s[k-1]) {
			k--
		}
		key := s[k:i]
		b.WriteString(s[:i+1])
		s = s[i+1:]
		v := s
		if j := strings.IndexAny(v, "&;, \t\r\n\"')"); j >= 0 {
			v = v[:j]
		}
		if key != "" && sensitiveParam(key) && isShortSecret(v, secrets) {
			b.WriteString(redacted)
			s = s[len(v):]
		}
	}
	b.WriteString(s)
	return b.String()
}

func isKeyByte(c byte) bool {
	return c == '_' || c == '-' || c == '.' || '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
}
