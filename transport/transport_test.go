package transport_test

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	_ "github.com/courierkit/courier/transport/mem"
)

func TestOpenUnknownSchemeListsRegistered(t *testing.T) {
	_, err := transport.Open(context.Background(), "nats://u:hunter2@127.0.0.1:4222")
	if !errors.Is(err, transport.ErrUnknownScheme) {
		t.Fatalf("err = %v, want ErrUnknownScheme", err)
	}
	for _, want := range []string{"mem", `_ "github.com/courierkit/courier/transport/nats"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q should mention %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "u:") {
		t.Errorf("credentials in error: %v", err)
	}
	_, err = transport.Open(context.Background(), "bogus://x")
	if !strings.Contains(err.Error(), "registered schemes: ") || !strings.Contains(err.Error(), "blank") && !strings.Contains(err.Error(), "import") {
		t.Errorf("unknown scheme error lacks the hint: %v", err)
	}
}

func TestOpenMalformedURLHidesSecrets(t *testing.T) {
	for _, raw := range []string{
		"amqp://guest:s3cret%zz@127.0.0.1:5672/",
		"nats://tok3n@host:notaport",
		"://s3cret@x",
	} {
		_, err := transport.Open(context.Background(), raw)
		if err == nil {
			t.Fatalf("%q: no error", raw)
		}
		if strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "tok3n") {
			t.Errorf("%q: secret in error %q", raw, err)
		}
	}
}

func TestOpenUnknownParameter(t *testing.T) {
	_, err := transport.Open(context.Background(), "mem://?max_backlog=5&colour=blue")
	if err == nil || !strings.Contains(err.Error(), "unknown parameter colour") || !strings.Contains(err.Error(), "accepted: max_backlog") {
		t.Fatalf("err = %v", err)
	}
	_, err = transport.Open(context.Background(), "mem://?max_backlog=lots")
	if err == nil || !strings.Contains(err.Error(), "max_backlog") {
		t.Fatalf("bad value err = %v", err)
	}
	c, err := transport.Open(context.Background(), "mem://?max_backlog=5")
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

func TestOpenCancelledContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := transport.Open(ctx, "mem://"); err != context.Canceled {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestRegisterDuplicatePanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("duplicate Register did not panic")
		}
	}()
	transport.Register("mem", func(context.Context, *url.URL) (transport.Conn, error) { return nil, nil })
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"amqp://guest:guest@127.0.0.1:5672/vh":              "amqp://xxxxx@127.0.0.1:5672/vh",
		"nats://s3cr3ttoken@127.0.0.1:4222":                 "nats://xxxxx@127.0.0.1:4222",
		"kafka://h:9092?sasl_password=pw&sasl_user=bob":     "kafka://h:9092?sasl_password=xxxxx&sasl_user=bob",
		"gcppubsub://proj?credentials_file=/x.json&ack=10s": "gcppubsub://proj?ack=10s&credentials_file=xxxxx",
		"mem://":                       "mem://",
		"amqp://user:p%zz@host:5672/":  "amqp://xxxxx@host:5672/",
		"sqs://h?access_key=AK&x=1#fr": "sqs://h?access_key=xxxxx&x=1#fr",
		"nats://h?servers=nats://u:p@b:1,c:2,tls://t@d/x&name=a@b": "nats://h?name=a%40b&servers=nats%3A%2F%2Fxxxxx%40b%3A1%2Cc%3A2%2Ctls%3A%2F%2Fxxxxx%40d%2Fx",
	} {
		if got := transport.Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
	if got := transport.RedactSecrets("dial bob:pw42@host failed", "pw42", "x"); got != "dial bob:xxxxx@host failed" {
		t.Errorf("RedactSecrets = %q", got)
	}
}

// Secrets of 1 or 2 bytes are hidden only as a whole user-info field or
// the value of a secret-looking parameter; ordinary text keeps them.
func TestRedactSecretsShort(t *testing.T) {
	secrets := []string{"p", "ab", "é", ""}
	for in, want := range map[string]string{
		"parse nats://u:p@127.0.0.1:x: bad port":         "parse nats://u:xxxxx@127.0.0.1:x: bad port",
		"dial nats://ab@h:4222, nats://ab:p@h2: refused": "dial nats://xxxxx@h:4222, nats://xxxxx:xxxxx@h2: refused",
		"amqp://user:%C3%A9@h/ failed":                   "amqp://user:xxxxx@h/ failed",
		"x://abc:pp@h and x://ab/path@z":                 "x://abc:pp@h and x://ab/path@z",
		"GET /?password=p&token=ab&name=ab&q=p":          "GET /?password=xxxxx&token=xxxxx&name=ab&q=p",
		"bad secret=ab; api_key=ab, auth_token=abc":      "bad secret=xxxxx; api_key=xxxxx, auth_token=abc",
		"a plain sentence about apples, pears and abba":  "a plain sentence about apples, pears and abba",
		"user bob@host: password = ab":                   "user bob@host: password = ab",
		"no scheme u:p@host":                             "no scheme u:p@host",
	} {
		if got := transport.RedactSecrets(in, secrets...); got != want {
			t.Errorf("RedactSecrets(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestQuery(t *testing.T) {
	u, _ := url.Parse("x://h?n=3&d=250ms&b=true&e=quorum&l=a,%20b,,c&s=str&i64=9")
	var (
		n   int
		d   time.Duration
		b   bool
		e   = "classic"
		l   []string
		s   string
		i64 int64
		abs = 7
	)
	q := transport.NewQuery(u)
	q.Int("n", &n)
	q.Duration("d", &d)
	q.Bool("b", &b)
	q.Enum("e", &e, "classic", "quorum")
	q.List("l", &l)
	q.String("s", &s)
	q.Int64("i64", &i64)
	q.Int("absent", &abs)
	if err := q.Err(); err != nil {
		t.Fatal(err)
	}
	if n != 3 || d != 250*time.Millisecond || !b || e != "quorum" || strings.Join(l, "|") != "a|b|c" || s != "str" || i64 != 9 || abs != 7 {
		t.Errorf("parsed n=%d d=%v b=%v e=%s l=%v s=%s i64=%d abs=%d", n, d, b, e, l, s, i64, abs)
	}
	u, _ = url.Parse("x://h?n=-1&e=stream&password=hunter2&n2=1&n2=2")
	q = transport.NewQuery(u)
	q.Int("n", &n)
	q.Enum("e", &e, "classic", "quorum")
	q.Int("password", &n)
	q.Int("n2", &n)
	err := q.Err()
	for _, want := range []string{"n=\"-1\"", "one of classic, quorum", "password=xxxxx", "n2 given 2 times"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v should contain %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("secret value in error: %v", err)
	}
}

func TestCheckName(t *testing.T) {
	for _, ok := range []string{"orders", "a", "Orders.v1", "a_b-c.d", "9lives"} {
		if err := transport.CheckName("topic", ok, 0); err != nil {
			t.Errorf("%q rejected: %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".x", "-x", "_x", "a b", "a*", "a>", "a/b", "ä", strings.Repeat("x", 201)} {
		err := transport.CheckName("group", bad, 0)
		var ne *transport.NameError
		if !errors.Is(err, transport.ErrInvalidName) || !errors.As(err, &ne) || ne.Kind != "group" {
			t.Errorf("%q: err = %v", bad, err)
		}
	}
	if err := transport.CheckName("topic", "abcdef", 5); err == nil {
		t.Error("maxLen not applied")
	}
}

func TestPreparePublish(t *testing.T) {
	l := transport.Limits{MaxPayload: 10, MaxHeaders: 2, MaxHeaderBytes: 8, MaxMessage: 55, MaxIDBytes: 40, MaxKeyBytes: 4}
	ok := &message.Message{Payload: []byte("0123456789")}
	if err := transport.PreparePublish("t", []*message.Message{ok}, l); err != nil || ok.ID == "" {
		t.Fatalf("err %v id %q", err, ok.ID)
	}
	cases := map[string]*message.Message{
		"payload": {ID: "1", Payload: make([]byte, 11)},
		"headers": {ID: "1", Headers: message.Header{"a": "", "b": "", "c": ""}},
		"header":  {ID: "1", Headers: message.Header{"abcd": "efghi"}},
		"key":     {ID: "1", Key: "12345"},
		"id":      {ID: strings.Repeat("i", 41)},
		"message": {ID: strings.Repeat("i", 40), Key: "k", Payload: make([]byte, 10), Headers: message.Header{"a": "1234567"}},
	}
	for what, m := range cases {
		err := transport.PreparePublish("t", []*message.Message{{ID: "ok"}, m}, l)
		var le *transport.LimitError
		if !errors.As(err, &le) || le.What != what || le.Index != 1 || !errors.Is(err, transport.ErrLimit) {
			t.Errorf("%s: err = %v", what, err)
		}
	}
	for _, h := range []string{"", "bad\nname", "\xff"} {
		err := transport.PreparePublish("t", []*message.Message{{ID: "x", Headers: message.Header{h: "v"}}}, transport.Limits{})
		if !errors.Is(err, transport.ErrInvalidMessage) {
			t.Errorf("header name %q: err = %v", h, err)
		}
	}
	if err := transport.PreparePublish("t", []*message.Message{nil}, l); !errors.Is(err, transport.ErrInvalidMessage) {
		t.Errorf("nil message: %v", err)
	}
	if err := transport.PreparePublish("bad topic", nil, l); !errors.Is(err, transport.ErrInvalidName) {
		t.Errorf("bad topic: %v", err)
	}
}

func TestSubscribeOptionsDefaults(t *testing.T) {
	d := transport.SubscribeOptions{}.Defaults()
	if d.Concurrency != 1 || d.MaxInFlight != 64 || d.AckWait != 30*time.Second || d.NackDelay != 0 || d.Start != transport.StartNew {
		t.Errorf("defaults %+v", d)
	}
	d = transport.SubscribeOptions{Concurrency: 100}.Defaults()
	if d.MaxInFlight != 100 {
		t.Errorf("MaxInFlight %d should be raised to Concurrency", d.MaxInFlight)
	}
}
