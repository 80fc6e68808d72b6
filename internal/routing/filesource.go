package routing

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/go-logr/logr"
	"sigs.k8s.io/yaml"
)

// reloadDebounce is how long FileSource waits after the last file event before it
// reloads. Saving a file or swapping a mounted volume is a burst of events (create,
// write, rename, remove) within milliseconds; reloading once after the burst avoids
// reading a half-written file, while a tenth of a second is invisible to an operator.
const reloadDebounce = 100 * time.Millisecond

// FileSource loads routes from a routing file (the standalone --config) and an optional
// credentials file or directory, and reloads them when they change.
//
// It watches the parent directories rather than the files: editors save by writing a
// new file and renaming it over the old one, and Kubernetes volume mounts replace files
// by swapping a "..data" symlink, both of which end a watch on the file itself.
type FileSource struct {
	// ConfigPath is the routing table file.
	ConfigPath string
	// CredentialsPath is optional: either a YAML/JSON file mapping each key to a string,
	// or a directory whose file names are the keys, such as a mounted Secret.
	CredentialsPath string
	// Log receives one line per load and per refused reload.
	Log logr.Logger
	// OnChange is called with each newly loaded table that differs from the previous
	// one, never concurrently.
	OnChange func(*Routes)

	pub publisher
}

// Load reads and compiles the files now, calls OnChange when the result is new and
// returns it. On error the previously loaded routes stay current.
func (s *FileSource) Load() (*Routes, error) {
	routes, err := s.read()
	if err != nil {
		return nil, err
	}
	s.pub.publish(routes, s.OnChange, s.Log)
	return routes, nil
}

// Current returns the last loaded routes, or nil before the first load.
func (s *FileSource) Current() *Routes { return s.pub.current.Load() }

// Loaded reports whether a table has been loaded.
func (s *FileSource) Loaded() bool { return s.Current() != nil }

// Run loads the files, failing if that first load fails, then reloads on every change
// until ctx is done. A change that does not load (a syntax error, a missing credential)
// is logged and the previous routes stay in force.
func (s *FileSource) Run(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch routing files: %w", err)
	}
	defer func() { _ = w.Close() }()

	targets, err := s.watchTargets()
	if err != nil {
		return err
	}
	for _, dir := range targets.dirs {
		if err := w.Add(dir); err != nil {
			return fmt.Errorf("watch routing files in %s: %w", dir, err)
		}
	}
	// Loading after the watch is in place means a change made in between is not missed.
	if _, err := s.Load(); err != nil {
		return err
	}
	s.Log.Info("watching routing files for changes", "config", s.ConfigPath, "credentials", s.CredentialsPath)

	debounce := time.NewTimer(reloadDebounce)
	debounce.Stop()
	defer debounce.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("watch routing files: watcher closed")
			}
			if targets.relevant(ev) {
				debounce.Reset(reloadDebounce)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("watch routing files: watcher closed")
			}
			// An overflow means events were dropped, possibly ours: reload to be sure.
			s.Log.Error(err, "watching routing files")
			debounce.Reset(reloadDebounce)
		case <-debounce.C:
			s.reload()
		}
	}
}

func (s *FileSource) reload() {
	routes, err := s.read()
	if err != nil {
		kv := []any{"config", s.ConfigPath}
		if current := s.Current(); current != nil {
			kv = append(kv, "keptRevision", current.Revision)
		}
		s.Log.Error(err, "routing table not reloaded; keeping the previous one", kv...)
		return
	}
	s.pub.publish(routes, s.OnChange, s.Log)
}

func (s *FileSource) read() (*Routes, error) {
	data, err := os.ReadFile(s.ConfigPath)
	if err != nil {
		return nil, fmt.Errorf("read routing table: %w", err)
	}
	// An empty file is far more often a write caught half-way (truncate, then write)
	// than a wish to drop every route; an empty table says so explicitly.
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, fmt.Errorf("%s is empty; write \"subscriptions: []\" for a table without subscriptions", s.ConfigPath)
	}
	table, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.ConfigPath, err)
	}
	var credentials map[string][]byte
	if s.CredentialsPath != "" {
		if credentials, err = readCredentials(s.CredentialsPath); err != nil {
			return nil, err
		}
	}
	routes, err := Compile(table, credentials)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.ConfigPath, err)
	}
	return routes, nil
}

// readCredentials reads a credentials directory (one file per key, like a mounted
// Secret) or a YAML/JSON file mapping keys to strings. Errors never quote contents.
func readCredentials(path string) (map[string][]byte, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read credentials: %w", err)
	}
	if info.IsDir() {
		return readCredentialsDir(path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read credentials: %w", err)
	}
	var values map[string]string
	if err := yaml.UnmarshalStrict(data, &values); err != nil {
		return nil, fmt.Errorf("read credentials %s: must map each key to a string: %w", path, err)
	}
	credentials := make(map[string][]byte, len(values))
	for k, v := range values {
		credentials[k] = []byte(v)
	}
	return credentials, nil
}

func readCredentialsDir(dir string) (map[string][]byte, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read credentials: %w", err)
	}
	credentials := make(map[string][]byte, len(entries))
	for _, e := range entries {
		// Kubernetes keeps its atomic-update machinery ("..data", "..2024_…") next to
		// the keys; a Secret key cannot start with "..".
		if strings.HasPrefix(e.Name(), "..") {
			continue
		}
		path := filepath.Join(dir, e.Name())
		// Stat, not the entry's type: mounted keys are symlinks into "..data".
		info, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("read credentials: %w", err)
		}
		if info.IsDir() {
			continue
		}
		value, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read credentials: %w", err)
		}
		credentials[e.Name()] = value
	}
	return credentials, nil
}

// watchTargets says which directories to watch and which events in them matter.
type watchTargets struct {
	dirs    []string
	files   map[string]bool // absolute paths of the config and credentials files
	keysDir string          // absolute credentials directory, if it is one
}

func (s *FileSource) watchTargets() (watchTargets, error) {
	t := watchTargets{files: map[string]bool{}}
	addDir := func(dir string) {
		for _, d := range t.dirs {
			if d == dir {
				return
			}
		}
		t.dirs = append(t.dirs, dir)
	}
	config, err := filepath.Abs(s.ConfigPath)
	if err != nil {
		return t, fmt.Errorf("watch routing files: %w", err)
	}
	t.files[config] = true
	addDir(filepath.Dir(config))
	if s.CredentialsPath == "" {
		return t, nil
	}
	creds, err := filepath.Abs(s.CredentialsPath)
	if err != nil {
		return t, fmt.Errorf("watch routing files: %w", err)
	}
	info, err := os.Stat(creds)
	if err != nil {
		return t, fmt.Errorf("read credentials: %w", err)
	}
	if info.IsDir() {
		t.keysDir = creds
		addDir(creds)
	} else {
		t.files[creds] = true
		addDir(filepath.Dir(creds))
	}
	return t, nil
}

// relevant filters out events for unrelated files sharing a watched directory, and
// chmod-only events, which touch no content.
func (t watchTargets) relevant(ev fsnotify.Event) bool {
	if ev.Op == fsnotify.Chmod {
		return false
	}
	name := filepath.Clean(ev.Name)
	return t.files[name] ||
		(t.keysDir != "" && filepath.Dir(name) == t.keysDir) ||
		strings.HasPrefix(filepath.Base(name), "..")
}
