package routing

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func routesFile(url string, events ...string) string {
	return fmt.Sprintf(`subscriptions:
  - id: team-a/crm
    url: %s
    events: [%s]
    apiKey: {secretKey: crm-key}
    headers:
      - {name: X-Tenant, value: acme}
`, url, strings.Join(events, ", "))
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// replaceFile saves the way editors and config tools do: write a sibling, rename it over.
func replaceFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	writeFile(t, tmp, content)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestFileSource_ReloadsOnChangeAndKeepsTheLastGoodTable(t *testing.T) {
	dir := t.TempDir()
	config, creds := filepath.Join(dir, "routes.yaml"), filepath.Join(dir, "credentials.yaml")
	writeFile(t, config, routesFile("https://crm.example.com/v1", "task.published"))
	writeFile(t, creds, "crm-key: key-1\n")

	log, lines := captureLog()
	changes := make(chan *Routes, 10)
	s := &FileSource{ConfigPath: config, CredentialsPath: creds, Log: log, OnChange: func(r *Routes) { changes <- r }}
	start(t, s.Run)

	first := nextRoutes(t, changes)
	route, _ := first.Get("team-a/crm")
	if route.APIKey != "key-1" || route.URL.Path != "/v1" || !s.Loaded() {
		t.Fatalf("first load: %v", route)
	}

	t.Log("a file written in place is reloaded")
	writeFile(t, config, routesFile("https://crm.example.com/v2", "task.*"))
	second := nextRoutes(t, changes)
	if second.Revision == first.Revision {
		t.Fatal("a changed table kept its revision")
	}
	if route, _ := second.Get("team-a/crm"); route.URL.Path != "/v2" || len(second.Match("task.created")) != 1 {
		t.Fatalf("second load: %v", route)
	}

	t.Log("an invalid file is refused and the previous table stays")
	writeFile(t, config, routesFile("https://crm.example.com/v3", "TASK"))
	line := waitLog(t, lines, "routing table not reloaded")
	mustContain(t, line, `\"TASK\" is not a valid event pattern`, "keptRevision", second.Revision)
	noPendingRoutes(t, changes)
	if s.Current() != second {
		t.Fatal("the refused table replaced the previous one")
	}

	t.Log("a file renamed over the old one is reloaded")
	replaceFile(t, config, routesFile("https://crm.example.com/v4", "task.published"))
	fourth := nextRoutes(t, changes)
	if route, _ := fourth.Get("team-a/crm"); route.URL.Path != "/v4" {
		t.Fatalf("fourth load: %v", route)
	}

	t.Log("a rotated credential is loaded under the same table revision")
	replaceFile(t, creds, "crm-key: key-2\n")
	fifth := nextRoutes(t, changes)
	if route, _ := fifth.Get("team-a/crm"); route.APIKey != "key-2" || fifth.Revision != fourth.Revision {
		t.Fatalf("fifth load: revision %s, %v", fifth.Revision, route)
	}

	t.Log("a credential that disappears is refused, naming the key")
	replaceFile(t, creds, "other: x\n")
	mustContain(t, waitLog(t, lines, "routing table not reloaded"), `credentials key \"crm-key\" not found`)
	noPendingRoutes(t, changes)
}

// mountedDir mimics the kubelet's atomic writer, which updates a ConfigMap or Secret
// volume by writing a new timestamped directory and swapping the "..data" symlink; the
// visible files are symlinks through "..data" and are never written themselves.
type mountedDir struct {
	t       *testing.T
	dir     string
	version int
}

func (m *mountedDir) update(files map[string]string) {
	m.t.Helper()
	m.version++
	ts := fmt.Sprintf("..2026_01_01_00_00_%02d.%d", m.version, m.version)
	if err := os.Mkdir(filepath.Join(m.dir, ts), 0o755); err != nil {
		m.t.Fatal(err)
	}
	for name, content := range files {
		writeFile(m.t, filepath.Join(m.dir, ts, name), content)
	}
	old, _ := os.Readlink(filepath.Join(m.dir, "..data"))
	if err := os.Symlink(ts, filepath.Join(m.dir, "..data_tmp")); err != nil {
		m.t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(m.dir, "..data_tmp"), filepath.Join(m.dir, "..data")); err != nil {
		m.t.Fatal(err)
	}
	for name := range files {
		link := filepath.Join(m.dir, name)
		if _, err := os.Lstat(link); os.IsNotExist(err) {
			if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
				m.t.Fatal(err)
			}
		}
	}
	if old != "" {
		if err := os.RemoveAll(filepath.Join(m.dir, old)); err != nil {
			m.t.Fatal(err)
		}
	}
}

