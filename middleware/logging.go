package middleware

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/courierkit/courier/message"
)

// LoggingOptions configure Logging.
type LoggingOptions struct {
	// Logger receives the lines. Default: slog.Default().
	Logger *slog.Logger
	// SuccessLevel is the level of the line for a handled (acked)
	// message, a skipped duplicate included. Default slog.LevelInfo;
	// set slog.LevelDebug for busy routes.
	SuccessLevel slog.Level
	// FailureLevel is the level for a message nacked for redelivery or
	// refused (breaker open, in progress). Default slog.LevelWarn. The
	// zero value means the default, so it cannot be slog.LevelInfo (0):
	// use slog.LevelInfo+1 for an Info-like level, or filter in the
	// handler.
	FailureLevel slog.Level
	// DeadLetterLevel is the level for a message dead-lettered or failed
	// permanently. Default slog.LevelError (as with FailureLevel, zero
	// means the default).
	DeadLetterLevel slog.Level
}

// Logging writes one structured line per message outcome: the message
// and correlation IDs, topic, group, delivery attempt, in-process tries,
// duration, outcome and error. Outcomes: "acked", "duplicate" (skipped by
// Idempotency), "dead-lettered" (with the dead-letter topic), "nacked"
// (with the redelivery delay when one was set), "breaker-open",
// "in-progress", "failed-permanent" (no DeadLetter took it: the
// transport's dead-letter path will). Place it right inside CorrelationID
// and outside everything else, so it sees the final outcome.
func Logging(opts LoggingOptions) message.Middleware {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	succ, fail, dead := opts.SuccessLevel, opts.FailureLevel, opts.DeadLetterLevel
	if fail == 0 {
		fail = slog.LevelWarn
	}
	if dead == 0 {
		dead = slog.LevelError
	}
	lowest := min(succ, fail, dead)
	return func(next message.Handler) message.Handler {
		return message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			if !log.Enabled(ctx, lowest) {
				return next.Handle(ctx, m) // nothing would be logged: no cost
			}
			n := &note{}
			start := time.Now()
			err := next.Handle(context.WithValue(ctx, noteKey{}, n), m)
			dur := time.Since(start)

			outcome, level := n.outcome, succ
			switch {
			case err == nil && outcome == "":
				outcome = "acked"
			case err == nil && outcome == "dead-lettered":
				level = dead
			case err == nil:
			case outcome != "":
				level = fail
			case message.IsPermanent(err):
				outcome, level = "failed-permanent", dead
			default:
				outcome, level = "nacked", fail
			}
			if !log.Enabled(ctx, level) {
				return err
			}
			attrs := make([]slog.Attr, 0, 12)
			attrs = append(attrs,
				slog.String("message_id", m.ID),
				slog.String("correlation_id", m.CorrelationID()),
				slog.String("topic", topicOf(ctx, m)),
			)
			if g := groupOf(ctx, ""); g != "" {
				attrs = append(attrs, slog.String("group", g))
			}
			attrs = append(attrs,
				slog.Int("attempt", m.Attempt),
				slog.Duration("duration", dur),
				slog.String("outcome", outcome),
			)
			if n.tries > 1 {
				attrs = append(attrs, slog.Int("tries", n.tries))
			}
			if n.dlq != "" {
				attrs = append(attrs, slog.String("dead_letter_topic", n.dlq))
			}
			if err != nil {
				attrs = append(attrs, slog.String("error", err.Error()))
				if d, ok := message.RetryDelay(err); ok {
					attrs = append(attrs, slog.Duration("redelivery_delay", d))
				}
				var pe *PanicError
				if errors.As(err, &pe) {
					attrs = append(attrs, slog.String("stack", string(pe.Stack)))
				}
			}
			log.LogAttrs(ctx, level, "courier: message "+outcome, attrs...)
			return err
		})
	}
}
