package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// RabbitMQ is the Spec for RabbitMQ: $COURIER_AMQP_URL, else the server on
// 127.0.0.1:5672 (guest/guest), else a private node started from the
// installed binaries (see StartRabbitMQ).
var RabbitMQ = Spec{
	Name:    "RabbitMQ",
	EnvVar:  "COURIER_AMQP_URL",
	Default: "amqp://guest:guest@127.0.0.1:5672/",
	Addr:    "127.0.0.1:5672",
	Start: func(t testing.TB) (string, func(), error) {
		n, err := StartRabbitMQ(t)
		if err != nil {
			return "", nil, err
		}
		return n.URL(), func() { n.Stop() }, nil
	},
}

// FindRabbitMQ returns an amqp:// URL to test against, by the package rule.
func FindRabbitMQ(t testing.TB) string {
	t.Helper()
	return Find(t, RabbitMQ)
}

// rabbitBin is where Debian installs the scripts that run RabbitMQ
// directly (the /usr/sbin wrappers switch to the rabbitmq user).
const rabbitBin = "/usr/lib/rabbitmq/bin"

// RabbitNode is a private RabbitMQ node: loopback only, its own temp dir
// (data, logs, Erlang cookie), random ports. It can be stopped and started
// again on the same port and storage, for broker-restart tests.
type RabbitNode struct {
	Port    int
	TLSPort int // 0 without TLS
	dir     string
	env     []string
	name    string

	mu      sync.Mutex
	running bool
}

// RabbitTLS are PEM files for a private node's TLS listener.
type RabbitTLS struct {
	CAFile, CertFile, KeyFile string
}

// StartRabbitMQ starts a private node (about 7 s) and stops it when t's
// cleanup runs. It fails when the binaries are not installed.
func StartRabbitMQ(t testing.TB) (*RabbitNode, error) {
	t.Helper()
	return StartRabbitMQTLS(t, nil)
}

// StartRabbitMQTLS is StartRabbitMQ with, when tc is set, a TLS listener
// on 127.0.0.1:TLSPort as well (no client certificate required).
func StartRabbitMQTLS(t testing.TB, tc *RabbitTLS) (*RabbitNode, error) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(rabbitBin, "rabbitmq-server")); err != nil {
		return nil, fmt.Errorf("rabbitmq-server not installed: %w", err)
	}
	dir, err := os.MkdirTemp("", "courier-rabbit-")
	if err != nil {
		return nil, err
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	n := &RabbitNode{
		Port: FreePort(t),
		dir:  dir,
		name: "courier-" + hex.EncodeToString(b[:]) + "@localhost",
	}
	dist := FreePort(t)
	conf := fmt.Sprintf("listeners.tcp.1 = 127.0.0.1:%d\nloopback_users = none\n", n.Port)
	if tc != nil {
		n.TLSPort = FreePort(t)
		conf += fmt.Sprintf("listeners.ssl.1 = 127.0.0.1:%d\nssl_options.cacertfile = %s\nssl_options.certfile = %s\nssl_options.keyfile = %s\nssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n",
			n.TLSPort, tc.CAFile, tc.CertFile, tc.KeyFile)
	}
	for name, body := range map[string]string{
		"rabbitmq.conf":     conf,
		"enabled_plugins":   "[].\n",
		"rabbitmq-env.conf": "",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			return nil, err
		}
	}
	n.env = append(os.Environ(),
		"HOME="+dir,
		"RABBITMQ_NODENAME="+n.name,
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		"RABBITMQ_NODE_PORT="+strconv.Itoa(n.Port),
		"RABBITMQ_DIST_PORT="+strconv.Itoa(dist),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(dir, "rabbitmq.conf"),
		"RABBITMQ_CONF_ENV_FILE="+filepath.Join(dir, "rabbitmq-env.conf"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(dir, "enabled_plugins"),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(dir, "log"),
		"RABBITMQ_PID_FILE="+filepath.Join(dir, "rabbit.pid"),
		"ERL_EPMD_ADDRESS=127.0.0.1",
		"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}",
	)
	if err := n.Start(context.Background()); err != nil {
		n.Stop()
		return nil, err
	}
	t.Cleanup(n.Stop)
	return n, nil
}

// URL is the node's amqp:// URL (guest/guest).
func (n *RabbitNode) URL() string {
	return fmt.Sprintf("amqp://guest:guest@127.0.0.1:%d/", n.Port)
}