func TestFileSource_FollowsKubernetesVolumeUpdates(t *testing.T) {
	root := t.TempDir()
	configDir, credsDir := filepath.Join(root, "routes"), filepath.Join(root, "credentials")
	for _, d := range []string{configDir, credsDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	config := &mountedDir{t: t, dir: configDir}
	creds := &mountedDir{t: t, dir: credsDir}
	config.update(map[string]string{RoutesKey: routesFile("https://crm.example.com/v1", "task.published")})
	creds.update(map[string]string{"crm-key": "key-1", "unused": "x"})

	log, _ := captureLog()
	changes := make(chan *Routes, 10)
	s := &FileSource{ConfigPath: filepath.Join(configDir, RoutesKey), CredentialsPath: credsDir, Log: log, OnChange: func(r *Routes) { changes <- r }}
	start(t, s.Run)
	if route, _ := nextRoutes(t, changes).Get("team-a/crm"); route.APIKey != "key-1" {
		t.Fatalf("first load: %v", route)
	}

	creds.update(map[string]string{"crm-key": "key-2", "unused": "x"})
	if route, _ := nextRoutes(t, changes).Get("team-a/crm"); route.APIKey != "key-2" {
		t.Fatalf("after the Secret update: %v", route)
	}

	config.update(map[string]string{RoutesKey: routesFile("https://crm.example.com/v2", "task.published")})
	if route, _ := nextRoutes(t, changes).Get("team-a/crm"); route.URL.Path != "/v2" || route.APIKey != "key-2" {
		t.Fatalf("after the ConfigMap update: %v", route)
	}
}

func TestFileSource_RunFailsWhenTheFirstLoadFails(t *testing.T) {
	dir := t.TempDir()
	config := filepath.Join(dir, "routes.yaml")
	writeFile(t, config, routesFile("https://crm.example.com/", "task.published"))
	creds := filepath.Join(dir, "credentials.yaml")
	writeFile(t, creds, "other: x\n")

	called := false
	s := &FileSource{ConfigPath: config, CredentialsPath: creds, OnChange: func(*Routes) { called = true }}
	ctx, cancel := context.WithTimeout(context.Background(), eventually)
	defer cancel()
	err := s.Run(ctx)
	if err == nil || ctx.Err() != nil {
		t.Fatalf("Run returned %v (context: %v)", err, ctx.Err())
	}
	mustContain(t, err.Error(), `credentials key "crm-key" not found`)
	if called || s.Loaded() {
		t.Error("a failed first load was reported")
	}

	if _, err := (&FileSource{ConfigPath: filepath.Join(dir, "missing.yaml")}).Load(); err == nil {
		t.Error("Load of a missing file succeeded")
	}
}

func TestFileSource_ReportsOnlyChangedTables(t *testing.T) {
	dir := t.TempDir()
	config := filepath.Join(dir, "routes.yaml")
	table := strings.Replace(routesFile("https://crm.example.com/", "task.published"), "{secretKey: crm-key}", "{value: k}", 1)
	writeFile(t, config, table)

	log, lines := captureLog()
	changes := make(chan *Routes, 10)
	s := &FileSource{ConfigPath: config, Log: log, OnChange: func(r *Routes) { changes <- r }}
	first, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if nextRoutes(t, changes) != first {
		t.Fatal("Load did not report what it returned")
	}

	start(t, s.Run)
	waitLog(t, lines, "watching routing files")
	noPendingRoutes(t, changes)

	writeFile(t, config, table)
	waitLog(t, lines, "routing table reloaded unchanged")
	noPendingRoutes(t, changes)

	replaceFile(t, config, "subscriptions: []\n")
	if r := nextRoutes(t, changes); r.Len() != 0 {
		t.Fatalf("got %d routes, want the emptied table", r.Len())
	}
}

func TestReadCredentials_ReadsFilesAndDirectories(t *testing.T) {
	dir := t.TempDir()
	jsonFile := filepath.Join(dir, "creds.json")
	writeFile(t, jsonFile, `{"a": "1", "b": "two"}`)
	got, err := readCredentials(jsonFile)
	if err != nil || string(got["a"]) != "1" || string(got["b"]) != "two" {
		t.Fatalf("json: %v %v", got, err)
	}

	writeFile(t, jsonFile, "a: [1]\n")
	if _, err := readCredentials(jsonFile); err == nil {
		t.Error("a non-string value was accepted")
	}

	keys := filepath.Join(dir, "keys")
	if err := os.MkdirAll(filepath.Join(keys, "..data"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(keys, "..data", "hidden"), "no")
	writeFile(t, filepath.Join(keys, ".dotkey"), "yes")
	writeFile(t, filepath.Join(keys, "plain"), "v")
	got, err = readCredentials(keys)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || string(got[".dotkey"]) != "yes" || string(got["plain"]) != "v" {
		t.Errorf("directory: got keys %d", len(got))
	}
}
