package testenv

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"testing"
	"time"
)

// PostgresSpec finds PostgreSQL: $COURIER_POSTGRES_URL; else the server at
// 127.0.0.1:5432 (trust auth, database "test", user "postgres"); else a
// private instance started with initdb and pg_ctl from
// /usr/lib/postgresql/*/bin (as user postgres when running as root),
// listening on 127.0.0.1 only, on a random port, in a temp dir.
var PostgresSpec = Spec{
	Name:    "PostgreSQL",
	EnvVar:  "COURIER_POSTGRES_URL",
	Default: "postgres://postgres@127.0.0.1:5432/test?sslmode=disable",
	Addr:    "127.0.0.1:5432",
	Start:   startPostgres,
}

// Postgres returns a connection URL for PostgreSQL following PostgresSpec.
func Postgres(t testing.TB) string {
	t.Helper()
	return Find(t, PostgresSpec)
}

// postgresBin returns the newest /usr/lib/postgresql/<v>/bin holding initdb.
func postgresBin() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return versionOf(dirs[i]) > versionOf(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	return "", fmt.Errorf("no initdb under /usr/lib/postgresql/*/bin")
}

func versionOf(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

func startPostgres(t testing.TB) (string, func(), error) {
	bin, err := postgresBin()
	if err != nil {
		return "", nil, err
	}
	dir, err := os.MkdirTemp("", "courier-pg-")
	if err != nil {
		return "", nil, err
	}
	cleanup := func() { os.RemoveAll(dir) }
	// PostgreSQL refuses to run as root: run its tools as postgres then.
	var prefix []string
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			cleanup()
			return "", nil, fmt.Errorf("running as root and there is no postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			cleanup()
			return "", nil, err
		}
		prefix = []string{"runuser", "-u", "postgres", "--"}
	}
	run := func(args ...string) error {
		full := append(append([]string(nil), prefix...), args...)
		cmd := exec.Command(full[0], full[1:]...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%s: %w: %s", filepath.Base(args[0]), err, bytes.TrimSpace(out.Bytes()))
		}
		return nil
	}
	data := filepath.Join(dir, "data")
	if err := run(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"); err != nil {
		cleanup()
		return "", nil, err
	}
	port := FreePort(t)
	opts := fmt.Sprintf("-c listen_addresses=127.0.0.1 -p %d -k %s -c fsync=off", port, dir)
	if err := run(filepath.Join(bin, "pg_ctl"), "-D", data, "-o", opts, "-l", filepath.Join(dir, "log"), "-w", "-t", "30", "start"); err != nil {
		cleanup()
		return "", nil, err
	}
	stop := func() {
		_ = run(filepath.Join(bin, "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop")
		cleanup()
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if err := WaitReachable(addr, 10*time.Second); err != nil {
		stop()
		return "", nil, err
	}
	if err := run(filepath.Join(bin, "createdb"), "-h", "127.0.0.1", "-p", strconv.Itoa(port), "-U", "postgres", "test"); err != nil {
		stop()
		return "", nil, err
	}
	return fmt.Sprintf("postgres://postgres@%s/test?sslmode=disable", addr), stop, nil
}
