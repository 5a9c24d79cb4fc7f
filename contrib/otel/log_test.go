package courierotel_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"testing/slogtest"

	"go.opentelemetry.io/otel/trace"

	courierotel "github.com/courierkit/courier/contrib/otel"
)

func spanContext(t *testing.T) (context.Context, trace.SpanContext) {
	t.Helper()
	tid, _ := trace.TraceIDFromHex("0af7651916cd43dd8448eb211c80319c")
	sid, _ := trace.SpanIDFromHex("b7ad6b7169203331")
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled})
	return trace.ContextWithSpanContext(context.Background(), sc), sc
}

func decodeLine(t *testing.T, b *bytes.Buffer) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b.Bytes(), &m); err != nil {
		t.Fatalf("log line %q: %v", b.String(), err)
	}
	b.Reset()
	return m
}

// trace_id and span_id stay top-level however deep the logger's groups
// go, and the record's own attributes and the logger's stay where slog
// puts them.
func TestLogHandlerIDsTopLevelInGroups(t *testing.T) {
	ctx, sc := spanContext(t)
	var buf bytes.Buffer
	root := slog.New(courierotel.LogHandler(slog.NewJSONHandler(&buf, nil)))

	root.With("svc", "billing").WithGroup("req").With("a", 1).WithGroup("inner").InfoContext(ctx, "hi", "b", 2)
	m := decodeLine(t, &buf)
	if m["trace_id"] != sc.TraceID().String() || m["span_id"] != sc.SpanID().String() {
		t.Errorf("trace_id/span_id not top-level: %v", m)
	}
	if m["svc"] != "billing" {
		t.Errorf("svc = %v, want billing: %v", m["svc"], m)
	}
	req, _ := m["req"].(map[string]any)
	inner, _ := req["inner"].(map[string]any)
	if req["a"] != float64(1) || inner["b"] != float64(2) {
		t.Errorf("grouped attributes moved: %v", m)
	}
	if _, ok := req["trace_id"]; ok {
		t.Errorf("trace_id inside the group: %v", m)
	}
	if _, ok := inner["trace_id"]; ok {
		t.Errorf("trace_id inside the group: %v", m)
	}

	// Without groups: added to the record, as before.
	root.InfoContext(ctx, "plain", "k", "v")
	m = decodeLine(t, &buf)
	if m["trace_id"] != sc.TraceID().String() || m["k"] != "v" {
		t.Errorf("no-group line: %v", m)
	}

	// Without a span the output is the wrapped handler's, byte for byte,
	// groups included.
	var plain bytes.Buffer
	want := slog.New(slog.NewJSONHandler(&plain, nil)).WithGroup("req").With("a", 1)
	got := root.WithGroup("req").With("a", 1)
	want.Info("x", "b", 2)
	got.Info("x", "b", 2)
	if strip(buf.String()) != strip(plain.String()) {
		t.Errorf("without a span:\n got %s\nwant %s", buf.String(), plain.String())
	}
	buf.Reset()

	// An empty group name is no group (slog's rule): IDs on the record.
	root.WithGroup("").InfoContext(ctx, "e")
	if m = decodeLine(t, &buf); m["trace_id"] != sc.TraceID().String() {
		t.Errorf("WithGroup(\"\") line: %v", m)
	}

	// Siblings derived from one grouped logger do not share their calls.
	g := root.WithGroup("g")
	g1, g2 := g.With("one", 1), g.With("two", 2)
	g1.InfoContext(ctx, "1")
	m1 := decodeLine(t, &buf)
	g2.InfoContext(ctx, "2")
	m2 := decodeLine(t, &buf)
	if gm, _ := m1["g"].(map[string]any); gm["one"] != float64(1) || gm["two"] != nil {
		t.Errorf("first sibling: %v", m1)
	}
	if gm, _ := m2["g"].(map[string]any); gm["two"] != float64(2) || gm["one"] != nil {
		t.Errorf("second sibling: %v", m2)
	}
}

// strip removes the time field, the only difference between two lines
// logged one after the other.
func strip(line string) string {
	if i := strings.Index(line, `"level"`); i >= 0 {
		return line[i:]
	}
	return line
}

// LogHandler keeps slog's handler contract (testing/slogtest), for records
// without a span (passed through) and with one (trace IDs added, the test's
// expected attributes where slog puts them).
func TestLogHandlerSlogtest(t *testing.T) {
	for _, withSpan := range []bool{false, true} {
		name := "no span"
		if withSpan {
			name = "span"
		}
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			var h slog.Handler = courierotel.LogHandler(slog.NewJSONHandler(&buf, nil))
			if withSpan {
				ctx, _ := spanContext(t)
				h = ctxHandler{h, ctx}
			}
			results := func() []map[string]any {
				var ms []map[string]any
				for _, line := range bytes.Split(buf.Bytes(), []byte{'\n'}) {
					if len(line) == 0 {
						continue
					}
					var m map[string]any
					if err := json.Unmarshal(line, &m); err != nil {
						t.Fatal(err)
					}
					if withSpan {
						if m["trace_id"] == nil {
							t.Errorf("no top-level trace_id: %s", line)
						}
						delete(m, "trace_id")
						delete(m, "span_id")
					}
					ms = append(ms, m)
				}
				return ms
			}
			if err := slogtest.TestHandler(h, results); err != nil {
				t.Error(err)
			}
		})
	}
}

// ctxHandler hands every record to h with ctx, as a logger's *Context
// methods would.
type ctxHandler struct {
	h   slog.Handler
	ctx context.Context
}

func (c ctxHandler) Enabled(_ context.Context, l slog.Level) bool  { return c.h.Enabled(c.ctx, l) }
func (c ctxHandler) Handle(_ context.Context, r slog.Record) error { return c.h.Handle(c.ctx, r) }
func (c ctxHandler) WithAttrs(a []slog.Attr) slog.Handler          { return ctxHandler{c.h.WithAttrs(a), c.ctx} }
func (c ctxHandler) WithGroup(n string) slog.Handler               { return ctxHandler{c.h.WithGroup(n), c.ctx} }
