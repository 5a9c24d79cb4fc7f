package testenv

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

// RedisSpec finds Redis: $COURIER_REDIS_URL (a redis:// URL); else the
// server at 127.0.0.1:6379; else a private redis-server from PATH,
// listening on 127.0.0.1 only, on a random port, without persistence, in
// a temp dir.
var RedisSpec = Spec{
	Name:    "Redis",
	EnvVar:  "COURIER_REDIS_URL",
	Default: "redis://127.0.0.1:6379/0",
	Addr:    "127.0.0.1:6379",
	Start:   startRedis,
}

// Redis returns a redis:// URL following RedisSpec.
func Redis(t testing.TB) string {
	t.Helper()
	return Find(t, RedisSpec)
}

func startRedis(t testing.TB) (string, func(), error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return "", nil, fmt.Errorf("no redis-server in PATH: %w", err)
	}
	dir, err := os.MkdirTemp("", "courier-redis-")
	if err != nil {
		return "", nil, err
	}
	port := FreePort(t)
	var out bytes.Buffer
	cmd := exec.Command(bin, "--bind", "127.0.0.1", "--port", strconv.Itoa(port),
		"--save", "", "--appendonly", "no", "--dir", dir, "--daemonize", "no", "--protected-mode", "yes")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return "", nil, err
	}
	waited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(waited) }()
	stop := func() {
		_ = cmd.Process.Kill()
		<-waited
		os.RemoveAll(dir)
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	if err := WaitReachable(addr, 10*time.Second); err != nil {
		stop() // after Wait, out is no longer written
		return "", nil, fmt.Errorf("%w; redis-server said: %s", err, out.String())
	}
	return "redis://" + addr + "/0", stop, nil
}
