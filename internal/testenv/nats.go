package testenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// NATS returns the URL of a NATS server with JetStream: $COURIER_NATS_URL,
// else nats://127.0.0.1:4222 when something answers there, else a private
// nats-server started from an installed binary (loopback, random port,
// JetStream store in a temp dir), else it skips (fails under CI).
//
// Adapter tests that need to stop and start the server (restart cases)
// embed nats-server/v2 instead; this finder is for "the machine's NATS".
func NATS(t testing.TB) string {
	t.Helper()
	return Find(t, Spec{
		Name:    "NATS",
		EnvVar:  "COURIER_NATS_URL",
		Default: "nats://127.0.0.1:4222",
		Addr:    "127.0.0.1:4222",
		Start:   startNATS,
	})
}

func startNATS(t testing.TB) (string, func(), error) {
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		for _, p := range []string{"/usr/sbin/nats-server", "/usr/local/bin/nats-server"} {
			if _, serr := os.Stat(p); serr == nil {
				bin, err = p, nil
				break
			}
		}
	}
	if err != nil {
		return "", nil, errors.New("no nats-server binary on PATH")
	}
	dir := t.TempDir()
	port := FreePort(t)
	cmd := exec.Command(bin, "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-js", "-sd", filepath.Join(dir, "js"), "-l", filepath.Join(dir, "nats.log"))
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("start %s: %w", bin, err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	stop := func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	if err := WaitReachable(addr, 10*time.Second); err != nil {
		stop()
		return "", nil, err
	}
	return "nats://" + addr, stop, nil
}
