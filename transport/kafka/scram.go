package kafkatransport

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"hash"
	"strconv"
	"strings"
)

// scramClient is the client side of SCRAM (RFC 5802, RFC 7677) for
// sarama's SCRAMClient interface. sarama leaves the implementation to the
// application; the usual choice, xdg-go/scram, is not among this module's
// dependencies, and the exchange is small enough to write on the standard
// library's crypto (pbkdf2, hmac).
type scramClient struct {
	h        func() hash.Hash
	user     string
	password string
	authzID  string
	nonce    string
	first    string // client-first-message-bare
	server   []byte // expected server signature
	step     int
	done     bool
}

func sha256Hash() hash.Hash { return sha256.New() }
func sha512Hash() hash.Hash { return sha512.New() }

func newSCRAM(h func() hash.Hash) *scramClient { return &scramClient{h: h} }

var errSCRAM = errors.New("kafkatransport: SCRAM authentication failed")

func scramName(s string) string {
	return strings.NewReplacer("=", "=3D", ",", "=2C").Replace(s)
}

func (c *scramClient) Begin(user, password, authzID string) error {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return err
	}
	c.user, c.password, c.authzID = user, password, authzID
	c.nonce = base64.RawStdEncoding.EncodeToString(b)
	c.step, c.done, c.server = 0, false, nil
	return nil
}

func (c *scramClient) Step(challenge string) (string, error) {
	c.step++
	switch c.step {
	case 1:
		c.first = "n=" + scramName(c.user) + ",r=" + c.nonce
		gs2 := "n,"
		if c.authzID != "" {
			gs2 += "a=" + scramName(c.authzID)
		}
		return gs2 + "," + c.first, nil
	case 2:
		return c.final(challenge)
	case 3:
		c.done = true
		attrs := scramAttrs(challenge)
		if e, ok := attrs["e"]; ok {
			return "", errors.Join(errSCRAM, errors.New("server error: "+e))
		}
		sig, err := base64.StdEncoding.DecodeString(attrs["v"])
		if err != nil || subtle.ConstantTimeCompare(sig, c.server) != 1 {
			return "", errors.Join(errSCRAM, errors.New("server signature does not verify"))
		}
		return "", nil
	}
	return "", errors.Join(errSCRAM, errors.New("unexpected extra step"))
}

func (c *scramClient) Done() bool { return c.done }

func scramAttrs(msg string) map[string]string {
	m := map[string]string{}
	for _, kv := range strings.Split(msg, ",") {
		if len(kv) >= 2 && kv[1] == '=' {
			m[kv[:1]] = kv[2:]
		}
	}
	return m
}

func (c *scramClient) final(serverFirst string) (string, error) {
	attrs := scramAttrs(serverFirst)
	nonce, salt64, iters := attrs["r"], attrs["s"], attrs["i"]
	if !strings.HasPrefix(nonce, c.nonce) || len(nonce) == len(c.nonce) {
		return "", errors.Join(errSCRAM, errors.New("server nonce does not extend the client's"))
	}
	salt, err := base64.StdEncoding.DecodeString(salt64)
	if err != nil {
		return "", errors.Join(errSCRAM, errors.New("bad salt"))
	}
	n, err := strconv.Atoi(iters)
	if err != nil || n < 1 {
		return "", errors.Join(errSCRAM, errors.New("bad iteration count"))
	}
	keyLen := c.h().Size()
	salted, err := pbkdf2.Key(c.h, c.password, salt, n, keyLen)
	if err != nil {
		return "", errors.Join(errSCRAM, err)
	}
	mac := func(key []byte, s string) []byte {
		m := hmac.New(c.h, key)
		m.Write([]byte(s))
		return m.Sum(nil)
	}
	clientKey := mac(salted, "Client Key")
	hs := c.h()
	hs.Write(clientKey)
	stored := hs.Sum(nil)
	gs2 := "n,"
	if c.authzID != "" {
		gs2 += "a=" + scramName(c.authzID)
	}
	withoutProof := "c=" + base64.StdEncoding.EncodeToString([]byte(gs2+",")) + ",r=" + nonce
	auth := c.first + "," + serverFirst + "," + withoutProof
	sig := mac(stored, auth)
	proof := make([]byte, len(clientKey))
	for i := range clientKey {
		proof[i] = clientKey[i] ^ sig[i]
	}
	c.server = mac(mac(salted, "Server Key"), auth)
	return withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof), nil
}
