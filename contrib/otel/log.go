package courierotel

import (
	"context"
	"log/slog"

	"go.opentelemetry.io/otel/trace"
)

// LogHandler wraps h so that every record logged with a context holding a
// span (slog's *Context methods, as courier's packages log) gets the
// attributes trace_id and span_id, which join log lines to traces. Records
// without a valid span context pass through unchanged.
//
// trace_id and span_id stay top-level when the logger has groups
// (Logger.WithGroup), where log pipelines look for them, rather than
// inside the innermost group as the record's own attributes are. For such
// a logger each record with a span rebuilds the handler chain (h's
// WithAttrs and WithGroup calls made since the first group, trace IDs
// first); a logger without groups adds the two attributes to the record
// and nothing else. courier logs nothing per message, so this is not on
// the message path.
func LogHandler(h slog.Handler) slog.Handler { return &logHandler{h: h} }

type logHandler struct {
	h slog.Handler // h with every WithAttrs and WithGroup applied
	// base is h as it was before the first non-empty WithGroup (nil
	// while there is none) and ops the calls made since, in order.
	base slog.Handler
	ops  []logOp
}

// logOp is one WithGroup (group != "") or WithAttrs call.
type logOp struct {
	group string
	attrs []slog.Attr
}

func (l *logHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return l.h.Enabled(ctx, level)
}

func (l *logHandler) Handle(ctx context.Context, r slog.Record) error {
	if ctx == nil {
		return l.h.Handle(ctx, r)
	}
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return l.h.Handle(ctx, r)
	}
	ids := [2]slog.Attr{slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String())}
	if l.base == nil {
		r = r.Clone()
		r.AddAttrs(ids[:]...)
		return l.h.Handle(ctx, r)
	}
	h := l.base.WithAttrs(ids[:])
	for _, op := range l.ops {
		if op.group != "" {
			h = h.WithGroup(op.group)
		} else {
			h = h.WithAttrs(op.attrs)
		}
	}
	return h.Handle(ctx, r)
}

func (l *logHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	if len(attrs) == 0 {
		return l
	}
	n := &logHandler{h: l.h.WithAttrs(attrs), base: l.base}
	if l.base != nil {
		n.ops = append(l.ops[:len(l.ops):len(l.ops)], logOp{attrs: attrs})
	}
	return n
}

func (l *logHandler) WithGroup(name string) slog.Handler {
	if name == "" { // slog: an empty group name is no group
		return l
	}
	n := &logHandler{h: l.h.WithGroup(name), base: l.base}
	if n.base == nil {
		n.base = l.h
	}
	n.ops = append(l.ops[:len(l.ops):len(l.ops)], logOp{group: name})
	return n
}
