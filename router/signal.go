package router

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// ErrHardStop is returned by RunUntilSignal when a second signal stopped
// the router during its drain: handlers were cancelled and their messages
// handed back for redelivery.
var ErrHardStop = errors.New("router: stopped at once by a second signal; in-flight messages handed back")

// hardStopWait is how long RunUntilSignal waits, after a stop that did not
// drain (the grace ran out, or a second signal), for Run to return: the
// subscriptions end as soon as the cancelled handlers return, and their
// nacks land. A handler that ignores its context could hold Run forever;
// RunUntilSignal returns anyway, so the process can exit (the broker
// redelivers what was in flight).
const hardStopWait = 5 * time.Second

// RunUntilSignal runs r until ctx ends or the process receives one of
// signals (default SIGINT and SIGTERM), then shuts it down gracefully,
// allowing grace for in-flight handlers (0 means 30s); a second signal
// during the drain stops it at once (Close). It returns nil after a clean
// shutdown, context.DeadlineExceeded when the grace ran out, ErrHardStop
// after a second signal, and Run's error when Run ended for another
// reason (a failed route). After a stop that did not drain it waits at
// most 5s more for cancelled handlers to return: a handler that ignores
// its context does not keep the process from exiting.
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
		cancel() // Shutdown stops waiting for the drain
		<-shut
		serr = ErrHardStop
	}
	if serr != nil {
		t := time.NewTimer(hardStopWait)
		defer t.Stop()
		select {
		case <-runErr:
		case <-t.C:
			r.log.Error("courier: handlers did not return after their context was cancelled; returning without them", "waited", hardStopWait)
		}
		return serr
	}
	err := <-runErr
	if errors.Is(err, ErrClosed) {
		return nil
	}
	return err
}