// TLSURL is the node's amqps:// URL (guest/guest), without parameters.
func (n *RabbitNode) TLSURL() string {
	return fmt.Sprintf("amqps://guest:guest@127.0.0.1:%d/", n.TLSPort)
}

// Start starts the node (again) and waits until it accepts AMQP
// connections.
func (n *RabbitNode) Start(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.running {
		return nil
	}
	cmd := exec.CommandContext(ctx, filepath.Join(rabbitBin, "rabbitmq-server"), "-detached")
	cmd.Env = n.env
	cmd.Dir = n.dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("rabbitmq-server: %w: %s", err, bytes.TrimSpace(out))
	}
	n.running = true
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if _, err := n.ctl(wctx, "wait", "--timeout", "60", filepath.Join(n.dir, "rabbit.pid")); err != nil {
		return fmt.Errorf("node did not start: %w", err)
	}
	if err := WaitReachable(fmt.Sprintf("127.0.0.1:%d", n.Port), 30*time.Second); err != nil {
		return err
	}
	if n.TLSPort != 0 {
		return WaitReachable(fmt.Sprintf("127.0.0.1:%d", n.TLSPort), 30*time.Second)
	}
	return nil
}

// Restart stops the node and starts it again on the same port and storage.
func (n *RabbitNode) Restart(ctx context.Context) error {
	if err := n.stop(ctx); err != nil {
		return err
	}
	return n.Start(ctx)
}

// Stop stops the node (it is safe to call more than once) and removes its
// directory.
func (n *RabbitNode) Stop() {
	_ = n.stop(context.Background())
	_ = os.RemoveAll(n.dir)
}

func (n *RabbitNode) stop(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.running {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	_, err := n.ctl(ctx, "stop", filepath.Join(n.dir, "rabbit.pid"))
	if err != nil {
		// Last resort: kill the Erlang VM by the pid it wrote.
		if b, rerr := os.ReadFile(filepath.Join(n.dir, "rabbit.pid")); rerr == nil {
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
				if p, ferr := os.FindProcess(pid); ferr == nil {
					_ = p.Kill()
				}
			}
		}
	}
	n.running = false
	return err
}

// CloseAllConnections force-closes every client connection from the
// server side, as an operator or a failing node would.
func (n *RabbitNode) CloseAllConnections(ctx context.Context) error {
	_, err := n.ctl(ctx, "close_all_connections", "courier test: forced close")
	return err
}

// Ctl runs rabbitmqctl against the node (e.g. "set_vm_memory_high_watermark",
// "0" to raise a memory alarm) and returns its output.
func (n *RabbitNode) Ctl(ctx context.Context, args ...string) (string, error) {
	return n.ctl(ctx, args...)
}

func (n *RabbitNode) ctl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(rabbitBin, "rabbitmqctl"), append([]string{"-n", n.name}, args...)...)
	cmd.Env = n.env
	cmd.Dir = n.dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("rabbitmqctl %s: %w: %s", args[0], err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// CloseRabbitConnections force-closes, from the server side, the
// connections of the node at 127.0.0.1:5672 (the machine's shared node,
// reached with the system rabbitmqctl) whose connection_name client
// property starts with prefix, and returns how many it closed. It touches
// no other client's connections.
func CloseRabbitConnections(ctx context.Context, prefix string) (int, error) {
	if prefix == "" {
		return 0, errors.New("testenv: empty connection name prefix")
	}
	out, err := exec.CommandContext(ctx, "rabbitmqctl", "-q", "list_connections", "pid", "client_properties").CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("rabbitmqctl list_connections: %w: %s", err, bytes.TrimSpace(out))
	}
	closed := 0
	for _, line := range strings.Split(string(out), "\n") {
		pid, props, ok := strings.Cut(line, "\t")
		if !ok || !strings.HasPrefix(pid, "<") {
			continue
		}
		if !strings.Contains(props, `{"connection_name","`+prefix) && !strings.Contains(props, `{"connection_name",longstr,<<"`+prefix) {
			continue
		}
		if o, err := exec.CommandContext(ctx, "rabbitmqctl", "close_connection", pid, "courier test: forced close").CombinedOutput(); err != nil {
			return closed, fmt.Errorf("rabbitmqctl close_connection: %w: %s", err, bytes.TrimSpace(o))
		}
		closed++
	}
	return closed, nil
}
