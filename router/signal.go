package router

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// RunUntilSignal runs r until ctx ends or the process receives one of
// signals (default SIGINT and SIGTERM), then shuts it down gracefully,
// allowing grace for in-flight handlers (0 means 30s); a second signal
// during the drain stops it at once (Close). It returns nil after a clean
// shutdown, context.DeadlineExceeded when the grace ran out, and Run's
// error when Run ended for another reason (a failed route).
func (r *Router) RunUntilSignal(ctx context.Context, grace time.Duration, signals ...os.Signal) error {
	if len(signals) == 0 {
		signals = []os.Signal{os.Interrupt, syscall.SIGTERM}
	}
	if grace <= 0 {
		grace = 30 * time.Second
	}
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, signals...)
	defer signal.Stop(sig)

	runErr := make(chan error, 1)
	go func() { runErr <- r.Run(context.WithoutCancel(ctx)) }()

	select {
	case err := <-runErr:
		return err
	case s := <-sig:
		r.log.Info("courier: signal received; shutting down", "signal", s.String(), "grace", grace)
	case <-ctx.Done():
		r.log.Info("courier: context ended; shutting down", "cause", context.Cause(ctx))
	}

	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- r.Shutdown(sctx) }()
	var serr error
	select {
	case serr = <-shut:
	case s := <-sig:
		r.log.Warn("courier: second signal; stopping now", "signal", s.String())
		_ = r.Close()
		serr = <-shut
	}
	err := <-runErr
	if serr != nil {
		return serr
	}
	if errors.Is(err, ErrClosed) {
		return nil
	}
	return err
}
