// Package devenv runs the whole product on one machine: a real kube-apiserver
// and etcd, the relay and the manager as processes, and a demo receiver. It
// backs `make dev` and the end-to-end tests, so both walk the same path.
package devenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	v1alpha1 "github.com/involveo/webhook-operator/api/v1alpha1"
	"github.com/involveo/webhook-operator/internal/testenv"
)

// stopGrace is how long a process gets to exit after SIGTERM before SIGKILL;
// the relay's own shutdown timeout is shorter.
const stopGrace = 30 * time.Second

// Options configure an environment. Empty addresses get a free port.
type Options struct {
	// Dir holds the kubeconfig, the relay's data and the process logs.
	Dir string
	// Namespace is the operator namespace (the manager's --namespace).
	Namespace string
	// ManagerBin and RelayBin are the binaries to run.
	ManagerBin, RelayBin string
	// IngestAddr and AdminAddr are the relay's listen addresses.
	IngestAddr, AdminAddr string
	// HealthPollInterval is passed to the manager.
	HealthPollInterval time.Duration
	// Progress receives one line per start-up step.
	Progress io.Writer
}

// Env is a running environment.
type Env struct {
	// Config reaches the API server as cluster admin.
	Config *rest.Config
	// Client is a controller-runtime client with the project's types.
	Client client.Client
	// Kubeconfig is the path of a kubeconfig for kubectl.
	Kubeconfig string
	// Kubectl is the kubectl built with the control plane.
	Kubectl string
	// Ingest and Admin are the relay's base URLs.
	Ingest, Admin string
	// ManagerLog and RelayLog are the processes' log files.
	ManagerLog, RelayLog string

	opts      Options
	control   *envtest.Environment
	processes []*process
}

// Start brings everything up. On error whatever started is stopped.
func Start(ctx context.Context, o Options) (env *Env, err error) {
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.Namespace == "" {
		o.Namespace = "involveo-webhooks"
	}
	if dir, err := filepath.Abs(o.Dir); err == nil {
		o.Dir = dir
	}
	if o.HealthPollInterval == 0 {
		o.HealthPollInterval = 2 * time.Second
	}
	e := &Env{opts: o, ManagerLog: filepath.Join(o.Dir, "manager.log"), RelayLog: filepath.Join(o.Dir, "relay.log")}
	defer func() {
		if err != nil {
			e.Stop()
		}
	}()
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, err
	}
	for _, addr := range []*string{&o.IngestAddr, &o.AdminAddr} {
		if *addr == "" {
			if *addr, err = freeAddr(); err != nil {
				return nil, err
			}
		}
	}
	e.Ingest, e.Admin = "http://"+o.IngestAddr, "http://"+o.AdminAddr

	step(o.Progress, "control plane binaries (built from source on first use: about 10 minutes)")
	assets, err := testenv.Assets()
	if err != nil {
		return nil, err
	}
	e.Kubectl = filepath.Join(assets, "kubectl")

	step(o.Progress, "starting kube-apiserver and etcd, installing the CRD")
	if e.control, e.Config, err = testenv.Start(); err != nil {
		return nil, err
	}
	if err := e.writeKubeconfig(); err != nil {
		return nil, err
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if e.Client, err = client.New(e.Config, client.Options{Scheme: scheme}); err != nil {
		return nil, err
	}
	if err := e.EnsureNamespace(ctx, o.Namespace); err != nil {
		return nil, err
	}

	step(o.Progress, "starting the relay (embedded JetStream in "+filepath.Join(o.Dir, "relay-data")+")")
	if err := e.startProcess(ctx, "relay", o.RelayBin, e.RelayLog,
		"--kubeconfig", e.Kubeconfig, "--namespace", o.Namespace,
		"--listen", o.IngestAddr, "--admin-listen", o.AdminAddr,
		"--data-dir", filepath.Join(o.Dir, "relay-data"),
		// The demo receiver and test endpoints live on this machine.
		"--allow-destination-cidrs", "127.0.0.0/8"); err != nil {
		return nil, err
	}
	probe, err := freeAddr()
	if err != nil {
		return nil, err
	}
	step(o.Progress, "starting the manager")
	if err := e.startProcess(ctx, "manager", o.ManagerBin, e.ManagerLog,
		"--kubeconfig", e.Kubeconfig, "--namespace", o.Namespace,
		"--relay-health-url", e.Admin+"/v1/subscriptions",
		"--health-poll-interval", o.HealthPollInterval.String(),
		"--metrics-bind-address", "0", "--health-probe-bind-address", probe); err != nil {
		return nil, err
	}

	step(o.Progress, "waiting for the relay to load its routing table")
	if err := waitHTTP(ctx, e.Admin+"/readyz", e.processes); err != nil {
		return nil, fmt.Errorf("relay not ready (see %s): %w", e.RelayLog, err)
	}
	return e, nil
}

func (e *Env) writeKubeconfig() error {
	user, err := e.control.AddUser(envtest.User{Name: "dev-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return fmt.Errorf("add kubeconfig user: %w", err)
	}
	data, err := user.KubeConfig()
	if err != nil {
		return fmt.Errorf("render kubeconfig: %w", err)
	}
	e.Kubeconfig = filepath.Join(e.opts.Dir, "kubeconfig")
	return os.WriteFile(e.Kubeconfig, data, 0o600)
}

// EnsureNamespace creates a namespace unless it exists.
func (e *Env) EnsureNamespace(ctx context.Context, name string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := e.Client.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", name, err)
	}
	return nil
}

// Stop ends the processes (SIGTERM, then SIGKILL after a grace period) and
// the control plane. It leaves no process behind.
func (e *Env) Stop() {
	for i := len(e.processes) - 1; i >= 0; i-- {
		e.processes[i].stop()
	}
	e.processes = nil
	if e.control != nil {
		_ = e.control.Stop()
		e.control = nil
	}
}

// process is a child process whose exit is observable.
type process struct {
	name   string
	cmd    *exec.Cmd
	log    *os.File
	exited chan struct{}
}

func (e *Env) startProcess(ctx context.Context, name, bin, logPath string, args ...string) error {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own process group: a Ctrl-C in the terminal reaches only us, and
	// we stop the children in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, log: logFile, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.exited) }()
	e.processes = append(e.processes, p)
	return ctx.Err()
}

func (p *process) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(stopGrace):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
	_ = p.log.Close()
}

// Exited reports a process that died, or nil.
func (e *Env) Exited() error {
	for _, p := range e.processes {
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited: %v", p.name, p.cmd.ProcessState)
		default:
		}
	}
	return nil
}

func waitHTTP(ctx context.Context, url string, procs []*process) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(2 * time.Minute)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		for _, p := range procs {
			select {
			case <-p.exited:
				return fmt.Errorf("%s exited: %v", p.name, p.cmd.ProcessState)
			default:
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timeout:
			return errors.New("timed out after 2m")
		case <-tick.C:
		}
	}
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func step(w io.Writer, msg string) {
	fmt.Fprintf(w, "\033[36m==>\033[0m %s\n", msg)
}
