package controller

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/involveo/webhook-operator/api/v1alpha1"
	"github.com/involveo/webhook-operator/internal/health"
	"github.com/involveo/webhook-operator/internal/testenv"
)

// Size of the benchmark: 10,000 subscriptions over 100 namespaces, each with its own
// Secret, the most the manager has to read.
const (
	benchSubscriptions = 10_000
	benchNamespaces    = 100
	// benchTimeout bounds the wait for every subscription to be Ready.
	benchTimeout = 10 * time.Minute
)

// BenchmarkManager_10kSubscriptions runs the manager and the relay as the binaries
// ship, each in its own process against this package's API server, creates 10,000
// subscriptions at once (16 concurrent clients, like a GitOps sync), and reports how
// long until all are Ready, how often the routing ConfigMap was written, and the
// manager's peak resident memory. Run it alone (make bench-manager): the manager
// watches every namespace.
func BenchmarkManager_10kSubscriptions(b *testing.B) {
	bin := buildBinaries(b)
	for range b.N {
		benchmarkOnce(b, bin)
	}
}

func benchmarkOnce(b *testing.B, bin string) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// BENCH_LOG_DIR keeps the processes' logs for a look afterwards.
	dir := os.Getenv("BENCH_LOG_DIR")
	if dir == "" {
		dir = b.TempDir()
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	kubeconfig := writeKubeconfig(b, dir)
	ops := createNamespace(b, "bench-operator")
	tenants := make([]string, benchNamespaces)
	for i := range tenants {
		tenants[i] = fmt.Sprintf("%s-t%02d", ops, i)
		if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: tenants[i]}}); err != nil {
			b.Fatal(err)
		}
	}

	ingest, admin, probes := freeAddr(b), freeAddr(b), freeAddr(b)
	relay := startProcess(b, filepath.Join(bin, "relay"), filepath.Join(dir, "relay.log"),
		"--kubeconfig", kubeconfig, "--namespace", ops, "--listen", ingest, "--admin-listen", admin,
		"--data-dir", filepath.Join(dir, "relay-data"), "--log-level", "warn")
	manager := startProcess(b, filepath.Join(bin, "manager"), filepath.Join(dir, "manager.log"),
		"--kubeconfig", kubeconfig, "--namespace", ops, "--relay-health-url", "http://"+admin+health.Path,
		"--health-poll-interval", "1s", "--metrics-bind-address", "0", "--health-probe-bind-address", probes,
		"--log-level", cmp.Or(os.Getenv("BENCH_MANAGER_LOG_LEVEL"), "info"))
	waitReady(b, "http://"+admin+"/readyz")

	writes := countWrites(b, ops)
	ready, err := watchReady(ctx)
	if err != nil {
		b.Fatal(err)
	}
	createMany(b, benchSubscriptions, func(i int) client.Object {
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: tenants[i%benchNamespaces], Name: fmt.Sprintf("hook-%05d", i)},
			StringData: map[string]string{"api-key": fmt.Sprintf("bench-key-%05d-0123456789abcdef0123", i)}}
	})

	b.ResetTimer()
	start := time.Now()
	createMany(b, benchSubscriptions, func(i int) client.Object {
		return subscription(tenants[i%benchNamespaces], fmt.Sprintf("hook-%05d", i),
			fmt.Sprintf("https://hooks-%05d.example.com/involveo", i), fmt.Sprintf("hook-%05d", i))
	})
	created := time.Now()
	select {
	case <-ready.all:
	case <-time.After(benchTimeout):
		b.Fatalf("%d of %d subscriptions Ready after %s; see %s", ready.count(), benchSubscriptions, benchTimeout, dir)
	}
	done := time.Now()
	b.StopTimer()

	b.ReportMetric(done.Sub(start).Seconds(), "s-until-all-ready")
	b.ReportMetric(created.Sub(start).Seconds(), "s-creating")
	b.ReportMetric(done.Sub(created).Seconds(), "s-ready-after-last-create")
	b.ReportMetric(float64(writes.Load()), "configmap-writes")
	b.ReportMetric(peakRSSMiB(b, manager), "manager-peak-RSS-MiB")
	b.ReportMetric(peakRSSMiB(b, relay), "relay-peak-RSS-MiB")
	stopProcess(manager)
	stopProcess(relay)
}

// readyTracker counts Ready subscriptions from an informer, so that waiting does not
// load the API server with lists of 10,000 objects.
type readyTracker struct {
	mu    sync.Mutex
	ready map[string]bool
	all   chan struct{}
}

func (r *readyTracker) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.ready)
}

func (r *readyTracker) observe(obj any) {
	sub, ok := obj.(*v1alpha1.WebhookSubscription)
	if !ok || !isReady(sub) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	before := len(r.ready)
	r.ready[sub.Namespace+"/"+sub.Name] = true
	if before < benchSubscriptions && len(r.ready) >= benchSubscriptions {
		close(r.all)
	}
}

func watchReady(ctx context.Context) (*readyTracker, error) {
	c, err := cache.New(restConfig, cache.Options{Scheme: scheme, DefaultTransform: cache.TransformStripManagedFields()})
	if err != nil {
		return nil, err
	}
	informer, err := c.GetInformer(ctx, &v1alpha1.WebhookSubscription{})
	if err != nil {
		return nil, err
	}
	r := &readyTracker{ready: map[string]bool{}, all: make(chan struct{})}
	if _, err := informer.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    r.observe,
		UpdateFunc: func(_, obj any) { r.observe(obj) },
	}); err != nil {
		return nil, err
	}
	go func() { _ = c.Start(ctx) }()
	if !c.WaitForCacheSync(ctx) {
		return nil, errors.New("subscription informer did not sync")
	}
	return r, nil
}

func isReady(sub *v1alpha1.WebhookSubscription) bool {
	for _, c := range sub.Status.Conditions {
		if c.Type == v1alpha1.ConditionReady && c.Status == metav1.ConditionTrue && c.ObservedGeneration == sub.Generation {
			return true
		}
	}
	return false
}

func buildBinaries(b *testing.B) string {
	b.Helper()
	dir := b.TempDir()
	build := exec.Command("go", "build", "-o", dir+"/", "./cmd/manager", "./cmd/relay")
	build.Dir = testenv.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("build the binaries: %v\n%s", err, out)
	}
	return dir
}

func writeKubeconfig(b *testing.B, dir string) string {
	b.Helper()
	user, err := testEnv.AddUser(envtest.User{Name: "bench-admin", Groups: []string{"system:masters"}}, restConfig)
	if err != nil {
		b.Fatal(err)
	}
	data, err := user.KubeConfig()
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		b.Fatal(err)
	}
	return path
}

func freeAddr(b *testing.B) string {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func startProcess(b *testing.B, path, logFile string, args ...string) *exec.Cmd {
	b.Helper()
	log, err := os.Create(logFile)
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { stopProcess(cmd); _ = log.Close() })
	return cmd
}

// stopProcess ends a process started by startProcess, SIGKILL if SIGTERM is not
// enough within a few seconds; it is safe to call twice.
func stopProcess(cmd *exec.Cmd) {
	if cmd.ProcessState != nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
}

func waitReady(b *testing.B, url string) {
	b.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		resp, err := http.Get(url)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	b.Fatalf("%s not ready within a minute", url)
}

// peakRSSMiB is the process's peak resident set (VmHWM) as the kernel counted it.
func peakRSSMiB(b *testing.B, cmd *exec.Cmd) float64 {
	b.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb / 1024
		}
	}
	b.Fatal("no VmHWM in /proc/<pid>/status")
	return 0
}
